"""checkpoint_tradeoff(): activation memory against step time, per segment count.

For a network of L layers split into k checkpointed segments, backward holds the k
segment inputs plus one segment's activations at a time (about L/k layers), so
activation memory goes as k + L/k, least at k = sqrt(L), and the step pays about one
more forward pass (each segment but the last is run twice). The sweep measures both
on the user's model instead of assuming them.
"""
from __future__ import annotations

import math

from ..autograd import observe
from ..checkpoint import checkpoint_sequential
from ..measure.stats import measure
from ..tensor import Tensor
from .counters import SavedTracker
from .report import fmt_bytes, fmt_time, stats


def sequential_layers(model):
    """The layers a checkpointed forward runs in order: the model's children,
    descending through wrappers that hold a single child (an MLP around a Sequential)."""
    m = model
    while True:
        kids = list(m.children()) if callable(getattr(m, "children", None)) else []
        if len(kids) == 1 and callable(getattr(kids[0], "children", None)) and list(kids[0].children()):
            m = kids[0]
            continue
        break
    if not kids:
        raise TypeError(f"checkpoint_tradeoff: {type(model).__name__} has no child layers to split "
                        "into segments (pass a Sequential or an MLP)")
    return kids


def _depth(layers) -> int:
    """L: the layers that hold parameters (an activation is part of its layer)."""
    n = sum(1 for m in layers if callable(getattr(m, "parameters", None)) and list(m.parameters()))
    return max(n, 1)


def _zero_grads_in_place(params):
    for p in params:
        if p.grad is not None:
            p.grad.data[...] = 0


class Tradeoff:
    """Rows per segment count: ``segments``, ``peak_saved_bytes`` (the most bytes the
    graph held in saved activations at any moment of forward + backward, counted
    on the real graph by :class:`SavedTracker`), ``peak_bytes`` (the allocator's
    high-water mark above the model state: activations plus workspace such as
    weight-gradient temporaries), ``kept_after_forward`` (allocator), ``step`` (time
    stats), and the ratios to the first row (``saved_ratio``, ``memory_ratio``,
    ``time_ratio`` of medians, ``time_ratio_min`` of the fastest steps, which other
    processes on a shared machine can only slow down); ``sqrt_choice`` is the row
    nearest sqrt(L)."""

    def __init__(self, rows, depth, sqrt_choice, meta):
        self.rows, self.depth, self.sqrt_choice, self.meta = rows, depth, sqrt_choice, meta

    def to_dict(self):
        return {"rows": self.rows, "depth": self.depth, "sqrt_choice": self.sqrt_choice, "meta": self.meta}

    def row(self, segments):
        for r in self.rows:
            if r["segments"] == segments:
                return r
        raise KeyError(f"no row for {segments} segments; measured: {[r['segments'] for r in self.rows]}")

    def table(self) -> str:
        lines = [f"checkpoint trade-off  L={self.depth} layers, sqrt(L)={math.sqrt(self.depth):.2f}  "
                 f"backend={self.meta['backend']}",
                 f"{'segments':>9}{'peak saved act.':>17}{'ratio':>7}{'alloc. peak':>13}{'ratio':>7}"
                 f"{'kept after fwd':>16}{'step median':>13}{'ratio':>7}{'step min':>11}{'ratio':>7}"]
        for r in self.rows:
            mark = "  <- sqrt(L)" if r["segments"] == self.sqrt_choice else ""
            lines.append(f"{r['segments']:>9}{fmt_bytes(r['peak_saved_bytes']):>17}{r['saved_ratio']:>7.2f}"
                         f"{fmt_bytes(r['peak_bytes']):>13}{r['memory_ratio']:>7.2f}"
                         f"{fmt_bytes(r['kept_after_forward']):>16}{fmt_time(r['step']['median']):>13}"
                         f"{r['time_ratio']:>7.2f}{fmt_time(r['step']['min']):>11}{r['time_ratio_min']:>7.2f}{mark}")
        return "\n".join(lines)

    def __str__(self):
        return self.table()


