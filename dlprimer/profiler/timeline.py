"""One step on a timeline: phases, layers and ops in order, and memory over time.

:class:`StepRecorder` watches one untimed step (after the profiler's memory step): it is an
autograd observer (each recorded node's forward and backward becomes a span), it
shadows each top-level layer's ``forward`` (a layer span, which also names the layer
its nodes are booked to), and it wraps the phases (forward, backward, optimizer
step). Each span's start and end are ``perf_counter`` readings taken after
synchronising the device (so spans nest exactly); its ``timer`` is the time
``backend.timer()`` gives (``perf_counter`` on the CPU, CUDA events on the GPU).

Memory (the allocator's view): the recorder also stands in for the backend's meter
(:meth:`meter`), and at every span's start and end it samples the bytes in use and
the high-water mark since the previous sample, then resets that mark. The samples
are therefore the allocation and release events of the step at op granularity, and
the largest interval peak is the step's peak: the meter the profiler reads takes a
sample whenever its peak is read, so each phase's peak is a point of the timeline.
The recorder stores into columns preallocated before metering starts; what it still
adds to the step is the attributes observing puts on each node (shapes, dtypes, the
layer: some hundred bytes per node), which is why the profiler's memory split comes
from a step of its own and this step's peak is a little higher. On the CPU the meter
is tracemalloc, which slows the step: its spans are longer than the timed steps'.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np

from .. import checkpoint as _ckpt


class _Meter:
    """The backend meter seen through the recorder: ``peak()`` covers the intervals
    the recorder has already sampled and reset."""

    def __init__(self, rec):
        self.rec, self.inner = rec, rec.inner

    slows_steps = property(lambda self: self.inner.slows_steps)
    name = property(lambda self: type(self.inner).__name__)
    active = property(lambda self: self.inner.active)

    def start(self):
        self.inner.start()

    def stop(self):
        self.inner.stop()

    def current(self):
        return self.inner.current()

    def peak(self):
        self.rec.sample()   # every peak the profiler reads is a point of the timeline
        return max(self.rec._phase_peak, self.inner.peak())

    def reset_peak(self):
        self.inner.reset_peak()
        self.rec._phase_peak = 0


class _Columns:
    """Rows stored column by column in preallocated NumPy arrays (numbers) and lists
    (references), doubling when full."""

    def __init__(self, capacity, numeric, refs):
        self.numeric, self.refs, self.n = numeric, refs, 0
        self.num = np.zeros((capacity, len(numeric)))
        self.ref = [[None] * capacity for _ in refs]

    def add(self, nums, refs):
        if self.n == len(self.num):
            self.num = np.concatenate([self.num, np.zeros_like(self.num)])
            self.ref = [col + [None] * len(col) for col in self.ref]
        self.num[self.n] = nums
        for col, v in zip(self.ref, refs):
            col[self.n] = v
        self.n += 1

    def rows(self) -> list:
        out = []
        for i in range(self.n):
            row = {k: float(self.num[i, j]) for j, k in enumerate(self.numeric)}
            row.update({k: self.ref[j][i] for j, k in enumerate(self.refs)})
            out.append(row)
        return out


class StepRecorder:
    """Spans and memory samples of one step. ``spans``: dicts with ``name``, ``cat``
    ("phase" | "layer" | "forward" | "recompute" | "backward"), ``layer``, ``ts`` and
    ``dur`` (seconds from the recorder's start), ``timer`` (the backend timer's
    seconds); ``samples``: (ts, bytes in use, peak since the previous sample, phase),
    raw meter bytes (see :meth:`shifted`)."""

    def __init__(self, backend, metered: bool = True, scope=None, capacity: int = 4096):
        self.backend, self.scope = backend, scope
        self.inner = backend.memory if metered else None
        # preallocated before metering starts, so that recording allocates (almost)
        # nothing the meter would count: numbers into NumPy columns, names by reference
        self._spans = _Columns(capacity, ("ts", "dur", "timer"), ("name", "cat", "layer"))
        self._samples = _Columns(capacity, ("t", "cur", "pk"), ("phase",))
        self.layer, self.phase = None, None
        self._open = []
        self._phase_peak = 0
        self.t0 = None

    @property
    def meter(self):
        return _Meter(self) if self.inner is not None else None

    @property
    def spans(self) -> list:
        return self._spans.rows()

    @property
    def samples(self) -> list:
        return [(r["t"], int(r["cur"]), int(r["pk"]), r["phase"]) for r in self._samples.rows()]

    def _now(self):
        self.backend.synchronize()
        t = time.perf_counter()
        if self.t0 is None:
            self.t0 = t
        return t - self.t0

    def sample(self):
        if self.inner is None or not self.inner.active:
            return
        cur, pk = self.inner.current(), self.inner.peak()
        self.inner.reset_peak()
        if pk > self._phase_peak:
            self._phase_peak = pk
        self._samples.add((self._now(), cur, max(pk, cur)), (self.phase,))

    def begin(self, name, cat, layer=None):
        self.sample()
        ts = self._now()
        t = self.backend.timer()
        self._open.append((name, cat, layer, ts, t))
        t.__enter__()

    def end(self):
        name, cat, layer, ts, t = self._open.pop()
        t.__exit__(None, None, None)
        self._spans.add((ts, self._now() - ts, t.elapsed), (name, cat, layer))
        self.sample()

    # -- autograd observer ------------------------------------------------------------
    def on_forward_begin(self, node, arrays):
        layer = self.layer or getattr(self.scope, "current", None)
        node.profiler_layer = layer
        cat = "recompute" if _ckpt.is_recomputing() else "forward"
        self.begin(node.name, cat, layer)

    def on_forward(self, node):
        if self._open and self._open[-1][1] in ("forward", "recompute"):
            self.end()

    def on_backward_begin(self, node):
        self.begin(node.name, "backward", getattr(node, "profiler_layer", None))

    def on_backward_end(self, node):
        self.end()

    # -- phases and layers --------------------------------------------------------------
    def wrap_phases(self, phases: dict) -> dict:
        """The profiler's step phases, each inside a phase span."""
        def wrap(name, fn):
            if fn is None:
                return None

            def run(*a):
                self.phase = name
                self.begin(name, "phase")
                try:
                    return fn(*a)
                finally:
                    self.end()
            return run
        out = dict(phases)
        for name in ("forward", "backward", "step"):
            out[name] = wrap(name, phases.get(name))
        return out

    @contextlib.contextmanager
    def attached(self, layers):
        """Observe autograd and shadow each layer's ``forward`` with a layer span."""
        from ..autograd import observe
        patched = []
        for name, mod in layers:
            if "forward" in vars(mod):
                continue

            def wrapper(*a, _inner=mod.forward, _name=name, **k):
                prev, self.layer = self.layer, _name
                self.begin(_name, "layer", _name)
                try:
                    return _inner(*a, **k)
                finally:
                    self.end()
                    self.layer = prev
            object.__setattr__(mod, "forward", wrapper)
            patched.append(mod)
        try:
            with observe(self):
                yield self
        finally:
            for mod in patched:
                object.__delattr__(mod, "forward")

    # -- results ----------------------------------------------------------------------------
    def shifted(self, offset: int) -> list:
        """Memory samples as dicts in the profiler's terms: raw meter bytes plus
        ``offset`` (the resident bytes minus the meter's reading at the step's start)."""
        return [{"t": t, "bytes": cur + offset, "peak": pk + offset, "phase": ph}
                for t, cur, pk, ph in self.samples]

    def timeline(self, offset: int) -> dict:
        """Memory over the step for the report: ``samples`` (:meth:`shifted`), the
        phase spans, and ``peak``, the largest sample (the step's peak)."""
        samples = self.shifted(offset)
        return {"samples": samples,
                "phases": [{"name": s["name"], "ts": s["ts"], "dur": s["dur"]}
                           for s in self.spans if s["cat"] == "phase"],
                "peak": max((m["peak"] for m in samples), default=None)}
