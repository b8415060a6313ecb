"""The profiler's per-layer-type rows: every op booked to its type, FLOPs per type
adding up to the step's, forward and backward times and their paired ratio per type;
and the memory split under autocast, measured per precision."""
import numpy as np
import pytest

import dlprimer as dp
from dlprimer import nn, optim
from dlprimer.nn import functional as F
from dlprimer.profiler import LAYER_TYPES, format_precision_memory, layer_type, memory_by_precision


def test_layer_type_of_ops():
    assert layer_type("ScaledDotProductAttention") == "attention"
    assert layer_type("Conv2d") == "convolution"
    assert layer_type("Linear") == layer_type("MatMul") == "linear"
    assert layer_type("LayerNorm") == layer_type("BatchNorm") == "normalisation"
    assert layer_type("GELU") == layer_type("ReLU") == "activation"
    assert layer_type("Embedding") == "embedding"
    assert layer_type("Add") == layer_type("Reshape") == "other"
    assert set(LAYER_TYPES) >= {"attention", "convolution", "linear", "normalisation",
                                "activation", "embedding"}


def _gpt_batch(rng, vocab=23, n=3, t=8):
    ids = rng.integers(0, vocab, (n, t + 1))
    return dp.tensor(ids[:, :-1]), dp.tensor(ids[:, 1:])


def test_gpt_profile_has_every_transformer_layer_type(backend, rng):
    g = nn.GPT(23, block_size=8, n_layer=2, n_head=2, n_embd=16)
    rep = dp.profiler.profile(g, lambda lg, y: F.cross_entropy(lg.reshape(-1, 23), y.reshape(-1)),
                              _gpt_batch(rng), warmup=1, repeats=4, memory=False)
    rows = {r["type"]: r for r in rep.layer_types}
    assert {"attention", "linear", "normalisation", "activation", "embedding", "loss"} <= set(rows)
    # FLOPs per type add up to the step's counted FLOPs
    assert sum(r["fwd_flops"] for r in rows.values()) == rep.total["fwd_flops"]
    assert sum(r["bwd_flops"] for r in rows.values()) == rep.total["bwd_flops"]
    assert rows["linear"]["flop_ratio"] == pytest.approx(2.0, rel=0.05)
    assert rows["embedding"]["fwd_flops"] == 0 and rows["embedding"]["bwd_flops"] > 0
    fw = rows.pop("framework")     # outside every op: module Python, recording, the engine
    assert fw["fwd_flops"] == fw["bwd_flops"] == 0 and fw["ops"] == []
    assert fw["forward"]["n"] == 4 and fw["forward"]["min"] >= 0 and fw["backward"]["min"] >= 0
    for r in rows.values():
        assert r["forward"]["n"] == 4 and r["forward"]["median"] > 0
        if r["time_ratio"] is not None:
            lo, hi = r["time_ratio_ci95"]
            assert 0 < lo <= r["time_ratio"] <= hi
    assert sum(r["share"] for r in rows.values()) + fw["share"] == pytest.approx(1.0)
    # per-type forward times are a partition of (at most) the forward
    fwd_types = sum(r["forward"]["median"] for r in rows.values())
    assert fwd_types <= 1.5 * rep.total["forward"]["max"]
    text = rep.table()
    assert "per layer type" in text and "attention" in text
    assert rep.to_dict()["layer_types"] == rep.layer_types


def test_cnn_profile_books_convolution_and_pooling(backend, rng):
    m = nn.SmallCNN(channels=(4, 8), hidden=16)
    x = dp.tensor(rng.standard_normal((8, 1, 8, 8)).astype("float32"))
    y = dp.tensor(rng.integers(0, 10, 8))
    rep = dp.profiler.profile(m, F.cross_entropy, (x, y), warmup=1, repeats=3, memory=False)
    rows = {r["type"]: r for r in rep.layer_types}
    assert {"convolution", "pooling", "linear", "activation"} <= set(rows)
    assert rows["convolution"]["ops"] == ["Conv2d"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_memory_by_precision_measures_state_and_activations(backend, rng, dtype):
    """Adam's state is 16 bytes per parameter in every precision (float32 master weights);
    at a batch where activations dominate, autocast saves fewer activation bytes."""
    m = nn.MLP([64, 256, 256, 10])
    x = dp.tensor(rng.standard_normal((512, 64)).astype("float32"))
    y = dp.tensor(rng.integers(0, 10, 512))
    rows = memory_by_precision(m, F.cross_entropy, (x, y), optim.Adam(m.parameters()),
                               ("float32", dtype))
    f32, low = rows
    assert (f32["dtype"], low["dtype"]) == ("float32", dtype)
    n = m.num_parameters()
    for r in rows:
        assert r["state_per_param"] == pytest.approx(16.0, abs=0.01)
        assert r["split"]["params"] == 4 * n and r["peak"] >= sum(
            r["split"][k] for k in ("params", "grads", "optimizer"))
    assert f32["activation_ratio"] == 1.0 and low["activation_ratio"] < 1.0
    assert all(p.dtype == np.float32 for p in m.parameters())
    text = format_precision_memory(rows)
    assert dtype in text and "state bytes / parameter" in text


def test_memory_by_precision_skips_dtypes_the_backend_lacks(rng, monkeypatch):
    m = nn.Linear(4, 2)
    b = dp.get_backend()
    monkeypatch.setattr(type(b), "autocast_dtypes", ("bfloat16",))
    rows = memory_by_precision(m, F.mse_loss, (dp.randn(3, 4), dp.randn(3, 2)), None,
                               ("float32", "float16", "bfloat16"))
    assert [r["dtype"] for r in rows] == ["float32", "bfloat16"]
