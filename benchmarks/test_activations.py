"""CPU activations, forward + backward on 16M float32 elements (chapter section 03:
"GELU costs more compute than ReLU" -- by how much, and what fusing buys).

For each activation four peers run in the same session (one pytest-benchmark
group each):
  copy   -- ``y = x.copy(); gx = gy.copy()``: the memory traffic floor;
  naive  -- the textbook NumPy expression for forward and for backward (x*x*x, not
            x**3, so the peer is not handicapped by a slow pow);
  unfused -- the same backend calls under ``dp.fusion(False)`` (primitive ops);
  fused  -- the backend's fused ops (blocked in-place ufunc chains).
The fused entry records ``fused/copy`` and ``naive/fused`` (best-of-rounds times) in
its extra_info, and the module prints the table at the end.

    python -m pytest benchmarks/test_activations.py --benchmark-only
    DLPRIMER_BENCH_QUICK=1 python -m pytest benchmarks/test_activations.py   # small sizes (CI)
"""
import math
import os

import numpy as np
import pytest
import scipy.special

import dlprimer as dp
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
_best: dict = {}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return (rng.standard_normal(N, dtype=np.float32) * 2,
            rng.standard_normal(N, dtype=np.float32))


@pytest.fixture(scope="module", autouse=True)
def _ratio_table(request):
    yield
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"CPU activation fwd+bwd, {N} float32 elements (best of {ROUNDS}):"]
    for name in CASES:
        t = {k: _best.get((name, k)) for k in ("copy", "naive", "fused")}
        if None in t.values():
            continue
        lines.append(f"  {name:9s} copy {t['copy'] * 1e3:8.2f} ms  naive {t['naive'] * 1e3:8.2f} ms  "
                     f"fused {t['fused'] * 1e3:8.2f} ms  fused/copy {t['fused'] / t['copy']:6.2f}  "
                     f"naive/fused {t['naive'] / t['fused']:5.2f}")
    if tr is not None and len(lines) > 1:
        cap = request.config.pluginmanager.get_plugin("capturemanager")
        with cap.global_and_fixture_disabled():
            tr.write_line("")
            for line in lines:
                tr.write_line(line)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("peer", ["copy", "naive", "unfused", "fused"])  # copy runs first
def test_activation_fwd_bwd(benchmark, data, name, peer):
    x, gy = data
    naive, fused = CASES[name]
    fn = {"copy": _copy, "naive": naive, "fused": fused, "unfused": _unfused(fused)}[peer]
    y, gx = fn(x, gy)
    assert y.dtype == np.float32 and gx.dtype == np.float32 and y.shape == x.shape
    if peer != "copy":
        ry, rgx = fused(x[:4096], gy[:4096])
        ny, ngx = naive(x[:4096], gy[:4096])
        np.testing.assert_allclose(ry, ny, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rgx, ngx, rtol=1e-5, atol=1e-5)
    benchmark.group = f"activation {name} fwd+bwd ({N} float32)"
    benchmark.extra_info.update(elements=N, bytes_per_array=x.nbytes)
    benchmark.pedantic(fn, args=(x, gy), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    if benchmark.stats is None:  # --benchmark-disable: the body ran once, untimed
        return
    _best[(name, peer)] = benchmark.stats.stats.min
    if peer == "fused" and (name, "copy") in _best:
        benchmark.extra_info["fused_over_copy"] = _best[(name, "fused")] / _best[(name, "copy")]
        if (name, "naive") in _best:
            benchmark.extra_info["naive_over_fused"] = _best[(name, "naive")] / _best[(name, "fused")]
