"""Layers beyond the MLP against PyTorch: its state dicts load and give its outputs
and gradients; bad shapes raise naming them. (The models' training targets are in
test_models.py, which needs no PyTorch.)"""
import numpy as np
import pytest

import dlprimer as dp
from dlprimer import nn

torch = pytest.importorskip("torch")


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
