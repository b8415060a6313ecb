"""Per-op rows of the profile: forward and backward self time, FLOPs, bytes, roofline.

:class:`ForwardTimer` is an autograd observer that times each recorded node's
forward (``on_forward_begin`` to ``on_forward``, with ``backend.timer()``; a
checkpointed segment's replay in backward is not booked as forward) and counts its
bytes (:func:`dlprimer.profiler.traffic.node_bytes`). :func:`op_rows` joins it with
the backward timer and the FLOP counter into one row per (layer, op) and direction,
each placed on the roofline (:func:`dlprimer.profiler.roofline.place`).
"""
from __future__ import annotations

from collections import defaultdict

from .. import checkpoint as _ckpt
from .roofline import place
from .traffic import node_bytes, update_bytes

OPTIMIZER = "(optimizer)"


class ForwardTimer:
    """Forward self time and bytes per (layer, op) for one step (``reset()`` between
    steps). The layer is ``scope.current`` when the node starts, as the
    :class:`~dlprimer.profiler.counters.FlopCounter` books it."""

    def __init__(self, backend, scope):
        self.backend, self.scope = backend, scope
        self.fwd_bytes = defaultdict(int)     # (layer, op) -> bytes per step
        self.bwd_bytes = defaultdict(int)
        self.reset()

    def reset(self):
        self.times = defaultdict(float)
        self.calls = defaultdict(int)
        self.fwd_bytes.clear()
        self.bwd_bytes.clear()
        self._stack = []

    def on_forward_begin(self, node, arrays):
        t = self.backend.timer()
        self._stack.append((node, t, {id(a) for a in arrays}, self.scope.current))
        t.__enter__()

    def on_forward(self, node):
        if not self._stack or self._stack[-1][0] is not node:
            return
        _, t, ids, layer = self._stack.pop()
        t.__exit__(None, None, None)
        key = (layer, node.name)
        fb, bb = node_bytes(node, ids)
        self.bwd_bytes[key] += bb
        if _ckpt.is_recomputing():
            return
        self.times[key] += t.elapsed
        self.calls[key] += 1
        self.fwd_bytes[key] += fb


def _stats_of(samples):
    from .report import stats
    return stats(samples)


def _row(layer, op, direction, rec, flops, nbytes, calls, peaks):
    return {"layer": layer, "op": op, "direction": direction, "time": rec["median"],
            "time_ci95": rec["ci95"], "calls": calls,
            **place(flops, nbytes, rec["median"], peaks)}


def op_rows(fwd_samples, ftimer, counter, btimer, key_bwd, peaks, opt_samples=None,
            optimizer=None, params=()) -> list:
    """Rows per (layer, op) and direction ("forward" | "backward"), and one for the
    optimizer update, each with its time record's median and interval, FLOPs, bytes,
    intensity, achieved GFLOP/s and GB/s and its place on the roofline; most
    expensive first. ``fwd_samples`` / ``key_bwd``: (layer, op) -> seconds per step."""
    rows = []
    for key, vs in fwd_samples.items():
        rows.append(_row(*key, "forward", _stats_of(vs), counter.fwd.get(key, 0),
                         ftimer.fwd_bytes.get(key, 0), ftimer.calls.get(key, 0), peaks))
    for key, vs in key_bwd.items():
        rows.append(_row(*key, "backward", _stats_of(vs), counter.bwd.get(key, 0),
                         ftimer.bwd_bytes.get(key, 0), btimer.calls.get(key, 0), peaks))
    upd = update_bytes(optimizer, params) if optimizer is not None else None
    if opt_samples and upd is not None:
        nbytes, flops = upd
        rows.append(_row(OPTIMIZER, f"{type(optimizer).__name__}.step", "step",
                         _stats_of(opt_samples), flops, nbytes, 1, peaks))
    rows.sort(key=lambda r: -(r["time"] or 0))
    return rows


def add_forward(ops, rows):
    """Give each backward-op entry of the profile (``ops``) its forward time record,
    its bytes both ways and its roofline figures, from :func:`op_rows`."""
    by = {(r["layer"], r["op"], r["direction"]): r for r in rows}
    for o in ops:
        f = by.get((o["layer"], o["op"], "forward"))
        b = by.get((o["layer"], o["op"], "backward"))
        o["forward"] = f["time"] if f else None
        o["forward_ci95"] = f["time_ci95"] if f else None
        o["fwd_bytes"] = f["bytes"] if f else None
        o["bwd_bytes"] = b["bytes"] if b else None
        for d, r in (("fwd", f), ("bwd", b)):
            for k in ("intensity", "gflops_per_s", "gbytes_per_s", "bound", "roof_fraction"):
                o[f"{d}_{k}"] = r[k] if r else None
