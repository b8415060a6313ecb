"""profile(): time, count and meter one training step, per layer and in total.

Per step: forward (each top-level layer timed by ``backend.timer()``, plus the
loss), backward (total, and each node's self time booked to the layer that
created it), and the optimizer step. Warm-up steps run first and are never timed
(first-call costs: CUDA kernel compilation, pool growth, NumPy page faults). The
memory step runs afterwards, alone, with the allocator meter on, because tracing
allocations slows the CPU down.
"""
from __future__ import annotations

import contextlib
from collections import defaultdict

from ..autograd import observe
from ..checkpoint import is_recomputing
from ..tensor import Tensor
from .counters import BackwardTimer, FlopCounter, LayerScope
from .memory import measure_step_memory
from .report import Report, _ratio, stats

LOSS = "(loss)"
MODEL = "(model)"
_MODEL_TOTAL = "\0model-total"


def _check_args(model, loss_fn, batch, optimizer, warmup, repeats):
    if not callable(model):
        raise TypeError(f"profile: model must be callable, got {type(model).__name__}")
    if not callable(getattr(model, "parameters", None)):
        raise TypeError(f"profile: model must have parameters() (a Module), got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"profile: loss_fn must be callable, got {type(loss_fn).__name__}")
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError("profile: batch must be a pair (inputs, targets)")
    if optimizer is not None and not (callable(getattr(optimizer, "step", None))
                                      and callable(getattr(optimizer, "zero_grad", None))):
        raise TypeError(f"profile: optimizer needs step() and zero_grad(), got {type(optimizer).__name__}")
    for name, v, lo in (("warmup", warmup, 0), ("repeats", repeats, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"profile: {name} must be an int >= {lo}, got {v!r}")


def named_layers(model):
    """The model's top-level children as (name, module) pairs (empty for a leaf)."""
    if callable(getattr(model, "named_children", None)):
        pairs = list(model.named_children())
    elif callable(getattr(model, "children", None)):
        pairs = [(str(i), c) for i, c in enumerate(model.children())]
    else:
        pairs = []
    return [(f"{n}:{type(c).__name__}", c) for n, c in pairs]


@contextlib.contextmanager
def _timed_layers(layers, scope, backend, sink):
    """Shadow each layer's ``forward`` with a timed wrapper that also sets the scope."""
    patched = []
    for name, mod in layers:
        if "forward" in vars(mod):
            continue
        inner = mod.forward

        def wrapper(*a, _inner=inner, _name=name, **k):
            prev = scope.current
            scope.current = _name
            t = backend.timer()
            try:
                with t:
                    return _inner(*a, **k)
            finally:
                scope.current = prev
                if t.elapsed is not None and not is_recomputing():
                    sink[_name] += t.elapsed
        object.__setattr__(mod, "forward", wrapper)
        patched.append(mod)
    try:
        yield
    finally:
        for mod in patched:
            object.__delattr__(mod, "forward")


def _zero_grad(model, optimizer, params):
    if optimizer is not None:
        optimizer.zero_grad()
    elif callable(getattr(model, "zero_grad", None)):
        model.zero_grad()
    else:
        for p in params:
            p.grad = None


def _backend_of(params, batch):
    from ..backend import get_backend
    for t in list(params) + list(batch):
        if isinstance(t, Tensor):
            return t.backend
    return get_backend()


def profile(model, loss_fn, batch, optimizer=None, warmup: int = 3, repeats: int = 20,
            memory: bool = True, estimate: bool = True) -> Report:
    """Profile training steps of ``model`` on ``batch = (inputs, targets)``.

    ``loss_fn(model(inputs), targets)`` must return a scalar Tensor. Each of the
    ``repeats`` timed steps is zero_grad, forward, loss, backward, optimizer step
    (when an optimizer is given; the model's weights do change). Returns a
    :class:`Report` with, per top-level layer and in total: forward and backward time
    (median and quartiles), forward/backward FLOPs, their ratios side by side
    (the chapter's "backward costs about 2x forward"), achieved FLOP/s, the backward
    ops by self time, and (``memory=True``) one metered step's memory split beside
    :func:`dlprimer.estimate`'s analytic figures.
    """
    from ..unfused import fusion_enabled
    _check_args(model, loss_fn, batch, optimizer, warmup, repeats)
    params = [p for p in model.parameters()]
    inputs, targets = batch
    backend = _backend_of(params, batch)
    layers = named_layers(model)
    scope = LayerScope(MODEL)
    fwd_sink = defaultdict(float)

    def forward():
        tm = backend.timer()
        with tm:
            out = model(inputs)
        fwd_sink[_MODEL_TOTAL] += tm.elapsed
        prev = scope.current
        scope.current = LOSS
        try:
            t = backend.timer()
            with t:
                loss = loss_fn(out, targets)
            fwd_sink[LOSS] += t.elapsed
        finally:
            scope.current = prev
        if not isinstance(loss, Tensor) or loss.size != 1:
            raise TypeError("profile: loss_fn must return a scalar Tensor, got "
                            f"{type(loss).__name__}{getattr(loss, 'shape', '')}")
        if not loss.requires_grad:
            raise RuntimeError("profile: the loss does not require grad: no parameter of the model "
                               "needs a gradient, or the forward ran under no_grad")
        return loss

    for _ in range(warmup):
        _zero_grad(model, optimizer, params)
        forward().backward()
        if optimizer is not None:
            optimizer.step()
    fwd_sink.clear()

    counter = FlopCounter(scope)
    btimer = BackwardTimer(backend)
    per_layer_fwd = defaultdict(list)
    per_key_bwd = defaultdict(list)
    fwd_tot, bwd_tot, step_tot, engine = [], [], [], []
    with _timed_layers(layers, scope, backend, fwd_sink), observe(counter), observe(btimer):
        for _ in range(repeats):
            counter.reset()
            btimer.reset()
            fwd_sink.clear()
            _zero_grad(model, optimizer, params)
            with backend.timer() as tf:
                loss = forward()
            with backend.timer() as tb:
                loss.backward()
            del loss
            if optimizer is not None:
                with backend.timer() as ts:
                    optimizer.step()
                step_tot.append(ts.elapsed)
            fwd_tot.append(tf.elapsed)
            bwd_tot.append(tb.elapsed)
            engine.append(tb.elapsed - btimer.total())
            own = fwd_sink.pop(_MODEL_TOTAL, 0.0) - sum(v for n, v in fwd_sink.items() if n != LOSS)
            per_layer_fwd[MODEL].append(max(own, 0.0))
            for name, v in fwd_sink.items():
                per_layer_fwd[name].append(v)
            for key, v in btimer.times.items():
                per_key_bwd[key].append(v)

    fwd_flops_l = counter.by_layer(counter.fwd)
    bwd_flops_l = counter.by_layer(counter.bwd)
    bwd_time_l = defaultdict(lambda: [0.0] * repeats)
    for (layer, _), vs in per_key_bwd.items():
        acc = bwd_time_l[layer]
        for i, v in enumerate(vs[-repeats:]):
            acc[i] += v

    names = [n for n, _ in layers]
    extra = [n for n in list(fwd_flops_l) + list(bwd_time_l) if n not in names and n != LOSS]
    order = names + sorted(set(extra)) + [LOSS]

    def entry(name, f_times, b_times, ff, bf):
        f, b = stats(f_times), stats(b_times)
        return {"name": name, "forward": f, "backward": b, "fwd_flops": ff, "bwd_flops": bf,
                "time_ratio": _ratio(b["median"], f["median"]), "flop_ratio": _ratio(bf, ff),
                "fwd_flops_per_s": _ratio(ff, f["median"]), "bwd_flops_per_s": _ratio(bf, b["median"])}

    rows = []
    for n in order:
        if n not in bwd_time_l and n not in fwd_flops_l and (n == MODEL or n not in per_layer_fwd):
            continue
        rows.append(entry(n, per_layer_fwd.get(n, []), bwd_time_l.get(n, []),
                          fwd_flops_l.get(n, 0), bwd_flops_l.get(n, 0)))
    total = entry("total", fwd_tot, bwd_tot, counter.forward_total, counter.backward_total)
    total["step"] = stats(step_tot) if optimizer is not None else None
    total["backward_engine"] = stats(engine)["median"]
    total["recompute_flops"] = sum(counter.recompute.values())
    fb = total["forward"]["median"] + total["backward"]["median"]
    total["flops_per_s"] = _ratio(total["fwd_flops"] + total["bwd_flops"], fb)

    bwd_med = total["backward"]["median"] or 1.0
    ops = []
    for (layer, op), vs in per_key_bwd.items():
        med = stats(vs)["median"]
        ops.append({"layer": layer, "op": op, "backward": med, "share": med / bwd_med,
                    "calls": btimer.calls.get((layer, op), 0),
                    "bwd_flops": counter.bwd.get((layer, op), 0),
                    "fwd_flops": counter.fwd.get((layer, op), 0)})
    ops.sort(key=lambda o: -o["backward"])

    mem = None
    if memory:
        phases = {"zero_grad": lambda: _zero_grad(model, optimizer, params), "forward": forward,
                  "backward": lambda loss: loss.backward(),
                  "step": (lambda: optimizer.step()) if optimizer is not None else None}
        mem = measure_step_memory(phases, backend, params, optimizer, batch)
        if estimate:
            mem["analytic"] = _analytic(model, inputs, targets, optimizer)

    meta = {"backend": backend.name, "warmup": warmup, "repeats": repeats, "fusion": fusion_enabled(),
            "inputs_shape": tuple(inputs.shape) if isinstance(inputs, Tensor) else None,
            "optimizer": type(optimizer).__name__ if optimizer is not None else None,
            "layers": names}
    return Report(rows, total, ops, mem, meta)


def _analytic(model, inputs, targets, optimizer):
    """The estimator's figures for the same model and batch, or None if it cannot
    read the model (layers it does not know)."""
    from .estimate import estimate
    try:
        e = estimate(model, tuple(inputs.shape), optimizer=optimizer if optimizer is not None else "none",
                     dtype=str(inputs.dtype))
    except (TypeError, ValueError):
        return None
    return {"params": e.param_bytes, "grads": e.grad_bytes, "optimizer": e.optimizer_bytes,
            "inputs": e.input_bytes + (targets.nbytes if isinstance(targets, Tensor) else 0),
            "activations": e.activation_bytes, "workspace": None,
            "total": e.total_bytes + (targets.nbytes if isinstance(targets, Tensor) else 0)}
