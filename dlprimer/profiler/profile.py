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
from .layer_types import forward_steps_by_type, group_by_type
from .memory import measure_step_memory
from .ops import ForwardTimer, add_forward, op_rows
from .peaks import machine_peaks
from .timeline import StepRecorder
from .trace import check_trace_path, write_trace
from .report import Report, _ratio, paired_ratio, stats

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


class _Step:
    """One training step split in its timed parts: ``forward()`` (model, then loss,
    each timed into ``sink``) and the zero_grad / backward / optimizer calls."""

    def __init__(self, model, loss_fn, batch, optimizer, backend, scope):
        self.model, self.loss_fn, self.optimizer, self.backend = model, loss_fn, optimizer, backend
        self.inputs, self.targets = batch
        self.params = list(model.parameters())
        self.scope = scope
        self.sink = defaultdict(float)

    def zero_grad(self):
        _zero_grad(self.model, self.optimizer, self.params)

    def forward(self):
        tm = self.backend.timer()
        with tm:
            out = self.model(self.inputs)
        self.sink[_MODEL_TOTAL] += tm.elapsed
        prev, self.scope.current = self.scope.current, LOSS
        try:
            t = self.backend.timer()
            with t:
                loss = self.loss_fn(out, self.targets)
            self.sink[LOSS] += t.elapsed
        finally:
            self.scope.current = prev
        _check_loss(loss)
        return loss

    def warm_up(self, n):
        """``n`` untimed steps (first-call costs: kernel compilation, pool growth)."""
        for _ in range(n):
            self.zero_grad()
            self.forward().backward()
            if self.optimizer is not None:
                self.optimizer.step()
        self.sink.clear()


def _check_loss(loss):
    if not isinstance(loss, Tensor) or loss.size != 1:
        raise TypeError("profile: loss_fn must return a scalar Tensor, got "
                        f"{type(loss).__name__}{getattr(loss, 'shape', '')}")
    if not loss.requires_grad:
        raise RuntimeError("profile: the loss does not require grad: no parameter of the model "
                           "needs a gradient, or the forward ran under no_grad")


class _Samples:
    """Per-step timings of the timed steps, all lists aligned by step index."""

    def __init__(self):
        self.fwd, self.bwd, self.step, self.engine = [], [], [], []
        self.observed_bwd = []               # backward of the observed steps (the ops' own)
        self.layer_fwd = defaultdict(list)   # layer -> seconds per step
        self.key_bwd = defaultdict(list)     # (layer, op) -> backward self time per step
        self.key_fwd = defaultdict(list)     # (layer, op) -> forward self time per step


def _timed_steps(step, layers, repeats, counter, btimer, ftimer) -> _Samples:
    """``repeats`` pairs of timed steps. The first of each pair runs under the per-op
    observers (forward and backward self time and FLOPs per node); the second runs
    without them and gives the totals (forward, backward, optimizer step) and each
    top-level layer's forward. The observers' own work per node (timers, FLOP and byte
    counts) falls inside the forward pass and outside each op's self time: timed in
    the same steps, it lengthened the forward of a small Transformer by a quarter and
    pulled its whole-step bwd/fwd ratio down from about 1.0 to 0.7."""
    s = _Samples()
    with _timed_layers(layers, step.scope, step.backend, step.sink):
        for _ in range(repeats):
            counter.reset()
            btimer.reset()
            ftimer.reset()
            with observe(ftimer), observe(counter), observe(btimer):
                _, observed_bwd, _ = _one_step(step)
            s.engine.append(observed_bwd - btimer.total())   # the same step's nodes
            s.observed_bwd.append(observed_bwd)
            for key, v in btimer.times.items():
                s.key_bwd[key].append(v)
            for key, v in ftimer.times.items():
                s.key_fwd[key].append(v)
            _plain_step(step, s)
    return s


def _one_step(step):
    """zero_grad, forward, backward, optimizer step; returns their times (None for
    the step without an optimizer)."""
    backend = step.backend
    step.sink.clear()
    step.zero_grad()
    with backend.timer() as tf:
        loss = step.forward()
    with backend.timer() as tb:
        loss.backward()
    del loss
    ts = None
    if step.optimizer is not None:
        with backend.timer() as ts:
            step.optimizer.step()
    return tf.elapsed, tb.elapsed, ts.elapsed if ts is not None else None


def _plain_step(step, s):
    """One step without per-op observers: the totals and per-layer forward times."""
    f, b, t = _one_step(step)
    s.fwd.append(f)
    s.bwd.append(b)
    if t is not None:
        s.step.append(t)
    sink = step.sink
    own = sink.pop(_MODEL_TOTAL, 0.0) - sum(v for n, v in sink.items() if n != LOSS)
    s.layer_fwd[MODEL].append(max(own, 0.0))
    for name, v in sink.items():
        s.layer_fwd[name].append(v)


