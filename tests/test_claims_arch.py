"""The claims where they live: backward_2x on three architectures, backward_memory,
scaling_table, adam_1b, and checkpointing / GELU on the Transformer."""
import json
import os
import subprocess
import sys

import pytest

import dlprimer as dp
from dlprimer import claims as C
from dlprimer import claims_arch as A

TINY = C.SIZES["tiny"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("kind", A.ARCHS)
def test_arch_workloads_run(kind):
    model, loss_fn, batch, label = A.arch_workload(kind, dp.get_backend(), TINY)
    loss = loss_fn(model(batch[0]), batch[1])
    assert loss.size == 1 and label


def test_backward_2x_on_three_architectures():
    c = C.claim_backward(dp.get_backend(), TINY, models=A.ARCHS)
    for k in A.ARCHS:
        f = c.figures[f"time_ratio {k}"]
        assert f["ci95"][0] <= f["median"] <= f["ci95"][1]
        assert 1.0 < c.figures[f"flop_ratio {k}"]["median"] <= 2.5
        assert f"{k}: bwd/fwd time" in c.measured and k.upper() + ":" in c.why
        assert c.data["architectures"][k]["layer_types"]
    assert c.figures["time_ratio"] == c.figures["time_ratio mlp"]
    assert c.verdict in ("holds", "differs", "inconclusive")


def test_backward_memory_is_backward_peak_over_forward_peak():
    c = C.check_claims("cpu", "tiny", only=["backward_memory"], models=["mlp", "gpt"])[0]
    for k in ("mlp", "gpt"):
        p = c.data["architectures"][k]
        assert p["ratio"] == pytest.approx(p["backward_peak"] / p["forward_peak"])
        assert p["backward_peak"] > p["forward_peak"] > p["params"]
        assert c.figures[f"ratio {k}"]["median"] == p["ratio"]
    lo, hi = A.BACKWARD_MEMORY_BAND
    inside = [lo <= c.data["architectures"][k]["ratio"] <= hi for k in ("mlp", "gpt")]
    assert c.verdict == ("holds" if all(inside) else "differs")


def test_scaling_table_fits_table_3_1():
    c = C.check_claims("cpu", "tiny", only=["scaling_table"])[0]
    fits = c.data["fits"]
    assert fits["params"]["width"] == pytest.approx(2, abs=0.05)
    assert fits["params"]["depth"] == pytest.approx(1, abs=1e-9)
    assert fits["params"]["batch"] == pytest.approx(0, abs=1e-9)
    assert fits["flops"]["batch"] == pytest.approx(1, abs=1e-9)
    assert c.data["grads_equal_params"]
    assert c.verdict == "holds", c.reason


def test_scaling_point_in_a_fresh_process_meters_no_kernel_load():
    """The first point of a fresh process used to count the JIT's kernel loading as
    activations (16 MB for a 20 KB stack); it must read what a second call reads."""
    code = ("import json; from dlprimer.claims_arch import _scaling_point; "
            "from dlprimer.backend import backend_for; be = backend_for('cpu'); "
            "print(json.dumps([_scaling_point(be, 48, 2, 16)['activations'] for _ in range(2)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert out.returncode == 0, out.stderr
    first, second = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0 < first < 1 << 20 and abs(first - second) <= 0.1 * second


def test_scaling_table_differs_when_a_law_breaks(monkeypatch):
    real = A._scaling_point

    def cubic_params(backend, w, depth, batch):
        r = real(backend, w, depth, batch)
        r["params"] = w ** 3 * depth
        return r
    monkeypatch.setattr(A, "_scaling_point", cubic_params)
    c = C.check_claims("cpu", "tiny", only=["scaling_table"])[0]
    assert c.verdict == "differs" and "params vs width" in c.reason


def test_adam_1b_measures_16_bytes_and_mixed_precision_beside():
    c = C.check_claims("cpu", "tiny", only=["adam_1b"])[0]
    per = c.data["per_dtype"]
    assert per["float32"]["state_per_param"] == pytest.approx(16.0, abs=0.01)
    low = [d for d in per if d != "float32"]
    assert low and per[low[0]]["state_per_param"] == pytest.approx(16.0, abs=0.01)
    assert c.figures["bytes_1b"]["median"] == pytest.approx(16e9, rel=1e-3)
    assert c.verdict == "differs" and "12 GB" in c.claimed and "autocast" in c.measured


def test_gelu_and_checkpointing_on_the_transformer():
    c = C.claim_gelu(dp.get_backend(), TINY, models=("mlp", "gpt"))
    r = c.figures["step_ratio transformer"]
    assert r["ci95"][0] <= r["median"] <= r["ci95"][1] and "GPT" in c.measured
    k = C.claim_checkpointing(dp.get_backend(), TINY, models=("gpt",))
    assert 0 < k.figures["memory_saved transformer"]["median"] < 1
    assert "Transformer" in k.measured and k.data["transformer"]["tradeoff"]["rows"]
    assert k.data["rows"]  # the MLP's rows, which the report plots, are still there


def test_relu_gpt_has_no_gelu():
    from dlprimer.autograd import observe
    from dlprimer.profiler import FlopCounter
    model, loss_fn, (x, y), _ = A._gpt_with("relu", dp.get_backend(), TINY)
    cnt = FlopCounter()
    with observe(cnt):
        loss_fn(model(x), y)
    ops = {op for (_, op) in cnt.fwd}
    assert "ReLU" in ops and "GELU" not in ops


def test_unknown_models_are_refused():
    with pytest.raises(ValueError, match="unknown model"):
        C.check_claims("cpu", "tiny", only=["adam_bytes"], models=["rnn"])
