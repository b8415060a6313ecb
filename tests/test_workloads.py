"""The workloads behind ``--model mlp|cnn|gpt``: each model with its data and loss,
the corpus as a windowed data set, a checkpointed GPT that gives the plain GPT's
gradients."""
import numpy as np
import pytest

import dlprimer as dp
from dlprimer.data import load_text
from dlprimer.workloads import GPT_SIZE, MODELS, build_gpt, build_workload, token_loss


@pytest.mark.parametrize("kind", MODELS)
def test_each_workload_runs_a_step_with_a_finite_loss(kind):
    w = build_workload(kind, seed=0)
    x, y = (dp.tensor(a[:8]) for a in w.train.arrays)
    loss = w.loss_fn(w.model(x), y)
    assert loss.size == 1 and np.isfinite(loss.item())
    loss.backward()
    assert all(p.grad is not None for p in w.model.parameters())
    assert w.describe and w.config["model"] == kind


def test_workload_shapes():
    cnn = build_workload("cnn")
    assert cnn.train.arrays[0].shape[1:] == (1, 8, 8)
    gpt = build_workload("gpt")
    x, y = gpt.train.arrays
    assert x.shape[1] == y.shape[1] == GPT_SIZE["block_size"] and x.dtype == np.int64
    assert gpt.config["unigram_loss"] > 0
    with pytest.raises(ValueError, match="unknown model 'rnn'"):
        build_workload("rnn")


def test_corpus_windows_are_next_character_pairs(rng):
    c = load_text()
    block = int(rng.integers(4, 40))
    ds = c.windows("train", block, stride=3)
    x, y = ds.arrays
    assert x.shape == y.shape and x.shape[1] == block
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    np.testing.assert_array_equal(x[1], c.train[3:3 + block])
    assert len(ds) == len(range(0, len(c.train) - block, 3))
    with pytest.raises(ValueError, match="block_size"):
        c.windows("train", 0)
    with pytest.raises(ValueError, match="stride"):
        c.windows("val", 8, stride=-1)
    with pytest.raises(ValueError, match="split must be"):
        c.windows("test", 8)


def test_token_loss_is_the_gpt_loss(rng):
    g = dp.nn.GPT(20, block_size=8, n_layer=1, n_head=2, n_embd=8)
    idx, tgt = (dp.tensor(rng.integers(0, 20, (3, 8))) for _ in range(2))
    assert abs(token_loss(20)(g(idx), tgt).item() - g.loss(idx, tgt).item()) < 1e-6


def test_checkpointed_gpt_gives_the_plain_gradients(rng):
    vocab = 30
    plain = build_gpt(vocab, n_layer=2, n_embd=16, n_head=2, block_size=8)
    ck = build_gpt(vocab, checkpoint_segments=2, n_layer=2, n_embd=16, n_head=2, block_size=8)
    ck.load_state_dict(plain.state_dict())
    for m in (plain, ck):
        m.to("float64")
    idx, tgt = (dp.tensor(rng.integers(0, vocab, (2, 8))) for _ in range(2))
    for m in (plain, ck):
        token_loss(vocab)(m(idx), tgt).backward()
    for a, b in zip(plain.parameters(), ck.parameters()):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-9, atol=1e-12)
    ck.eval()
    with dp.no_grad():
        np.testing.assert_allclose(ck(idx).numpy(), plain(idx).numpy(), rtol=1e-12)
