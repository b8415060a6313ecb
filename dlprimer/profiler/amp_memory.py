"""The memory split of a training step under mixed precision, measured.

:func:`memory_by_precision` runs one metered step of the same model per precision
(float32, then ``dp.autocast`` in each low-precision dtype the backend supports) and
reads the split from the allocator and the arrays, as :func:`profile` does: weights,
gradients and optimizer state (from the arrays), saved activations (held after the
forward) and workspace (the peak's excess), and the bytes per parameter they come to.
Nothing is estimated: what autocast changes -- half-precision copies of weights and
activations saved for backward, casts' temporaries -- shows in the measured rows.
"""
from __future__ import annotations

import contextlib

PRECISIONS = ("float32", "bfloat16", "float16")


def _one(model, loss_fn, batch, optimizer, dtype, backend):
    from ..amp import autocast
    from .profile import profile
    ctx = contextlib.nullcontext() if dtype == "float32" else autocast(dtype, backend=backend)
    with ctx:
        rep = profile(model, loss_fn, batch, optimizer=optimizer, warmup=1, repeats=1, memory=True,
                      estimate=False)
    return rep.memory


def memory_by_precision(model, loss_fn, batch, optimizer=None, dtypes=PRECISIONS) -> list[dict]:
    """One row per precision in ``dtypes`` (those the backend cannot autocast to are
    skipped): ``dtype``, ``split`` (bytes: params, grads, optimizer, inputs,
    activations, workspace), ``peak``, per-phase ``phases``, and per parameter
    ``state_per_param`` (weights + gradients + optimizer state), ``held_per_param``
    (state + saved activations) and ``peak_per_param``; ``activation_ratio`` is the
    saved activations against float32's (when float32 is among ``dtypes``).

    The model's weights are updated by the steps when ``optimizer`` is given."""
    from .profile import _backend_of
    params = list(model.parameters())
    backend = _backend_of(params, batch)
    n = sum(int(p.size) for p in params) or 1
    rows = []
    for dt in dtypes:
        if dt != "float32" and dt not in backend.autocast_dtypes:
            continue
        mem = _one(model, loss_fn, batch, optimizer, dt, backend)
        s = mem["split"]
        state = s["params"] + s["grads"] + s["optimizer"]
        rows.append({"dtype": dt, "split": dict(s), "peak": mem["peak"], "phases": mem["phases"],
                     "params": n, "state_per_param": state / n,
                     "held_per_param": (state + s["activations"]) / n,
                     "peak_per_param": mem["peak"] / n})
    base = next((r for r in rows if r["dtype"] == "float32"), None)
    for r in rows:
        a0 = base["split"]["activations"] if base else 0
        r["activation_ratio"] = r["split"]["activations"] / a0 if a0 else None
    return rows


def format_precision_memory(rows) -> str:
    """The rows as a text table (bytes, and bytes per parameter)."""
    from .report import fmt_bytes
    if not rows:
        return ""
    keys = ("params", "grads", "optimizer", "activations", "workspace")
    head = f"{'memory by precision (measured)':<32}" + "".join(f"{r['dtype']:>14}" for r in rows)
    lines = [head, "-" * len(head)]
    for k in keys:
        lines.append(f"  {k:<30}" + "".join(f"{fmt_bytes(r['split'][k]):>14}" for r in rows))
    lines.append(f"  {'peak of the step':<30}" + "".join(f"{fmt_bytes(r['peak']):>14}" for r in rows))
    for label, k in (("state bytes / parameter", "state_per_param"),
                     ("held after forward / param", "held_per_param"),
                     ("peak bytes / parameter", "peak_per_param")):
        lines.append(f"  {label:<30}" + "".join(f"{r[k]:>14.2f}" for r in rows))
    lines.append(f"  {'activations vs float32':<30}" + "".join(
        f"{'-' if r['activation_ratio'] is None else format(r['activation_ratio'], '.2f') + 'x':>14}"
        for r in rows))
    return "\n".join(lines)
