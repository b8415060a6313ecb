"""Autograd observers: FLOPs per layer and op, backward time per op.

Both attach with :func:`dlprimer.autograd.observe`. FLOPs come from each node's
``flops()`` (forward, backward), which the Functions state for their own shapes:
a Linear layer's matmul is 2·B·in·out forward and 2·B·in·out backward per input
that needs a gradient (dX = dY W, dW = dY^T X), so 4·B·in·out, or 2·B·in·out for a
first layer whose input needs none. That is the chapter's "2x rule" counted, not
assumed.
"""
from __future__ import annotations

from collections import defaultdict

from .. import checkpoint as _ckpt


class LayerScope:
    """Which top-level layer is running: wrappers set ``current`` around a child's
    forward; nodes created meanwhile are booked to it."""

    def __init__(self, default="(model)"):
        self.current = default


class FlopCounter:
    """Counts forward and backward FLOPs of every recorded node, per (layer, op).

    A checkpointed segment's forward runs without a graph, so its nodes are seen only
    when it is recomputed in backward: their FLOPs are booked as forward (the work
    the forward did) and again under ``recompute`` (the extra pass). Each node gets a ``profiler_layer``
    attribute so a backward observer can book its time to the same layer.
    """

    def __init__(self, scope: LayerScope | None = None):
        self.scope = scope or LayerScope()
        self.reset()

    def reset(self):
        self.fwd = defaultdict(int)        # (layer, op) -> FLOPs
        self.bwd = defaultdict(int)
        self.recompute = defaultdict(int)
        self.count = defaultdict(int)

    def on_forward(self, node):
        layer = self.scope.current
        node.profiler_layer = layer
        f, b = node.flops()
        key = (layer, node.name)
        if _ckpt.is_recomputing():
            # the segment's forward ran under no_grad (no nodes recorded then): its
            # replay is the only place its forward FLOPs can be counted
            self.recompute[key] += f
            self.fwd[key] += f
        else:
            self.fwd[key] += f
            self.count[key] += 1
        self.bwd[key] += b

    def by_layer(self, table):
        out = defaultdict(int)
        for (layer, _), v in table.items():
            out[layer] += v
        return dict(out)

    @property
    def forward_total(self) -> int:
        return sum(self.fwd.values())

    @property
    def backward_total(self) -> int:
        return sum(self.bwd.values())


class BackwardTimer:
    """Self time of each node's backward (nested backward inside a checkpointed
    node is subtracted from it), summed per (layer, op) for one backward pass.

    Each node is timed by ``backend.timer()`` (which synchronises the device at both
    ends, so device time lands on the op that queued it; free on the CPU).
    """

    def __init__(self, backend):
        self.backend = backend
        self.reset()

    def reset(self):
        self.times = defaultdict(float)    # (layer, op) -> seconds
        self.calls = defaultdict(int)
        self._stack = []

    def on_backward_begin(self, node):
        t = self.backend.timer()
        self._stack.append([t, 0.0])
        t.__enter__()

    def on_backward_end(self, node):
        t, nested = self._stack.pop()
        t.__exit__(None, None, None)
        elapsed = t.elapsed
        key = (getattr(node, "profiler_layer", "(untracked)"), node.name)
        self.times[key] += elapsed - nested
        self.calls[key] += 1
        if self._stack:
            self._stack[-1][1] += elapsed

    def total(self) -> float:
        return sum(self.times.values())


class SavedTracker:
    """Bytes the graph holds in saved arrays, over time: each node adds its saved
    buffers when recorded (recomputed segments included) and drops them when its
    backward has run. ``peak`` is the activation memory of the step, counted on the
    real graph (distinct buffers; views counted once through their owner).
    Buffers of ``exclude`` (the parameters: a Linear keeps its weight for dX, but
    that is model state, not activation memory) are not counted.
    """

    def __init__(self, exclude=()):
        from .memory import buffer_ids
        self.skip = buffer_ids(exclude)
        self.live = {}     # buffer id -> [nbytes, references]
        self.current = 0
        self.peak = 0

    @staticmethod
    def _buffers(node):
        from .memory import _root
        for a in node.saved or ():
            if a is not None and hasattr(a, "nbytes"):
                yield _root(a)

    def _counted(self, node):
        return [r for r in self._buffers(node) if id(r) not in self.skip]

    def on_forward(self, node):
        for r in self._counted(node):
            e = self.live.get(id(r))
            if e is None:
                self.live[id(r)] = [int(r.nbytes), 1]
                self.current += int(r.nbytes)
                self.peak = max(self.peak, self.current)
            else:
                e[1] += 1

    def on_backward_end(self, node):
        for r in self._counted(node):
            e = self.live.get(id(r))
            if e is None:
                continue
            e[1] -= 1
            if e[1] == 0:
                self.current -= e[0]
                del self.live[id(r)]