def _entry(name, f_times, b_times, ff, bf):
    """One row: forward and backward records, FLOPs, and the backward/forward time
    ratio as the median of per-step ratios (paired) with its interval."""
    f, b = stats(f_times), stats(b_times)
    tr = paired_ratio(b_times, f_times)
    return {"name": name, "forward": f, "backward": b, "fwd_flops": ff, "bwd_flops": bf,
            "time_ratio": tr["median"] if tr else None,
            "time_ratio_ci95": tr["ci95"] if tr else None,
            "flop_ratio": _ratio(bf, ff),
            "fwd_flops_per_s": _ratio(ff, f["median"]), "bwd_flops_per_s": _ratio(bf, b["median"])}


def _layer_rows(s, counter, names, repeats):
    """Per-layer rows in model order, then layers found only by the counters, then the loss."""
    fwd_flops_l = counter.by_layer(counter.fwd)
    bwd_flops_l = counter.by_layer(counter.bwd)
    bwd_time_l = defaultdict(lambda: [0.0] * repeats)
    for (layer, _), vs in s.key_bwd.items():
        acc = bwd_time_l[layer]
        for i, v in enumerate(vs[-repeats:]):
            acc[i] += v
    extra = [n for n in list(fwd_flops_l) + list(bwd_time_l) if n not in names and n != LOSS]
    rows = []
    for n in names + sorted(set(extra)) + [LOSS]:
        if n not in bwd_time_l and n not in fwd_flops_l and (n == MODEL or n not in s.layer_fwd):
            continue
        rows.append(_entry(n, s.layer_fwd.get(n, []), bwd_time_l.get(n, []),
                           fwd_flops_l.get(n, 0), bwd_flops_l.get(n, 0)))
    return rows


def _total_row(s, counter, has_optimizer):
    total = _entry("total", s.fwd, s.bwd, counter.forward_total, counter.backward_total)
    total["step"] = stats(s.step) if has_optimizer else None
    engine = stats(s.engine)
    total["backward_engine"], total["backward_engine_ci95"] = engine["median"], engine["ci95"]
    total["recompute_flops"] = sum(counter.recompute.values())
    fb = total["forward"]["median"] + total["backward"]["median"]
    total["flops_per_s"] = _ratio(total["fwd_flops"] + total["bwd_flops"], fb)
    return total


def _backward_ops(s, counter, btimer):
    """Backward self time per (layer, op), most expensive first. ``share`` is the op's
    part of the backward time of the same (observed) steps, summed over them: the shares
    of all ops add up to at most 1, whatever the noise (a sum of per-op medians over the
    median of another set of steps need not)."""
    observed = sum(s.observed_bwd) or 1.0
    ops = []
    for (layer, op), vs in s.key_bwd.items():
        rec = stats(vs)
        med = rec["median"]
        ops.append({"layer": layer, "op": op, "backward": med, "backward_ci95": rec["ci95"],
                    "share": sum(vs) / observed,
                    "calls": btimer.calls.get((layer, op), 0),
                    "bwd_flops": counter.bwd.get((layer, op), 0),
                    "fwd_flops": counter.fwd.get((layer, op), 0)})
    ops.sort(key=lambda o: -o["backward"])
    return ops


def _memory_step(step, batch, estimate, recorder=None):
    """One metered, untimed step's memory split (and the estimator's beside it),
    watched by ``recorder`` (the timeline, :mod:`dlprimer.profiler.timeline`)."""
    opt = step.optimizer
    phases = {"zero_grad": step.zero_grad, "forward": step.forward,
              "backward": lambda loss: loss.backward(),
              "step": (lambda: opt.step()) if opt is not None else None}
    if recorder is not None:
        phases = recorder.wrap_phases(phases)
    mem = measure_step_memory(phases, step.backend, step.params, opt, batch,
                              meter=recorder.meter if recorder is not None else None)
    if estimate:
        mem["analytic"] = _analytic(step.model, step.inputs, step.targets, opt)
    return mem