def checkpoint_tradeoff(model, loss_fn, batch, segments=(1, 2, 4, 8), optimizer=None,
                        warmup: int = 1, repeats: int = 3, include_sqrt: bool = True,
                        budget_s: float | None = None) -> Tradeoff:
    """Measure peak activation memory and step time for each segment count.

    ``segments=1`` is the plain step (the baseline). With ``include_sqrt`` the
    segment count round(sqrt(L)) is added to the sweep when missing, L being the
    number of layers holding parameters. Memory comes from one metered step per
    count (gradients zeroed in place so they do not count), time from ``repeats``
    unmetered rounds after ``warmup`` rounds, each round stepping every count once in
    rotating order (:func:`dlprimer.measure.measure`); with ``budget_s`` the rounds go
    on until every ratio to the plain step is within +-5% or the budget is spent.
    ``time_ratio`` is the median of per-round ratios to the plain step, with its
    ``time_ratio_ci95``.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError("checkpoint_tradeoff: batch must be a pair (inputs, targets)")
    segs = list(segments)
    if not segs or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in segs):
        raise ValueError(f"checkpoint_tradeoff: segments must be positive ints, got {segments!r}")
    layers = sequential_layers(model)
    depth = _depth(layers)
    sqrt_k = max(1, round(math.sqrt(depth)))
    if include_sqrt and sqrt_k not in segs:
        segs.append(sqrt_k)
    segs = sorted(set(min(k, len(layers)) for k in segs))
    inputs, targets = batch
    params = list(model.parameters())
    backend = inputs.backend if isinstance(inputs, Tensor) else params[0].backend

    def step(k):
        loss = loss_fn(checkpoint_sequential(layers, k, inputs), targets)
        loss.backward()
        del loss
        if optimizer is not None:
            optimizer.step()

    # gradients allocated once, zeroed in place afterwards: the sweep sees activations
    step(1)

    def run(k):
        def f():
            _zero_grads_in_place(params)
            step(k)
        return f
    # interleaved rounds (rotating order): drift in machine load hits every k alike
    m = measure({k: run(k) for k in segs}, timer=backend.timer, warmup=warmup,
                min_rounds=repeats, max_rounds=repeats if budget_s is None else max(repeats, 200),
                budget_s=budget_s or 0.0)
    times = m.samples
    rows = []
    meter = backend.memory
    for k in segs:
        was = meter.active
        meter.start()
        try:
            _zero_grads_in_place(params)
            base = meter.current()
            meter.reset_peak()
            with observe(SavedTracker(exclude=[p.data for p in params])) as saved:
                loss = loss_fn(checkpoint_sequential(layers, k, inputs), targets)
                kept = meter.current() - base
                loss.backward()
                del loss
            peak = meter.peak() - base
        finally:
            if not was:
                meter.stop()
        rows.append({"segments": k, "peak_bytes": peak, "peak_saved_bytes": saved.peak,
                     "kept_after_forward": kept, "step": stats(times[k])})
    b0 = rows[0]
    for r in rows:
        r["memory_ratio"] = r["peak_bytes"] / b0["peak_bytes"] if b0["peak_bytes"] else float("nan")
        r["saved_ratio"] = (r["peak_saved_bytes"] / b0["peak_saved_bytes"]
                            if b0["peak_saved_bytes"] else float("nan"))
        tr = m.ratio(r["segments"], b0["segments"])
        r["time_ratio"], r["time_ratio_ci95"] = tr.median, list(tr.ci95)
        r["time_ratio_min"] = r["step"]["min"] / b0["step"]["min"] if b0["step"]["min"] else float("nan")
    choice = min(segs, key=lambda k: (abs(k - math.sqrt(depth)), k))
    return Tradeoff(rows, depth, choice, {"backend": backend.name, "repeats": repeats,
                                          "warmup": warmup, "layers": len(layers),
                                          "rounds": len(m.order), "warnings": m.warnings})
