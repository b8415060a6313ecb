"""The eager framework's cost per op: a chain of 1,000 elementwise ops on a tiny
tensor (4 float32), forward and backward, so the arithmetic is negligible and what
is timed is recording a node, running its backward and the engine's bookkeeping.

Peers in one group: ``dlprimer`` (``h = h * 1.001; h = h + 0.001`` repeated, then
``sum().backward()``), ``torch`` (the same chain on a 4-element CPU tensor) and
``numpy`` (the same 1,000 forward ops and the 1,000 backward ops written out with no
graph at all: the cost of the array calls themselves).

Target (issue 9): at most 10 us per op (forward + backward) for dlprimer.
"""
from __future__ import annotations

import numpy as np
import pytest

import dlprimer as dp
import statistics

from _bench import QUICK, group_samples, record_samples, tag

N_OPS = 100 if QUICK else 1000
ROUNDS = 5 if QUICK else 40
WORKLOAD = f"autograd chain of {N_OPS} ops on 4 floats"


def _autograd_chain(x):
    """The chain on leaf ``x``: the same code drives dlprimer and PyTorch tensors."""
    def chain():
        h = x
        for _ in range(N_OPS // 2):
            h = h * 1.001
            h = h + 0.001
        h.sum().backward()
        g = x.grad
        x.grad = None
        return g
    return chain


def _start():
    return np.random.default_rng(0).standard_normal(4).astype("float32")


def _dlprimer():
    return _autograd_chain(dp.tensor(_start(), requires_grad=True))


def _torch(torch):
    return _autograd_chain(torch.tensor(_start(), requires_grad=True))


def _numpy():
    x = _start()

    def chain():
        h = x
        for _ in range(N_OPS // 2):
            h = h * np.float32(1.001)
            h = h + np.float32(0.001)
        g = np.ones_like(h)
        for _ in range(N_OPS // 2):
            g = g * np.float32(1.001)
            g = g + np.float32(0.0)
        return g
    return chain


@pytest.mark.parametrize("peer", ["numpy", "torch", "dlprimer"])
def test_autograd_chain(benchmark, request, peer):
    torch = request.getfixturevalue("torch_cpu") if peer == "torch" else None
    fn = {"numpy": _numpy, "dlprimer": _dlprimer}.get(peer, lambda: _torch(torch))()
    expected = np.float32(1.001) ** (N_OPS // 2)
    np.testing.assert_allclose(np.asarray(fn()), np.full(4, expected), rtol=1e-3)

    def make_all():
        fns = {"numpy": _numpy(), "dlprimer": _dlprimer()}
        try:
            fns["torch"] = _torch(request.getfixturevalue("torch_cpu"))
        except pytest.skip.Exception:
            pass
        return fns
    rr = group_samples(benchmark, WORKLOAD, make_all, rounds=ROUNDS // 2, burst=2)
    tag(benchmark, WORKLOAD, peer, ops=N_OPS)
    record_samples(benchmark, rr, peer)
    if rr is not None:
        us = statistics.median(rr[peer]) / N_OPS * 1e6
        benchmark.extra_info.update(us_per_op=us)
        label = "autograd us/op" if peer == "dlprimer" else f"autograd us/op ({peer})"
        benchmark.extra_info["figures"] = [[label, us, "us"]]
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)
