"""CUDA graphs with PyTorch's names: ``dp.cuda.CUDAGraph``, ``with dp.cuda.graph(g): ...``,
``g.replay()``, and a whole training step captured once and replayed
(:func:`make_graphed_step`, what ``fit(..., cuda_graph=True)`` uses).

A graph records the kernels a block launches and replays them with one launch, so a
small model's step no longer pays Python and launch overhead per op. Replays run the
same kernels on the same memory: inputs go through static buffers, and nothing in the
captured block may read a device value on the host (the step's checks are device flags,
``dlprimer/backend/checks.py``). On the CPU every entry point raises a clear error.
"""
from .graphs import CUDAGraph, GraphedStep, graph, make_graphed_step

__all__ = ["CUDAGraph", "graph", "make_graphed_step", "GraphedStep"]
