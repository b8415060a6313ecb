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
ORDER = tuple(LAYER_TYPES) + ("other",)


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


def group_by_type(fwd_steps, key_bwd, counter, repeats) -> list[dict]:
    """Rows per layer type, in :data:`ORDER`: forward and backward time records, the
    backward/forward time ratio (median of per-step ratios, with its interval), the
    FLOPs and their ratio, and each type's share of the step's forward + backward time.

    ``fwd_steps``: :func:`forward_steps_by_type`; ``key_bwd``: (layer, op) -> backward
    seconds per step; ``counter``: the :class:`~.counters.FlopCounter` of one step."""
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
    total = sum(stats(f_all[t])["median"] + stats(bwd[t] if t in bwd else [])["median"]
                for t in seen) or 1.0
    rows = []
    for t in (t for t in ORDER if t in seen):
        f, b = stats(f_all[t]), stats(bwd[t] if t in bwd else [])
        tr = paired_ratio(bwd[t], f_all[t]) if t in bwd else None
        ff, bf = flops[t]
        rows.append({"type": t, "ops": sorted({op for (_, op) in counter.fwd if layer_type(op) == t}),
                     "forward": f, "backward": b,
                     "time_ratio": tr["median"] if tr else None,
                     "time_ratio_ci95": tr["ci95"] if tr else None,
                     "fwd_flops": ff, "bwd_flops": bf, "flop_ratio": _ratio(bf, ff),
                     "share": (f["median"] + b["median"]) / total})
    return rows


def format_layer_types(rows) -> list[str]:
    """The per-type rows as text lines for :meth:`Report.table`."""
    from .report import fmt_flops, fmt_time
    if not rows:
        return []
    lines = ["", f"per layer type (ops' self time, forward and backward)"
             f"{'forward':>11}{'backward':>11}{'bwd/fwd t [95%]':>22}{'bwd/fwd F':>10}"
             f"{'share':>7}"]
    for r in rows:
        ci = r["time_ratio_ci95"]
        tr = "-" if r["time_ratio"] is None else f"{r['time_ratio']:.2f} [{ci[0]:.2f}-{ci[1]:.2f}]"
        fr = "-" if r["flop_ratio"] is None else f"{r['flop_ratio']:.2f}"
        lines.append(f"  {r['type']:<51}{fmt_time(r['forward']['median']):>11}"
                     f"{fmt_time(r['backward']['median']):>11}{tr:>22}{fr:>10}"
                     f"{r['share'] * 100:>6.1f}%")
    flops = [(r["type"], fmt_flops(r["fwd_flops"] + r["bwd_flops"])) for r in rows if r["fwd_flops"]]
    if flops:
        lines.append("  FLOPs (fwd+bwd): " + ", ".join(f"{t} {f}" for t, f in flops))
    return lines
