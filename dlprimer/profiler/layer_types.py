"""Time and FLOPs per layer type: attention, convolution, linear, normalisation,
activation, embedding (and pooling, loss, casts, other), each with its
backward/forward ratios.

The chapter's "backward costs about 2x the forward" is a statement about matrix
products; other layer types have other ratios (an embedding's forward is a gather
and its backward a scatter-add; a ReLU's backward is one masked copy). The profiler
books every autograd node to the type of its op, so a Transformer's ratio can be
read as the mix of its parts.

Forward time per op is the :class:`~.ops.ForwardTimer`'s self time of each node (the
same per-op records the op table and the roofline read), backward time per op the
:class:`~.counters.BackwardTimer`'s: one measurement behind every per-op, per-layer and
per-type figure of a profile.

The last row, ``framework``, is what runs outside every op: the step's forward less
the ops' forward self times (the modules' Python, ``Function.apply``'s bookkeeping,
creating Tensors) and its backward less theirs (the engine: ordering nodes, adding
gradients, freeing saved arrays). In a small model it is the largest row, and the
reason a whole step's bwd/fwd ratio sits near 1 while its FLOP ratio is 2.
"""
from __future__ import annotations

from collections import defaultdict


#: Op (autograd Function) names per layer type; anything else is "other".
LAYER_TYPES = {
    "attention": ("ScaledDotProductAttention",),
    "convolution": ("Conv2d",),
    "linear": ("Linear", "MatMul"),
    "normalisation": ("LayerNorm", "BatchNorm"),
    "activation": ("ReLU", "LeakyReLU", "GELU", "BiasGELU", "SiLU", "ELU", "Tanh", "Sigmoid"),
    "embedding": ("Embedding",),
    "pooling": ("MaxPool2d", "AvgPool2d"),
    "loss": ("CrossEntropy", "MSELoss", "L1Loss", "HuberLoss", "BCEWithLogits", "FocalLoss",
             "Softmax", "LogSoftmax"),
    "cast": ("Cast",),
}
_TYPE_OF = {op: t for t, ops in LAYER_TYPES.items() for op in ops}
#: The row of what runs outside every op: the step's time less the ops' self times.
FRAMEWORK = "framework"
ORDER = tuple(LAYER_TYPES) + ("other", FRAMEWORK)


def layer_type(op_name: str) -> str:
    """The layer type of an autograd op, by its Function's name ("other" if unlisted)."""
    return _TYPE_OF.get(op_name, "other")


def forward_steps_by_type(key_fwd, repeats) -> list[dict]:
    """One {type: forward seconds} per timed step, from the profile's per-op forward
    self times (``key_fwd``: (layer, op) -> seconds per step)."""
    steps = [defaultdict(float) for _ in range(repeats)]
    for (_, op), vs in key_fwd.items():
        t = layer_type(op)
        for i, v in enumerate(vs[-repeats:]):
            steps[i][t] += v
    return [dict(d) for d in steps]


def _framework(fwd_total, bwd_total, f_all, bwd, repeats, engine=()):
    """Per step: the step's forward and backward less the ops' self times (>= 0). The
    backward's is ``engine`` when given: the engine's time measured in the very steps
    that timed the ops (a difference across two sets of steps can come out 0 under load)."""
    n = min(repeats, len(fwd_total), len(bwd_total))
    if not n:
        return None, None
    ft, bt = list(fwd_total)[-n:], list(bwd_total)[-n:]
    fw = [max(0.0, ft[i] - sum(v[-n:][i] for v in f_all.values())) for i in range(n)]
    if len(engine) >= n:
        return fw, [max(0.0, e) for e in list(engine)[-n:]]
    bw = [max(0.0, bt[i] - sum(v[-n:][i] for v in bwd.values())) for i in range(n)]
    return fw, bw


