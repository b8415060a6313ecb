"""Finite-difference gradient checking (float64, central differences)."""
from __future__ import annotations

import numpy as np

from . import _dtype
from .autograd import no_grad
from .tensor import Tensor


class GradcheckError(AssertionError):
    """Analytic and numerical gradients disagree."""


def _outputs(out):
    outs = out if isinstance(out, (tuple, list)) else (out,)
    for o in outs:
        if not isinstance(o, Tensor):
            raise TypeError(f"gradcheck: fn must return Tensors, got {type(o).__name__}")
    return outs


def gradcheck(fn, inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              raise_exception: bool = True, seed: int | None = None) -> bool:
    """Compare autograd's gradients of ``fn(*inputs)`` with central differences.

    Every input Tensor with ``requires_grad`` must be float64. The outputs are
    contracted with fixed random weights w, so one backward gives w^T J, and each
    input element is perturbed by +-eps to get the same vector numerically:
    ``|analytic - numeric| <= atol + rtol * |numeric|`` must hold everywhere.
    Returns True, or raises :class:`GradcheckError` naming the input and the
    worst element (or returns False with ``raise_exception=False``).
    """
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    inputs = tuple(inputs)
    checked = [(i, t) for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad")
    for i, t in checked:
        if t.dtype != _dtype.float64:
            raise ValueError(f"gradcheck: input {i} is {t.dtype}; finite differences need float64")
    # Fresh leaves stand in for the checked inputs: a non-leaf input (say x.astype(...))
    # then gets its gradient too, and the caller's tensors and .grad stay untouched.
    inputs = list(inputs)
    for i, t in checked:
        inputs[i] = t.detach().requires_grad_(True)
    checked = [(i, inputs[i]) for i, _ in checked]
    rng = np.random.default_rng(seed)
    outs = _outputs(fn(*inputs))
    weights = [rng.standard_normal(o.shape) for o in outs]

    total = None
    for o, w in zip(outs, weights):
        if not o.requires_grad:
            continue
        term = (o * Tensor(o.backend.asarray(w.astype(o.dtype)), False, o.backend)).sum()
        total = term if total is None else total + term
    if total is not None:
        total.backward()
    analytic = [np.zeros(t.shape) if t.grad is None else t.grad.numpy().astype(np.float64).copy()
                for _, t in checked]

    def scalar():
        with no_grad():
            os_ = _outputs(fn(*inputs))
        return float(sum((o.numpy().astype(np.float64) * w).sum() for o, w in zip(os_, weights)))

    for (idx, t), a in zip(checked, analytic):
        host = t.numpy().astype(np.float64).reshape(-1).copy()
        numeric = np.empty_like(host)
        original = t.data
        for k in range(host.size):
            v = host[k]
            host[k] = v + eps
            t.data = t.backend.asarray(host.reshape(t.shape).copy())
            fp = scalar()
            host[k] = v - eps
            t.data = t.backend.asarray(host.reshape(t.shape).copy())
            fm = scalar()
            host[k] = v
            numeric[k] = (fp - fm) / (2 * eps)
        t.data = original
        a = a.reshape(-1)
        err = np.abs(a - numeric)
        bound = atol + rtol * np.abs(numeric)
        bad = ~(err <= bound)
        if bad.any():
            k = int(np.argmax(np.where(bad, err - bound, -np.inf)))
            msg = (f"gradcheck: input {idx} (shape {t.shape}): {int(bad.sum())} of {a.size} "
                   f"elements disagree; worst at flat index {k}: analytic {a[k]!r}, "
                   f"numeric {numeric[k]!r}")
            if raise_exception:
                raise GradcheckError(msg)
            return False
    return True
