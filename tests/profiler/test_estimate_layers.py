"""dp.estimate for the layers beyond the MLP: its FLOPs equal the profiler's counts
from the Functions, and its saved-activation bytes the measured ones (float32 and
under autocast)."""
import pytest

import dlprimer as dp
import dlprimer.nn.functional as F
from dlprimer import nn, optim


def _gpt_loss(vocab):
    return lambda logits, t: F.cross_entropy(logits.reshape(-1, vocab), t.reshape(-1))


def _cases(rng):
    cnn = nn.SmallCNN(channels=(8, 16), hidden=32)
    # batch 256: the few KiB of small allocations the estimate does not name (and their
    # run-to-run wobble of ~5 KiB) stay well under 3% of the activations
    x = dp.tensor(rng.standard_normal((256, 1, 8, 8)).astype("float32"))
    y = dp.tensor(rng.integers(0, 10, 256))
    gpt = nn.GPT(23, block_size=32, n_layer=2, n_head=4, n_embd=64)
    idx = dp.tensor(rng.integers(0, 23, (8, 32)))
    # dropout between two activations: under autocast its half output (backend.half_fused)
    # reaches tanh half, which then saves a half output
    drop = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Dropout(0.3), nn.Tanh(),
                         nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    return [("cnn", cnn, F.cross_entropy, x, y), ("gpt", gpt, _gpt_loss(23), idx, idx),
            ("cnn_dropout", drop, F.cross_entropy, x, y)]


@pytest.mark.parametrize("low", [None, "bfloat16"])
@pytest.mark.parametrize("which", ["cnn", "gpt", "cnn_dropout"])
def test_estimate_matches_counted_flops_and_measured_activations(rng, which, low):
    name, model, loss_fn, x, y = [c for c in _cases(rng) if c[0] == which][0]
    opt = optim.Adam(model.parameters())
    if low is None:
        rep = dp.profiler.profile(model, loss_fn, (x, y), optimizer=opt, warmup=1, repeats=2)
    else:
        with dp.autocast(low):
            rep = dp.profiler.profile(model, loss_fn, (x, y), optimizer=opt, warmup=1, repeats=2)
    est = dp.estimate(model, x.shape, optimizer="adam", dtype=low or "float32")
    assert est.fwd_flops == rep.total["fwd_flops"]
    assert est.bwd_flops == rep.total["bwd_flops"]
    split = rep.memory["split"]
    assert est.param_bytes == split["params"] and est.optimizer_bytes == split["optimizer"]
    # within 3%: the measured figure also holds a few KiB the estimate does not name
    # (about 4.5 KiB per model and 9.5 KiB per Transformer block, whatever the sizes)
    assert est.activation_bytes == pytest.approx(split["activations"], rel=0.03)
    assert est.bytes_per_param == 16                      # autocast keeps float32 Adam state


def test_autocast_halves_the_products_saved_bytes(rng):
    gpt = nn.GPT(23, block_size=16, n_layer=2, n_head=2, n_embd=32)
    f32 = dp.estimate(gpt, (8, 16)).activation_bytes
    bf16 = dp.estimate(gpt, (8, 16), dtype="bfloat16").activation_bytes
    assert 0.55 < bf16 / f32 < 0.95      # norms, activations and softmax stay float32


def test_estimate_layers_bad_input():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        dp.estimate(nn.SmallCNN(), (16, 64))
    with pytest.raises(ValueError, match="input's shape"):
        dp.estimate(nn.SmallCNN(), 16)
    with pytest.raises(ValueError, match="inside nn.GPT only"):
        dp.estimate(nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 2)), (3,))