def group_by_type(fwd_steps, key_bwd, counter, repeats, fwd_total=(), bwd_total=(),
                  engine=()) -> list[dict]:
    """Rows per layer type, in :data:`ORDER`: forward and backward time records, the
    backward/forward time ratio (median of per-step ratios, with its interval), the
    FLOPs and their ratio, and each type's share of the step's forward + backward time.

    ``fwd_steps``: :func:`forward_steps_by_type`; ``key_bwd``: (layer, op) -> backward
    seconds per step; ``counter``: the :class:`~.counters.FlopCounter` of one step;
    ``fwd_total`` / ``bwd_total``: the step's forward and backward seconds per step
    (given, the :data:`FRAMEWORK` row is what they hold beyond the ops); ``engine``: the
    backward's time outside the ops, per step, measured in the steps that timed them."""
    from .report import _ratio, paired_ratio, stats
    fwd_steps = fwd_steps[-repeats:]
    bwd = defaultdict(lambda: [0.0] * repeats)
    for (_, op), vs in key_bwd.items():
        acc = bwd[layer_type(op)]
        for i, v in enumerate(vs[-repeats:]):
            acc[i] += v
    flops = defaultdict(lambda: [0, 0])
    for (_, op), v in counter.fwd.items():
        flops[layer_type(op)][0] += v
    for (_, op), v in counter.bwd.items():
        flops[layer_type(op)][1] += v
    seen = set(bwd) | set(flops) | {t for s in fwd_steps for t in s}
    f_all = {t: [s.get(t, 0.0) for s in fwd_steps] for t in seen}
    fw, bw = _framework(fwd_total, bwd_total, f_all, dict(bwd), repeats, engine)
    if fw is not None:
        seen.add(FRAMEWORK)
        f_all[FRAMEWORK], bwd[FRAMEWORK] = fw, bw
    total = sum(stats(f_all[t])["median"] + stats(bwd[t] if t in bwd else [])["median"]
                for t in seen) or 1.0
    rows = []
    for t in (t for t in ORDER if t in seen):
        f, b = stats(f_all[t]), stats(bwd[t] if t in bwd else [])
        tr = paired_ratio(bwd[t], f_all[t]) if t in bwd else None
        if t == FRAMEWORK and tr is None and f["median"] > 0:
            # a difference of two timings can be 0 in a step: the ratio of the medians
            tr = {"median": b["median"] / f["median"], "ci95": None}
        ff, bf = flops[t] if t in flops else (0, 0)
        rows.append({"type": t, "ops": sorted({op for (_, op) in counter.fwd if layer_type(op) == t}),
                     "forward": f, "backward": b,
                     "time_ratio": tr["median"] if tr else None,
                     "time_ratio_ci95": tr["ci95"] if tr else None,
                     "fwd_flops": ff, "bwd_flops": bf, "flop_ratio": _ratio(bf, ff),
                     "share": (f["median"] + b["median"]) / total})
    return rows


#: Column heads of the per-type rows, in the text table and the HTML report alike.
COLUMNS = ("layer type", "forward", "backward", "bwd/fwd time [95%]", "fwd FLOPs", "bwd FLOPs",
           "bwd/fwd FLOPs", "share")


def row_cells(r) -> tuple:
    """One per-type row (as :func:`group_by_type` makes it, or read back from a
    profile's JSON) as the strings of :data:`COLUMNS`: the one formatting behind the
    text table and the HTML report, so both show the same numbers."""
    from .report import fmt_flops, fmt_time
    ci = r.get("time_ratio_ci95")
    tr = "-" if r.get("time_ratio") is None else f"{r['time_ratio']:.2f}" + (
        f" [{ci[0]:.2f}-{ci[1]:.2f}]" if ci else " (of medians)")
    fr = "-" if r.get("flop_ratio") is None else f"{r['flop_ratio']:.2f}"
    return (r["type"], fmt_time(r["forward"]["median"]), fmt_time(r["backward"]["median"]), tr,
            fmt_flops(r["fwd_flops"]), fmt_flops(r["bwd_flops"]), fr, f"{r['share'] * 100:.1f}%")


_WIDTHS = (16, 11, 11, 22, 11, 11, 15, 8)


def format_layer_types(rows) -> list[str]:
    """The per-type rows as text lines for :meth:`Report.table`."""
    if not rows:
        return []
    head = "  " + "".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}"
                          for i, (c, w) in enumerate(zip(COLUMNS, _WIDTHS)))
    lines = ["", "per layer type (ops' self time, forward and backward; FLOPs counted)", head]
    for r in rows:
        lines.append("  " + "".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}"
                                    for i, (c, w) in enumerate(zip(row_cells(r), _WIDTHS))))
    return lines
