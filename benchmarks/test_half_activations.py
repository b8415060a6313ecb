"""CPU GELU forward + backward on half-precision inputs (backend/half.py): float32 math
inside, in cache-sized blocks, one rounding on the store.

Peers, in one session on the same values (one pytest-benchmark group per dtype):
  float32   -- the backend's fused op on float32 arrays (what the half path calls per block);
  blocked   -- the backend's fused op on the half arrays (blocks converted to float32);
  wholecopy -- the whole tensor cast to float32, the float32 op, the result cast back;
  torch     -- PyTorch's CPU GELU and its backward on the half tensors (skipped without it).
The ratios blocked/float32 and wholecopy/blocked are medians of per-round ratios. The
memory figure is exact and checked in every run: the blocked path allocates the half
output and block-sized scratch, never a float32 copy of the tensor.

    python -m pytest benchmarks/test_half_activations.py --benchmark-only
"""
import statistics
import tracemalloc

import numpy as np
import pytest

import dlprimer as dp
from _bench import QUICK, group_samples, record_samples
from dlprimer.backend import backend_for

N = 1 << 16 if QUICK else 1 << 22
ROUNDS = 3 if QUICK else 9
cpu = backend_for("cpu")
DTYPES = {"bfloat16": dp.bfloat16, "float16": np.dtype(np.float16)}


def _arrays(dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(N, dtype=np.float32) * 2).astype(dtype)
    return x, rng.standard_normal(N, dtype=np.float32).astype(dtype)


def _peers(dtype, torch):
    x, gy = _arrays(dtype)
    x32, gy32 = x.astype(np.float32), gy.astype(np.float32)
    peers = {
        "float32": lambda: (cpu.gelu_forward(x32), cpu.gelu_backward(x32, gy32)),
        "blocked": lambda: (cpu.gelu_forward(x), cpu.gelu_backward(x, gy)),
        "wholecopy": lambda: (cpu.gelu_forward(x.astype(np.float32)).astype(dtype),
                              cpu.gelu_backward(x.astype(np.float32),
                                                gy.astype(np.float32)).astype(dtype)),
    }
    if torch is not None:
        tdt = torch.bfloat16 if dtype == dp.bfloat16 else torch.float16
        xt, gt = torch.from_numpy(x32).to(tdt), torch.from_numpy(gy32).to(tdt)
        peers["torch"] = lambda: (torch.nn.functional.gelu(xt),
                                  torch.ops.aten.gelu_backward(gt, xt))
    return peers


@pytest.fixture(scope="module")
def torch_or_none(request):
    """conftest's torch_cpu (PyTorch at NumPy's thread count), or None without PyTorch:
    the other peers run either way."""
    try:
        return request.getfixturevalue("torch_cpu")
    except pytest.skip.Exception:
        return None


@pytest.mark.parametrize("name", list(DTYPES))
@pytest.mark.parametrize("peer", ["float32", "blocked", "wholecopy", "torch"])
def test_half_gelu_fwd_bwd(benchmark, name, peer, torch_or_none):
    dtype, torch_cpu = DTYPES[name], torch_or_none
    if peer == "torch" and torch_cpu is None:
        pytest.skip("PyTorch is not installed")
    peers = _peers(dtype, torch_cpu)
    y, gx = peers[peer]()
    if peer in ("blocked", "wholecopy"):
        assert y.dtype == gx.dtype == dtype
        ry, rgx = peers["wholecopy" if peer == "blocked" else "blocked"]()
        np.testing.assert_array_equal(y.astype(np.float32), ry.astype(np.float32))
        np.testing.assert_array_equal(gx.astype(np.float32), rgx.astype(np.float32))
    benchmark.group = f"GELU fwd+bwd on {name} ({N} elements)"
    benchmark.extra_info.update(elements=N, workload=benchmark.group, peer=peer)
    rr = group_samples(benchmark, benchmark.group, lambda: _peers(dtype, torch_cpu),
                       rounds=ROUNDS, burst=1)
    record_samples(benchmark, rr, peer)
    benchmark.pedantic(peers[peer], rounds=ROUNDS, iterations=1, warmup_rounds=1)
    if rr is not None and peer == "blocked":
        benchmark.extra_info.update(
            blocked_over_float32=statistics.median(a / b for a, b in zip(rr["blocked"],
                                                                          rr["float32"])),
            wholecopy_over_blocked=statistics.median(a / b for a, b in zip(rr["wholecopy"],
                                                                            rr["blocked"])))


@pytest.mark.parametrize("name", list(DTYPES))
def test_half_gelu_allocates_no_float32_copy(name):
    x, gy = _arrays(DTYPES[name])
    cpu.gelu_backward(x[:64], gy[:64])                # compile / warm up
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        gx = cpu.gelu_backward(x, gy)
        extra = tracemalloc.get_traced_memory()[1] - base - gx.nbytes
    finally:
        tracemalloc.stop()
    assert extra < 4 * 4 * (1 << 14) + 65536, f"{extra} bytes beyond the half output"
