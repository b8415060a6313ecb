"""CPU activations, forward + backward on 16M float32 elements (chapter section 03:
"GELU costs more compute than ReLU" -- by how much, and what fusing buys).

For each activation four peers run in the same session (one pytest-benchmark
group each):
  copy   -- ``y = x.copy(); gx = gy.copy()``: the memory traffic floor;
  naive  -- the textbook NumPy expression for forward and for backward (x*x*x, not
            x**3, so the peer is not handicapped by a slow pow);
  unfused -- the same backend calls under ``dp.fusion(False)`` (primitive ops);
  fused  -- the backend's fused ops (blocked in-place ufunc chains).
The peers take turns (``_bench.round_robin``, one call each per round); the fused
entry records ``fused/copy``, ``naive/fused`` and ``unfused/fused`` as medians of
per-round ratios in its extra_info, and the module prints the table at the end.

    python -m pytest benchmarks/test_activations.py --benchmark-only
    DLPRIMER_BENCH_QUICK=1 python -m pytest benchmarks/test_activations.py   # small sizes (CI)
"""
import math
import os
import statistics

import numpy as np
import pytest
import scipy.special

import dlprimer as dp
from _bench import group_samples, record_samples
from dlprimer.backend import backend_for

QUICK = os.environ.get("DLPRIMER_BENCH_QUICK") == "1"
N = 1 << 16 if QUICK else 1 << 24
ROUNDS = 3 if QUICK else 7
cpu = backend_for("cpu")
K = math.sqrt(2 / math.pi)
A = 0.044715


def _naive_gelu(x, gy):
    y = 0.5 * x * (1.0 + scipy.special.erf(x / math.sqrt(2.0)))
    gx = gy * (0.5 * (1.0 + scipy.special.erf(x / math.sqrt(2.0)))
               + x * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi))
    return y, gx


def _naive_gelu_tanh(x, gy):
    t = np.tanh(K * (x + A * x * x * x))
    y = 0.5 * x * (1.0 + t)
    t = np.tanh(K * (x + A * x * x * x))
    gx = gy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * K * (1.0 + 3.0 * A * x * x))
    return y, gx


def _naive_relu(x, gy):
    y = np.maximum(x, 0)
    return y, gy * (x > 0)


def _fused_gelu(x, gy):
    return cpu.gelu_forward(x), cpu.gelu_backward(x, gy)


def _fused_gelu_tanh(x, gy):
    return cpu.gelu_forward(x, "tanh"), cpu.gelu_backward(x, gy, "tanh")


def _fused_relu(x, gy):
    y = cpu.relu_forward(x)
    return y, cpu.relu_backward(y, gy)


def _copy(x, gy):
    return x.copy(), gy.copy()


def _unfused(fused):
    """The same fused call with ``dp.fusion(False)``: the backend's ops run as chains
    of primitive array ops (``dlprimer/unfused.py``), a temporary per operator."""
    def run(x, gy):
        with dp.fusion(False):
            return fused(x, gy)
    return run


CASES = {
    "gelu_erf": (_naive_gelu, _fused_gelu),
    "gelu_tanh": (_naive_gelu_tanh, _fused_gelu_tanh),
    "relu": (_naive_relu, _fused_relu),
}
_ratios: dict = {}


def _paired_median(a, b):
    return statistics.median(x / y for x, y in zip(a, b))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return (rng.standard_normal(N, dtype=np.float32) * 2,
            rng.standard_normal(N, dtype=np.float32))


@pytest.fixture(scope="module", autouse=True)
def _ratio_table(request):
    yield
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"CPU activation fwd+bwd, {N} float32 elements (medians of per-round ratios, "
             f"{ROUNDS} rounds, peers in turn):"]
    for name in CASES:
        r = _ratios.get(name)
        if r is None:
            continue
        lines.append(f"  {name:9s} fused/copy {r['fused_over_copy']:6.2f}  "
                     f"naive/fused {r['naive_over_fused']:5.2f}  unfused/fused {r['unfused_over_fused']:5.2f}")
    if tr is not None and len(lines) > 1:
        cap = request.config.pluginmanager.get_plugin("capturemanager")
        with cap.global_and_fixture_disabled():
            tr.write_line("")
            for line in lines:
                tr.write_line(line)


def _peers(name):
    naive, fused = CASES[name]
    return {"copy": _copy, "naive": naive, "unfused": _unfused(fused), "fused": fused}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("peer", ["copy", "naive", "unfused", "fused"])
def test_activation_fwd_bwd(benchmark, data, name, peer):
    x, gy = data
    naive, fused = CASES[name]
    fn = _peers(name)[peer]
    y, gx = fn(x, gy)
    assert y.dtype == np.float32 and gx.dtype == np.float32 and y.shape == x.shape
    if peer != "copy":
        ry, rgx = fused(x[:4096], gy[:4096])
        ny, ngx = naive(x[:4096], gy[:4096])
        np.testing.assert_allclose(ry, ny, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rgx, ngx, rtol=1e-5, atol=1e-5)
    benchmark.group = f"activation {name} fwd+bwd ({N} float32)"
    benchmark.extra_info.update(elements=N, bytes_per_array=x.nbytes)
    rr = group_samples(benchmark, benchmark.group,
                       lambda: {p: (lambda f=f: f(x, gy)) for p, f in _peers(name).items()},
                       rounds=ROUNDS, burst=1)
    record_samples(benchmark, rr, peer)
    benchmark.pedantic(fn, args=(x, gy), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    if rr is None:  # --benchmark-disable: the body ran once, untimed
        return
    r = {"fused_over_copy": _paired_median(rr["fused"], rr["copy"]),
         "naive_over_fused": _paired_median(rr["naive"], rr["fused"]),
         "unfused_over_fused": _paired_median(rr["unfused"], rr["fused"])}
    _ratios[name] = r
    if peer == "fused":
        benchmark.extra_info.update(r)
