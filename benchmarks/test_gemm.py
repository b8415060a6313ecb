"""The GEMMs of the large MLP (784-1024-1024-10, batch 256) through dlprimer's MKL path,
NumPy's OpenBLAS and PyTorch, one thread each, as paired medians (issue 18).

For each layer (in -> out) three float32 products, in the layouts dlprimer's Linear uses:
forward ``x @ W.T``, weight gradient ``gy.T @ x``, input gradient ``gy @ W``. Each row times
``blas.mkl_matmul`` (A) against ``numpy.matmul`` and against ``torch.matmul`` (B), interleaved
A B, B A, ... in this process; the figure is the median of per-pair ratios A/B with its ~95%
interval (``test_cpu_kernels.paired``), recorded in ``extra_info`` and printed (``-s``).
``test_mlp_step_blas`` times the MLP SGD steps of ``test_cpu_kernels`` (the same models,
batch and peers) with dlprimer's products on MKL and on NumPy's BLAS in the same process
(switched between calls through ``DLPRIMER_BLAS``), paired against each other and each
against PyTorch. Reported, not asserted. Skipped without the ``mkl`` wheel (extra ``mkl``).
``python benchmarks/test_gemm.py`` prints the table; ``DLPRIMER_BENCH_QUICK=1`` shrinks it.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench import QUICK, tag  # noqa: E402
from test_cpu_kernels import MLPS, PAIRS, _inner as mlp_inner, mlp_peers, paired  # noqa: E402

from dlprimer.backend import blas  # noqa: E402

BATCH = 16 if QUICK else 256
LAYERS = [(64, 64), (64, 10)] if QUICK else [(784, 1024), (1024, 1024), (1024, 10)]
PRODUCTS = ("fwd x@W.T", "gW gy.T@x", "gx gy@W")


def operands(n_in, n_out, product, rng):
    """The two float32 operands of ``product`` for a Linear(n_in, n_out) at batch BATCH."""
    x = rng.standard_normal((BATCH, n_in), dtype=np.float32)
    w = rng.standard_normal((n_out, n_in), dtype=np.float32)
    gy = rng.standard_normal((BATCH, n_out), dtype=np.float32)
    return {"fwd x@W.T": (x, w.T), "gW gy.T@x": (gy.T, x), "gx gy@W": (gy, w)}[product]


def _inner(a, b):
    return 2 if QUICK else max(1, int(4e8 // (2 * a.shape[0] * a.shape[1] * b.shape[1])))


@pytest.mark.parametrize("product", PRODUCTS)
@pytest.mark.parametrize("layer", LAYERS, ids=[f"{i}-{o}" for i, o in LAYERS])
def test_gemm_mkl_vs_numpy_and_torch(benchmark, layer, product):
    if not blas.load():
        pytest.skip(f"MKL's GEMM is not in use: {blas.info()['why_not_mkl']}")
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    a, b = operands(*layer, product, np.random.default_rng())
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    got = blas.mkl_matmul(a, b)
    np.testing.assert_allclose(got, a @ b, rtol=1e-4, atol=1e-3 * np.sqrt(a.shape[1]))
    k = _inner(a, b)
    workload = f"gemm {layer[0]}->{layer[1]} b{BATCH} {product}"
    tag(benchmark, workload, "dlprimer", pairs=PAIRS, mkl=blas.info()["version"])
    for peer, fn in (("numpy", lambda: np.matmul(a, b)), ("torch", lambda: torch.matmul(ta, tb))):
        med, lo, hi = paired(lambda: blas.mkl_matmul(a, b), fn, inner=k)
        benchmark.extra_info[f"vs_{peer}"] = dict(median=med, lo=lo, hi=hi)
        print(f"\n{workload:36s} mkl / {peer:6s} {med:6.2f}x  [{lo:.2f}, {hi:.2f}]")
    benchmark.pedantic(lambda: blas.mkl_matmul(a, b), rounds=1, iterations=1)


def on_blas(choice, step):
    """``step`` run with dlprimer's products on ``choice`` ("mkl" or "numpy")."""
    def run():
        before = os.environ.get(blas.ENV)
        os.environ[blas.ENV] = choice
        blas.reset()
        try:
            step()
        finally:
            if before is None:
                del os.environ[blas.ENV]
            else:
                os.environ[blas.ENV] = before
            blas.reset()
    return run


@pytest.mark.parametrize("workload", list(MLPS))
def test_mlp_step_blas(benchmark, workload):
    if not blas.load():
        pytest.skip(f"MKL's GEMM is not in use: {blas.info()['why_not_mkl']}")
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    sizes, batch = MLPS[workload]
    if QUICK:
        sizes, batch = [min(s, 64) for s in sizes], min(batch, 16)
    mine, _, torch_step = mlp_peers(torch, sizes, batch)
    mkl_step, numpy_step = on_blas("mkl", mine), on_blas("numpy", mine)
    k = mlp_inner(sizes, batch)
    tag(benchmark, f"blas {workload}", "dlprimer", pairs=PAIRS, mkl=blas.info()["version"])
    for name, a, b in (("mkl / numpy-blas", mkl_step, numpy_step), ("mkl / torch", mkl_step, torch_step),
                       ("numpy-blas / torch", numpy_step, torch_step)):
        med, lo, hi = paired(a, b, inner=k)
        benchmark.extra_info[name] = dict(median=med, lo=lo, hi=hi)
        print(f"\n{workload:28s} dlprimer {name:18s} {med:6.2f}x  [{lo:.2f}, {hi:.2f}]")
    benchmark.pedantic(mkl_step, rounds=1, iterations=1)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-s", "--benchmark-disable", "-p", "no:cacheprovider"]
                         + sys.argv[1:]))
