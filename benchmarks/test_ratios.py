"""Backward/forward ratios of MLPs, measured beside the analytic figure.

The chapter's rule: backward costs about 2x forward. For a Linear layer the FLOPs
say exactly 2x (dX and dW, each as large as the forward matmul), except the first
layer, whose input needs no gradient (1x); a wide first layer (784-256-10) pulls
the ratio toward 1. The timed ratio adds what FLOPs do not see: memory-bound
elementwise ops, gradient accumulation, the engine.

For each MLP (ReLU, float32, cross-entropy, CPU): measured time ratio (profile,
median over repeats), counted FLOP ratio (from the Functions), analytic FLOP ratio
(dp.estimate), and the optimizer step (Adam) beside them.
Run: ``python -m pytest benchmarks/test_ratios.py -s``.
"""
from __future__ import annotations

import numpy as np
import pytest

import dlprimer as dp
import dlprimer.nn as nn
import dlprimer.nn.functional as F
from dlprimer import optim
from _measure_util import QUICK, blas_threads

CASES = [([784, 256, 10], 128), ([784, 1024, 1024, 10], 256),
         ([256, 1024, 1024, 256], 128) if QUICK else ([1024, 4096, 4096, 1024], 512)]
REPEATS = 5 if QUICK else 10


@pytest.mark.parametrize("sizes,batch", CASES, ids=lambda v: "-".join(map(str, v)) if isinstance(v, list) else f"b{v}")
def test_backward_forward_ratio(benchmark, sizes, batch):
    rng = np.random.default_rng(0)
    dp.manual_seed(0)
    with dp.use_backend("cpu"), blas_threads():
        net = nn.MLP(sizes)
        opt = optim.Adam(net.parameters(), lr=1e-3)
        x = dp.tensor(rng.standard_normal((batch, sizes[0])).astype("float32"))
        y = dp.tensor(rng.integers(0, sizes[-1], batch))
        rep = benchmark.pedantic(
            lambda: dp.profiler.profile(net, F.cross_entropy, (x, y), optimizer=opt, warmup=2,
                                        repeats=REPEATS),
            rounds=1, iterations=1)
    est = dp.estimate(sizes, batch, optimizer="adam")
    t = rep.total
    name = "-".join(map(str, sizes))
    print(f"\nMLP {name}, batch {batch}")
    print(rep.table())
    print(f"bwd/fwd: measured time {t['time_ratio']:.2f}, counted FLOPs {t['flop_ratio']:.3f}, "
          f"analytic FLOPs {est.flop_ratio:.3f}; step (Adam) {t['step']['median'] * 1e3:.2f} ms; "
          f"{t['flops_per_s'] / 1e9:.1f} GFLOP/s")
    benchmark.extra_info.update(
        mlp=name, batch=batch, time_ratio=t["time_ratio"], flop_ratio=t["flop_ratio"],
        analytic_flop_ratio=est.flop_ratio, forward_s=t["forward"]["median"],
        backward_s=t["backward"]["median"], step_s=t["step"]["median"],
        gflops_per_s=t["flops_per_s"] / 1e9)
    # the Functions' counts and the estimator agree (the loss's few FLOPs aside)
    assert t["fwd_flops"] == pytest.approx(est.fwd_flops, rel=1e-3)
    assert t["bwd_flops"] == pytest.approx(est.bwd_flops, rel=1e-3)
    assert rep.memory["split"]["optimizer"] == 8 * est.params
