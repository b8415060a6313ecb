"""The GEMMs of the large MLP (784-1024-1024-10, batch 256) through dlprimer's MKL path,
NumPy's OpenBLAS and PyTorch, one thread each, as paired medians (issue 18).

For each layer (in -> out) three float32 products, in the layouts dlprimer's Linear uses:
forward ``x @ W.T``, weight gradient ``gy.T @ x``, input gradient ``gy @ W``. Each row times
``blas.mkl_matmul`` (A) against ``numpy.matmul`` and against ``torch.matmul`` (B), interleaved
A B, B A, ... in this process; the figure is the median of per-pair ratios A/B with its ~95%
interval (``test_cpu_kernels.paired``), recorded in ``extra_info`` and printed (``-s``).
Reported, not asserted. Skipped without the ``mkl`` wheel (extra ``mkl``).
``python benchmarks/test_gemm.py`` prints the table; ``DLPRIMER_BENCH_QUICK=1`` shrinks it.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench import QUICK, tag  # noqa: E402
from test_cpu_kernels import PAIRS, paired  # noqa: E402

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


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-s", "--benchmark-disable", "-p", "no:cacheprovider"]
                         + sys.argv[1:]))
