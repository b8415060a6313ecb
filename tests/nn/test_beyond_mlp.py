"""Layers beyond the MLP: PyTorch state dicts load and give PyTorch's outputs and
gradients, the models train (the CNN to >= 97% on held-out digits, the GPT below the
unigram baseline within 60 s), and bad shapes raise naming them."""
import time

import numpy as np
import pytest

import dlprimer as dp
import dlprimer.nn.functional as F
from dlprimer import nn, optim

torch = pytest.importorskip("torch")


@pytest.fixture
def one_blas_thread():
    """Training tests run NumPy's BLAS on one thread: on a shared, loaded machine an
    oversubscribed thread pool is 10x slower for these small matrices."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1, user_api="blas"):
        yield


def _load_torch(ours, theirs):
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})


def _np(t):
    return t.detach().numpy() if hasattr(t, "detach") else t.numpy()


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("mask", [None, "bool", "float", "causal", "per-head"])
def test_multihead_attention_loads_torch_state_dict(backend, rng, batch_first, mask):
    E, H, L, S, N = 12, 3, 5, 7, 2
    if mask == "causal":
        S = L
    tm = torch.nn.MultiheadAttention(E, H, batch_first=batch_first, dtype=torch.float64)
    with torch.no_grad():  # PyTorch zeroes the biases at init: make them count
        tm.in_proj_bias.normal_()
        tm.out_proj.bias.normal_()
    ours = nn.MultiheadAttention(E, H, batch_first=batch_first, dtype="float64")
    _load_torch(ours, tm)
    assert set(ours.state_dict()) == {"in_proj_weight", "in_proj_bias", "out_proj.weight",
                                      "out_proj.bias"}
    qs = (N, L, E) if batch_first else (L, N, E)
    ks = (N, S, E) if batch_first else (S, N, E)
    q, k, v = rng.standard_normal(qs), rng.standard_normal(ks), rng.standard_normal(ks)
    am = tam = None
    if mask == "bool":
        m = rng.random((L, S)) < 0.3
        m[:, 0] = False                       # True = masked out, as in PyTorch's MHA
        am, tam = dp.tensor(m), torch.tensor(m)
    elif mask == "float":
        m = rng.standard_normal((L, S))
        am, tam = dp.tensor(m), torch.tensor(m)
    elif mask == "causal":
        m = np.triu(np.ones((L, S), bool), 1)
        am, tam = None, torch.tensor(m)
    elif mask == "per-head":
        m = rng.standard_normal((N * H, L, S))
        am, tam = dp.tensor(m), torch.tensor(m)
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    dq, dk, dv = (dp.tensor(a, requires_grad=True) for a in (q, k, v))
    need = mask in (None, "float")
    ty, tw = tm(tq, tk, tv, attn_mask=tam, need_weights=need, is_causal=mask == "causal")
    y, w = ours(dq, dk, dv, attn_mask=am, need_weights=need, is_causal=mask == "causal")
    np.testing.assert_allclose(y.numpy(), _np(ty), rtol=1e-9, atol=1e-9)
    if need:
        np.testing.assert_allclose(w.numpy(), _np(tw), rtol=1e-9, atol=1e-9)
    else:
        assert w is None
    g = rng.standard_normal(ty.shape)
    ty.backward(torch.tensor(g))
    y.backward(dp.tensor(g))
    for a, b in ((dq, tq), (dk, tk), (dv, tv)):
        np.testing.assert_allclose(a.grad.numpy(), _np(b.grad), rtol=1e-8, atol=1e-9)
    for name, p in ours.named_parameters():
        tp = dict(tm.named_parameters())[name]
        np.testing.assert_allclose(p.grad.numpy(), _np(tp.grad), rtol=1e-8, atol=1e-9)


def test_multihead_attention_unbatched_and_float32(rng):
    E, H, L = 8, 2, 4
    tm = torch.nn.MultiheadAttention(E, H)
    ours = nn.MultiheadAttention(E, H)
    _load_torch(ours, tm)
    x = rng.standard_normal((L, E)).astype("float32")
    y, _ = ours(dp.tensor(x), dp.tensor(x), dp.tensor(x))
    ty, _ = tm(torch.tensor(x), torch.tensor(x), torch.tensor(x), need_weights=False)
    np.testing.assert_allclose(y.numpy(), _np(ty), rtol=1e-5, atol=1e-6)


def test_multihead_attention_bad_input():
    with pytest.raises(ValueError, match="num_heads 3 does not divide embed_dim 8"):
        nn.MultiheadAttention(8, 3)
    m = nn.MultiheadAttention(8, 2)
    x = dp.randn(4, 2, 8)
    with pytest.raises(ValueError, match=r"must end in embed_dim 8"):
        m(x, dp.randn(4, 2, 6), x)
    with pytest.raises(ValueError, match=r"attn_mask of shape \(3, 4\) must be \(L, S\) = \(4, 4\)"):
        m(x, x, x, attn_mask=dp.ones(3, 4, dtype="bool"))


@pytest.mark.parametrize("stride,padding,bias", [(1, 0, True), (2, 1, False), ((1, 2), (2, 0), True)])
def test_conv2d_loads_torch_state_dict(backend, rng, stride, padding, bias):
    tc = torch.nn.Conv2d(3, 5, (3, 2), stride=stride, padding=padding, bias=bias, dtype=torch.float64)
    ours = nn.Conv2d(3, 5, (3, 2), stride=stride, padding=padding, bias=bias, dtype="float64",
                     backend=backend)
    _load_torch(ours, tc)
    x = rng.standard_normal((2, 3, 9, 7))
    np.testing.assert_allclose(ours(dp.tensor(x, backend=backend)).numpy(),
                               _np(tc(torch.tensor(x))), rtol=1e-9, atol=1e-9)


def test_conv2d_default_init_is_torch_shaped(rng):
    m = nn.Conv2d(4, 6, 3)
    bound = 1 / np.sqrt(4 * 9)
    w = m.weight.numpy()
    assert w.shape == (6, 4, 3, 3) and np.abs(w).max() <= bound and w.std() > bound / 4
    assert np.abs(m.bias.numpy()).max() <= bound


def test_pool_flatten_embedding_modules(rng):
    x = dp.tensor(rng.standard_normal((2, 3, 6, 6)).astype("float32"))
    tx = torch.tensor(x.numpy())
    np.testing.assert_allclose(nn.MaxPool2d(2)(x).numpy(), torch.nn.MaxPool2d(2)(tx).numpy())
    np.testing.assert_allclose(nn.AvgPool2d(3, 1, 1)(x).numpy(),
                               torch.nn.AvgPool2d(3, 1, 1)(tx).numpy(), rtol=1e-6, atol=1e-6)
    assert nn.Flatten()(x).shape == (2, 108) and nn.Flatten(0, 1)(x).shape == (6, 6, 6)
    e = nn.Embedding(10, 4)
    te = torch.nn.Embedding(10, 4)
    _load_torch(e, te)
    idx = rng.integers(0, 10, (3, 5))
    np.testing.assert_allclose(e(dp.tensor(idx)).numpy(), _np(te(torch.tensor(idx))))
    with pytest.raises(ValueError, match="num_embeddings"):
        nn.Embedding(0, 4)


def test_transformer_block_and_gpt_shapes(rng):
    blk = nn.TransformerBlock(16, 4)
    assert blk.num_parameters() == 12 * 16 * 16 + 13 * 16
    x = dp.randn(2, 5, 16, requires_grad=True)
    y = blk(x)
    assert y.shape == (2, 5, 16)
    # causal: the first position's output does not depend on later positions
    x2 = x.numpy().copy()
    x2[:, 1:] += rng.standard_normal(x2[:, 1:].shape).astype("float32")
    np.testing.assert_allclose(blk(dp.tensor(x2)).numpy()[:, 0], y.numpy()[:, 0], rtol=1e-5, atol=1e-6)
    g = nn.GPT(30, block_size=8, n_layer=2, n_head=2, n_embd=16)
    idx = dp.tensor(rng.integers(0, 30, (3, 8)))
    assert g(idx).shape == (3, 8, 30)
    loss = g.loss(idx, idx)
    loss.backward()
    assert all(p.grad is not None for p in g.parameters())
    with pytest.raises(ValueError, match="sequence length 9 exceeds block_size 8"):
        g(dp.tensor(rng.integers(0, 30, (1, 9))))


def test_transformer_block_gradcheck(rng):
    blk = nn.TransformerBlock(8, 2)
    for p in blk.parameters():
        p.data = p.data.astype("float64")
    x = dp.tensor(rng.standard_normal((2, 4, 8)), requires_grad=True)
    assert dp.gradcheck(lambda x: blk(x), (x,))


def test_small_cnn_reaches_97_percent_on_digits(one_blas_thread):
    """SmallCNN(channels=(8, 16)), Adam with a one-cycle schedule, 8 epochs of batch 32:
    >= 97% on the 359 held-out digits (a fixed seed: the accuracy is the recipe's, and
    this run takes about 3 s)."""
    from dlprimer.data import load_digit_images
    split = load_digit_images(seed=0)
    (X, y), (Xv, yv) = split.train.arrays, split.val.arrays
    dp.manual_seed(0)
    model = nn.SmallCNN(channels=(8, 16))
    epochs, bs = 8, 32
    opt = optim.Adam(model.parameters(), lr=1e-2)
    sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=epochs * -(-len(X) // bs))
    order = np.random.default_rng(0)
    for _ in range(epochs):
        perm = order.permutation(len(X))
        for i in range(0, len(X), bs):
            b = perm[i:i + bs]
            loss = F.cross_entropy(model(dp.tensor(X[b])), dp.tensor(y[b]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with dp.no_grad():
        acc = float((model(dp.tensor(Xv)).numpy().argmax(1) == yv).mean())
    assert acc >= 0.97, acc


def test_gpt_beats_the_unigram_baseline_within_60s(one_blas_thread):
    """A 2-layer, 64-wide GPT on the bundled corpus: validation loss below the unigram
    baseline (character frequencies, no context) by 0.3 nats within 60 s on the CPU
    (typically a few seconds)."""
    from dlprimer.data import load_text
    corpus = load_text()
    base = corpus.unigram_loss()
    dp.manual_seed(0)
    model = nn.GPT(corpus.vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=64)
    opt = optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    train = corpus.batches("train", 16, 32, seed=0)
    vx, vy = (dp.tensor(a) for a in next(corpus.batches("val", 64, 32, seed=1)))
    t0 = time.perf_counter()
    best = float("inf")
    while time.perf_counter() - t0 < 60 and best >= base - 0.3:
        for _ in range(10):
            x, y = next(train)
            loss = model.loss(dp.tensor(x), dp.tensor(y))
            opt.zero_grad()
            loss.backward()
            opt.step()
        with dp.no_grad():
            best = min(best, model.loss(vx, vy).item())
    assert best < base - 0.3, (best, base, time.perf_counter() - t0)
