"""Measuring gradients and finding where NaN/inf started: the chapter's failure modes.

:class:`SqNorms` reduces the squared gradient norm of every layer on the device and
fetches them in one transfer; :class:`ReLUMonitor` counts dead ReLU units during a
forward; :func:`diagnose_nonfinite` replays a step that went NaN/inf under anomaly
mode and names the layer and op where it started; :func:`likely_cause` names what
usually makes a run diverge (the learning rate, an exploding gradient norm).
"""
from __future__ import annotations

import math

import numpy as np

from ..autograd import AnomalyError, detect_anomaly
from ..tensor import Tensor
from .records import layer_of, named_modules, named_params

RELU_OPS = ("ReLU",)


class SqNorms:
    """Squared gradient norms per layer, reduced on the device and fetched once."""

    def __init__(self, named):
        self.layers = []
        self.index = {}
        for n, _ in named:
            lay = layer_of(n)
            if lay not in self.index:
                self.index[lay] = len(self.layers)
                self.layers.append(lay)
        self.owner = [self.index[layer_of(n)] for n, _ in named]

    def per_layer(self, arrays, backend) -> np.ndarray:
        xp = backend.xp
        sq = np.zeros(len(self.layers))
        parts = [xp.vdot(a.ravel(), a.ravel()) if a is not None else None for a in arrays]
        present = [v for v in parts if v is not None]
        vals = (backend.to_numpy(xp.stack([xp.asarray(v, dtype=xp.float64) for v in present]))
                if present else np.zeros(0))
        k = 0
        for i, v in enumerate(parts):
            if v is not None:
                sq[self.owner[i]] += float(vals[k])
                k += 1
        return sq


class ReLUMonitor:
    """Autograd observer: per ReLU call, which units fired for at least one sample.

    A unit (feature column) that is zero for the whole batch is 'dead' on that
    batch; the chapter's advice is to watch this fraction and switch to Leaky
    ReLU or ELU when it grows.
    """

    def __init__(self):
        self.alive = []

    def on_forward(self, node):
        if node.name in RELU_OPS and node.saved:
            y = node.saved[0]
            if getattr(y, "ndim", 0) >= 2:
                self.alive.append((y.reshape(-1, y.shape[-1]) > 0).any(axis=0))

    def fractions(self, backend) -> list[float]:
        if not self.alive:
            return []
        xp = backend.xp
        vals = backend.to_numpy(xp.stack([1.0 - a.mean() for a in self.alive]))
        return [float(v) for v in vals]


def nonfinite(t) -> bool:
    if not isinstance(t, Tensor) or t.dtype.kind != "f":
        return False
    return not bool(t.backend.xp.isfinite(t.data).all())


def _node_fields(t) -> dict:
    node = t.grad_fn
    return {"op": node.name if node is not None else None,
            "where": node.describe() if node is not None else None}


def _watch_leaf_modules(model, found: dict) -> list:
    """Wrap every leaf module's forward so the first one turning finite inputs into
    NaN/inf is recorded in ``found``; returns the modules patched."""
    patched = []
    for name, mod, leaf in named_modules(model):
        if not leaf or "forward" in vars(mod):
            continue
        inner = mod.forward

        def wrapper(*a, _inner=inner, _name=name, _mod=mod, **k):
            out = _inner(*a, **k)
            if not found and nonfinite(out) and not any(nonfinite(v) for v in a):
                found.update(phase="forward", layer=_name, module=type(_mod).__name__,
                             **_node_fields(out))
            return out
        object.__setattr__(mod, "forward", wrapper)
        patched.append(mod)
    return patched


def _replay(model, loss_fn, x, y, found: dict):
    with detect_anomaly():
        if callable(getattr(model, "zero_grad", None)):
            model.zero_grad()
        out = model(x)
        if not found and nonfinite(out):
            found.update(phase="forward", layer="(model)", module=type(model).__name__,
                         **_node_fields(out))
        loss = loss_fn(out, y)
        if not found and nonfinite(loss):
            found.update(phase="loss", layer="(loss)", module=None, **_node_fields(loss))
        if not found:
            try:
                loss.backward()
            except AnomalyError as e:
                found.update(phase="backward", layer=None, module=None, op=e.op,
                             where=str(e), location=e.location)


def _message(found: dict, bad_params: list) -> str:
    bits = []
    if found["phase"] == "forward":
        bits.append(f"forward of layer '{found['layer']}' ({found['module']}) produced "
                    f"NaN/inf from finite inputs in op {found['where'] or found['op']}")
    elif found["phase"] == "loss":
        bits.append(f"the loss became NaN/inf in op {found['where'] or found['op']} "
                    "(the model's output was finite)")
    elif found["phase"] == "backward":
        bits.append(found["where"])
    if bad_params:
        bits.append("non-finite parameters: " + ", ".join(bad_params[:8])
                    + (" ..." if len(bad_params) > 8 else ""))
    return "; ".join(bits)


def diagnose_nonfinite(model, loss_fn, x, y, named=None) -> dict:
    """Replay one step under anomaly mode and find where NaN/inf first appears.

    Returns a dict: ``phase`` ("parameters", "forward", "loss", "backward" or
    "unknown"), ``layer`` (dotted module name), ``op`` (the Function) and ``message``.
    Forward: every leaf module's output is checked in call order; the first
    non-finite one (whose inputs were finite) names the layer, and its ``grad_fn``
    names the op and where it was created. Backward: :func:`dlprimer.detect_anomaly`
    raises at the first backward op producing NaN/inf.
    """
    named = named if named is not None else named_params(model)
    bad_params = [n for n, p in named if nonfinite(p)]
    found: dict = {}
    patched = _watch_leaf_modules(model, found)
    try:
        _replay(model, loss_fn, x, y, found)
    finally:
        for mod in patched:
            object.__delattr__(mod, "forward")
    if bad_params:
        found.setdefault("phase", "parameters")
        found["bad_parameters"] = bad_params
    if not found:
        return {"phase": "unknown", "op": None,
                "message": "replayed, the step's values were all finite: the gradient norm "
                           "overflowed its dtype, or an op is non-deterministic"}
    found.setdefault("message", _message(found, bad_params))
    return found


def likely_cause(lr: float, grad_norms: list, weight_norm: float) -> str:
    """One sentence naming what usually makes training diverge, from the learning rate,
    the recent gradient norms and the weights' norm now."""
    hist = [g for g in grad_norms if math.isfinite(g)]
    facts = [f"learning rate {lr:g}"]
    if hist:
        facts.append(f"gradient norm {hist[-1]:.3g} at the last finite step"
                     + (f" (median {float(np.median(hist)):.3g} before)" if len(hist) > 1 else ""))
    facts.append(f"weights' norm now {weight_norm:.3g}")
    grew = len(hist) > 1 and hist[-1] > 10 * float(np.median(hist[:-1]))
    if not math.isfinite(weight_norm) or weight_norm > 1e6 or lr >= 1.0:
        cause = "the learning rate is too large: the updates blew the weights up"
    elif grew:
        cause = "exploding gradients: the gradient norm grew far above its running median"
    else:
        cause = "the learning rate or an exploding gradient norm"
    return (f"Likely cause: {cause} ({', '.join(facts)}); lower the learning rate "
            "or clip the gradient norm (clip= / --clip).")
