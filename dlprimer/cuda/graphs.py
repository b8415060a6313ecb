"""CUDAGraph, the ``graph`` capture block, and the captured training step."""
from __future__ import annotations

import contextlib

from ..backend import backend_for, get_backend
from ..tensor import Tensor


class CUDAGraph:
    """A captured CUDA graph (``torch.cuda.CUDAGraph``): fill it with
    ``with dp.cuda.graph(g): ...``, run it again with ``g.replay()``.

    The memory the captured block allocated stays with the graph (a replay writes it),
    so tensors created inside the block are the graph's static outputs.
    """

    def __init__(self):
        self._graph = None
        self._backend = None
        self._keep_alive: list = []

    def replay(self):
        """Launch the captured work again on the current stream (no host sync)."""
        if self._graph is None:
            raise RuntimeError("CUDAGraph.replay(): nothing captured yet; capture first with "
                               "`with dp.cuda.graph(g): ...`")
        self._backend.graph_replay(self._graph)

    def reset(self):
        """Drop the graph and the memory it kept."""
        self._graph = None
        self._keep_alive = []

    @property
    def captured(self) -> bool:
        return self._graph is not None


@contextlib.contextmanager
def graph(cuda_graph: CUDAGraph, backend=None):
    """Capture the block's device work into ``cuda_graph`` (``torch.cuda.graph``). The
    block runs once as Python but executes nothing on the device until ``replay()``.
    Warm up first (run the block eagerly once or twice): kernels compile and the
    memory pool grows outside the capture. Raises RuntimeError on the CPU backend."""
    if not isinstance(cuda_graph, CUDAGraph):
        raise TypeError(f"dp.cuda.graph() takes a dp.cuda.CUDAGraph, got "
                        f"{type(cuda_graph).__name__}")
    if cuda_graph.captured:
        raise RuntimeError("this CUDAGraph already holds a capture; call reset() first")
    be = backend_for(backend) if backend is not None else get_backend()
    keep: list = []
    with be.graph_capture(keep) as result:
        yield cuda_graph
    cuda_graph._graph, cuda_graph._backend, cuda_graph._keep_alive = result["graph"], be, keep


def _check_graphable(model, optimizer):
    if not getattr(optimizer, "graph_safe", False):
        raise ValueError(
            f"{type(optimizer).__name__} cannot be replayed from a CUDA graph: its update "
            "kernels take step-dependent scalars (Adam's bias corrections) that a graph "
            "would freeze at capture; use SGD or LARS, or train without cuda_graph")
    from ..nn import Dropout
    for m in model.modules():
        if isinstance(m, Dropout) and m.training and m.p > 0:
            raise ValueError(
                "a CUDA graph would replay the same dropout mask at every step (the "
                "random key is fixed at capture); train without cuda_graph or set p=0")


class GraphedStep:
    """One training step (zero_grad, forward, loss, backward, optional clipping,
    optimizer step) captured once and replayed: ``out, loss = step(x, y)``.

    The first ``warmup`` calls run eagerly (compiling kernels, creating optimizer state);
    the next one captures and replays; later calls copy ``x, y`` into the static input
    buffers and replay. ``out`` and ``loss`` are static: read them before the next call.
    A batch of another shape runs eagerly. Changing a learning rate after capture is
    refused (the graph holds the old one).
    """

    def __init__(self, model, loss_fn, optimizer, clip=None, warmup=2):
        _check_graphable(model, optimizer)
        self.model, self.loss_fn, self.optimizer, self.clip = model, loss_fn, optimizer, clip
        self.warmup = int(warmup)
        self.calls = 0
        self.graph = CUDAGraph()
        self._static = None  # (x array, y array, out Tensor, loss Tensor)
        self._lrs = None

    def _eager(self, x, y):
        from ..nn.utils import clip_grad_norm_
        self.optimizer.zero_grad()
        out = self.model(x)
        loss = self.loss_fn(out, y)
        loss.backward()
        if self.clip is not None:
            clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        return out, loss

    def _lr_now(self):
        return tuple(float(g["lr"]) for g in self.optimizer.param_groups)

    def __call__(self, x: Tensor, y: Tensor):
        self.calls += 1
        if self.calls <= self.warmup:
            return self._eager(x, y)
        if self._static is None:
            be = x.backend
            sx, sy = be.xp.array(x.data, copy=True), be.xp.array(y.data, copy=True)
            with graph(self.graph, be):
                out, loss = self._eager(Tensor(sx, False, be), Tensor(sy, False, be))
            self._static = (sx, sy, out, loss)
            self._lrs = self._lr_now()
            self.graph.replay()
            return out, loss
        sx, sy, out, loss = self._static
        if x.shape != sx.shape or y.shape != sy.shape:
            return self._eager(x, y)
        if self._lr_now() != self._lrs:
            raise RuntimeError(
                f"the learning rate changed from {self._lrs} to {self._lr_now()} after the "
                "CUDA graph captured the step; a graphed step keeps the captured one (no "
                "schedulers with cuda_graph)")
        sx[...] = x.data
        sy[...] = y.data
        self.graph.replay()
        return out, loss


def make_graphed_step(model, loss_fn, optimizer, clip=None, warmup=2) -> GraphedStep:
    """A :class:`GraphedStep` for ``fit(..., cuda_graph=True)`` and hand-written loops.
    Raises ValueError for what a graph cannot replay (Adam's step count, dropout) and
    RuntimeError at capture on the CPU backend."""
    return GraphedStep(model, loss_fn, optimizer, clip=clip, warmup=warmup)