def profile(model, loss_fn, batch, optimizer=None, warmup: int = 3, repeats: int = 20,
            memory: bool = True, estimate: bool = True, trace=None, roofline: bool = True) -> Report:
    """Profile training steps of ``model`` on ``batch = (inputs, targets)``.

    ``loss_fn(model(inputs), targets)`` must return a scalar Tensor. Each of the
    ``repeats`` timed steps is zero_grad, forward, loss, backward, optimizer step
    (when an optimizer is given; the model's weights do change). Returns a
    :class:`Report` with, per top-level layer and in total: forward and backward time
    records (median, 95% interval, quartiles; :mod:`dlprimer.measure.stats`),
    forward/backward FLOPs, the backward/forward ratios side by side (time: median of
    per-step ratios with its interval; the chapter's "backward costs about 2x
    forward"), achieved FLOP/s, the backward ops by self time, and (``memory=True``)
    one metered step's memory split beside :func:`dlprimer.estimate`'s figures.
    ``meta["fingerprint"]`` is the environment (:func:`dlprimer.measure.fingerprint`).

    Per op (``ops``, and ``roofline["ops"]`` per direction): forward and backward self
    time, FLOPs, bytes (:mod:`~dlprimer.profiler.traffic`), intensity, GFLOP/s, GB/s
    and, with ``roofline=True``, the op's place under the machine's roofs (peaks
    measured once per run, :mod:`~dlprimer.profiler.peaks`, kept in the fingerprint).
    One more step is recorded as a timeline (``memory["timeline"]``: bytes in use at
    every op boundary, phases); ``trace="step.json"`` writes it as a Chrome trace.
    """
    from ..measure import finish, fingerprint
    from ..backend.unfused import fusion_enabled
    _check_args(model, loss_fn, batch, optimizer, warmup, repeats)
    if trace is not None:
        check_trace_path(trace)
    backend = _backend_of(list(model.parameters()), batch)
    fp = fingerprint(backend)
    layers = named_layers(model)
    step = _Step(model, loss_fn, batch, optimizer, backend, LayerScope(MODEL))
    step.warm_up(warmup)
    counter, btimer = FlopCounter(step.scope), BackwardTimer(backend)
    ftimer = ForwardTimer(backend, step.scope)
    s = _timed_steps(step, layers, repeats, counter, btimer, ftimer)
    names = [n for n, _ in layers]
    total = _total_row(s, counter, optimizer is not None)
    rows = _layer_rows(s, counter, names, repeats)
    ops = _backward_ops(s, counter, btimer)
    fp["peaks"] = machine_peaks(backend) if roofline else None
    roof = op_rows(s.key_fwd, ftimer, counter, btimer, s.key_bwd, fp["peaks"], s.step, optimizer,
                   step.params)
    add_forward(ops, roof)
    mem = _memory_step(step, batch, estimate) if memory else None
    timeline, recorder = _recorded_step(step, layers, batch, memory)
    if mem is not None:
        mem["timeline"] = timeline
    inputs = batch[0]
    from ..amp import autocast_dtype
    amp = autocast_dtype()
    meta = {"backend": backend.name, "warmup": warmup, "repeats": repeats, "fusion": fusion_enabled(),
            "autocast": None if amp is None else str(getattr(amp, "name", amp)),
            "inputs_shape": tuple(inputs.shape) if isinstance(inputs, Tensor) else None,
            "optimizer": type(optimizer).__name__ if optimizer is not None else None,
            "layers": names, "fingerprint": finish(fp)}
    if trace is not None:
        write_trace(trace, recorder, timeline["samples"] if timeline else None, meta)
    rep = Report(rows, total, ops, mem, meta, roofline={"peaks": fp["peaks"], "ops": roof})
    rep.layer_types = group_by_type(forward_steps_by_type(s.key_fwd, repeats), s.key_bwd, counter,
                                    repeats, s.fwd, s.bwd, s.engine)
    return rep


def _recorded_step(step, layers, batch, memory):
    """One more untimed step on a timeline (:mod:`dlprimer.profiler.timeline`): metered
    when ``memory`` (returns the timeline, whose ``step_peak`` is the peak this step's
    meter read; the recorder's observing adds a little to it, some hundred bytes per
    node, which is why the memory split comes from a step of its own), else spans only."""
    recorder = StepRecorder(step.backend, metered=memory, scope=step.scope)
    with recorder.attached(layers):
        if memory:
            tmem = _memory_step(step, batch, False, recorder)
            tl = recorder.timeline(tmem["offset"])
            tl["step_peak"] = tmem["peak"]
            tl["phase_peaks"] = {k: v["peak"] for k, v in tmem["phases"].items()}
            return tl, recorder
        run = recorder.wrap_phases({"forward": step.forward, "backward": lambda loss: loss.backward(),
                                    "step": step.optimizer.step if step.optimizer else None})
        step.zero_grad()
        run["backward"](run["forward"]())
        if run["step"] is not None:
            run["step"]()
    return None, recorder


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
