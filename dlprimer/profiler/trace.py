"""Chrome trace export of one recorded step (opens in Perfetto and chrome://tracing).

The Trace Event Format (JSON object form, ``{"traceEvents": [...]}``): complete
events (``"ph": "X"``, ``ts`` and ``dur`` in microseconds, host clock after a device
synchronisation; ``args.timer_us`` is the backend timer's reading: CUDA events on the
GPU) on one thread, nested by time: the phase (forward, backward, optimizer), inside it each layer, inside that
each op; backward ops of one layer that run back to back are grouped under a layer
span too. Memory is a counter track (``"ph": "C"``, name "memory", bytes in use and
the peak since the previous sample). ``otherData`` holds the fingerprint.
"""
from __future__ import annotations

import json
import os

PID, TID = 1, 1
_PHASE_NAMES = {"forward": "forward", "backward": "backward", "step": "optimizer"}


def _x(name, cat, ts, dur, args=None):
    ev = {"name": name, "cat": cat, "ph": "X", "pid": PID, "tid": TID,
          "ts": ts * 1e6, "dur": max(dur, 0.0) * 1e6}
    if args:
        ev["args"] = args
    return ev


def _backward_layers(spans) -> list:
    """Layer spans over runs of consecutive backward ops of the same layer."""
    out, run = [], []
    for s in sorted((s for s in spans if s["cat"] == "backward"), key=lambda s: s["ts"]):
        if run and s["layer"] != run[-1]["layer"]:
            out.append(run)
            run = []
        run.append(s)
    if run:
        out.append(run)
    # a run ends where its longest op ends (a checkpointed segment's backward holds the
    # recompute and backward of its ops: the run must hold them all)
    return [{"name": r[0]["layer"], "cat": "layer", "layer": r[0]["layer"], "ts": r[0]["ts"],
             "dur": max(s["ts"] + s["dur"] for s in r) - r[0]["ts"]} for r in out if r[0]["layer"]]


def chrome_trace(recorder, memory=None, meta=None) -> dict:
    """The trace as a dict: spans of ``recorder`` and, when ``memory`` (the samples
    of :meth:`StepRecorder.shifted`) is given, the memory counter track."""
    events = [{"name": "process_name", "ph": "M", "pid": PID, "args": {"name": "dlprimer step"}},
              {"name": "thread_name", "ph": "M", "pid": PID, "tid": TID, "args": {"name": "step"}}]
    for s in recorder.spans + _backward_layers(recorder.spans):
        name = _PHASE_NAMES.get(s["name"], s["name"]) if s["cat"] == "phase" else s["name"]
        args = {"layer": s["layer"]} if s["layer"] and s["cat"] != "layer" else {}
        if s.get("timer") is not None:
            args["timer_us"] = s["timer"] * 1e6
        events.append(_x(name, s["cat"], s["ts"], s["dur"], args))
    for m in memory or ():
        events.append({"name": "memory", "ph": "C", "pid": PID, "ts": m["t"] * 1e6,
                       "args": {"allocated": m["bytes"], "interval_peak": m["peak"]}})
    # Perfetto nests complete events by order on equal timestamps: parents first
    events[2:] = sorted(events[2:], key=lambda e: (e["ts"], -e.get("dur", 0)))
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": meta or {}}


def check_trace_path(path) -> str:
    """``path`` as a string, or ValueError/TypeError saying why a trace cannot go there
    (called before any measuring, so a typo does not cost the whole profile)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"trace: expected a file path, got {type(path).__name__}")
    path = os.fspath(path)
    d = os.path.dirname(path)
    if d and not os.path.isdir(d):
        raise ValueError(f"trace: the directory of {path!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"trace: {path!r} is a directory, not a file")
    return path


def write_trace(path, recorder, memory=None, meta=None) -> str:
    """Write :func:`chrome_trace` as JSON to ``path``; returns the path."""
    from ..measure import to_json
    path = check_trace_path(path)
    with open(path, "w") as f:
        json.dump(to_json(chrome_trace(recorder, memory, meta)), f)
    return path
