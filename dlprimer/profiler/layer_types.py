"""Time and FLOPs per layer type: attention, convolution, linear, normalisation,
activation, embedding (and pooling, loss, casts, other), each with its
backward/forward ratios.

The chapter's "backward costs about 2x the forward" is a statement about matrix
products; other layer types have other ratios (an embedding's forward is a gather
and its backward a scatter-add; a ReLU's backward is one masked copy). The profiler
books every autograd node to the type of its op, so a Transformer's ratio can be
read as the mix of its parts.

Forward time per op: :class:`ForwardOpTimer` is an autograd observer that reads the
backend's clock each time a node is recorded (after synchronising the device), and
books the time since the previous node (or since the forward began) to this node's
op. In eager execution that interval is the op's forward plus the Python between
the two ops (reshapes of a module's forward, argument checks), so small ops carry
their share of the framework's overhead, as they do in the step. Work that records
no node (ops on tensors that need no gradient) lands on the next recorded op.
On CUDA the device is synchronised at each recorded op, as the backward timer
already does around each node, so each op's kernels land on that op (and the
forward loses the overlap of launches with execution that an unprofiled step has).
Backward time per op is the :class:`~.counters.BackwardTimer`'s self time. The
observer costs about 1-2 us per recorded op on the CPU (under 1% of a forward of
the claims' GPT, 59 ops in about 14 ms).
"""
from __future__ import annotations

import time
from collections import defaultdict

from .. import checkpoint as _ckpt

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


class ForwardOpTimer:
    """Forward time per layer type of each step (an autograd observer): ``begin()``
    before the forward, ``end()`` after it; ``steps`` holds one {type: seconds} per step."""

    def __init__(self, backend):
        self.backend = backend
        self.steps = []
        self._current = None
        self._last = 0.0
        # the CPU computes synchronously: no device to wait for, one call less per op
        self._sync = None if backend.name == "cpu" else backend.synchronize

    def _now(self):
        if self._sync is not None:
            self._sync()
        return time.perf_counter()

    def begin(self):
        self._current = defaultdict(float)
        self._last = self._now()

    def on_forward(self, node):
        if self._current is None or _ckpt.is_recomputing():
            return
        now = self._now()
        self._current[_TYPE_OF.get(type(node).__name__, "other")] += now - self._last
        self._last = now

    def end(self):
        if self._current is not None:
            self.steps.append(dict(self._current))
        self._current = None


def group_by_type(fwd_steps, key_bwd, counter, repeats) -> list[dict]:
    """Rows per layer type, in :data:`ORDER`: forward and backward time records, the
    backward/forward time ratio (median of per-step ratios, with its interval), the
    FLOPs and their ratio, and each type's share of the step's forward + backward time.

    ``fwd_steps``: :attr:`ForwardOpTimer.steps`; ``key_bwd``: (layer, op) -> backward
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
    lines = ["", f"per layer type (forward: time between recorded ops){'':<2}"
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
