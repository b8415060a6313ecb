"""The layers beyond the MLP through the device code path (issue 19, point 4).

On the fake device (``tests/_fake_device.py``: NumPy memory posing as device memory,
refusing plain NumPy arrays, counting host syncs) a training step of the SmallCNN and
of the GPT, and forward + backward of MultiheadAttention with masks, Embedding, Conv2d,
the pools and autocast, give the CPU backend's values and gradients, mix no NumPy
array into a device op, and read nothing back from the device.
"""
import numpy as np
import pytest

import dlprimer as dp
import dlprimer.nn.functional as F
from dlprimer import nn, optim

from _fake_device import DeviceArray, installed


@pytest.fixture
def dev(monkeypatch):
    with installed(monkeypatch) as d:
        yield d


def _twins(make, seed):
    """The same module on the CPU and on the fake device (weights copied)."""
    dp.manual_seed(seed)
    cpu = make()
    on_dev = make()
    on_dev.load_state_dict(cpu.state_dict())
    return cpu, on_dev.to("cuda")


def _close(a, b, rtol=1e-5, atol=1e-6):
    a = a.numpy() if hasattr(a, "numpy") else a
    b = b.numpy() if hasattr(b, "numpy") else b
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
                               rtol=rtol, atol=atol)


def _train_steps(model, loss_of, opt, n):
    losses = []
    for _ in range(n):
        opt.zero_grad()
        loss = loss_of(model)
        loss.backward()
        opt.step()
        losses.append(loss)
    return losses


def _compare_training(cpu, on_dev, loss_cpu, loss_dev, make_opt, steps=3, rtol=1e-4):
    """``steps`` optimizer steps on both backends: equal losses, gradients and weights, and
    no host sync in any step after the first (which creates the optimizer state)."""
    oc, od = make_opt(cpu.parameters()), make_opt(on_dev.parameters())
    lc = _train_steps(cpu, loss_cpu, oc, 1)
    ld = _train_steps(on_dev, loss_dev, od, 1)
    before = DeviceArray.syncs
    lc += _train_steps(cpu, loss_cpu, oc, steps)
    ld += _train_steps(on_dev, loss_dev, od, steps)
    syncs = DeviceArray.syncs - before
    assert syncs == 0, f"{syncs} host syncs in {steps} training steps on the device"
    assert all(isinstance(l.data, DeviceArray) for l in ld)
    for a, b in zip(lc, ld):
        _close(a, b, rtol=rtol)
    for (n, p), q in zip(cpu.named_parameters(), on_dev.parameters()):
        assert isinstance(q.data, DeviceArray), n
        _close(p.grad, q.grad, rtol=rtol, atol=1e-5)
        _close(p, q, rtol=rtol, atol=1e-6)


def test_smallcnn_training_step_on_the_device(dev, rng):
    cpu, on_dev = _twins(lambda: nn.SmallCNN(channels=(4, 8), hidden=16), int(rng.integers(1 << 30)))
    x = rng.standard_normal((6, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 6)
    xc, yc = dp.tensor(x), dp.tensor(y)
    xd, yd = xc.to("cuda"), yc.to("cuda")
    _compare_training(cpu, on_dev, lambda m: F.cross_entropy(m(xc), yc),
                      lambda m: F.cross_entropy(m(xd), yd),
                      lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9))


def test_gpt_training_step_on_the_device(dev, rng):
    vocab = 13
    cpu, on_dev = _twins(lambda: nn.GPT(vocab, block_size=8, n_layer=2, n_head=2, n_embd=16),
                         int(rng.integers(1 << 30)))
    ids = rng.integers(0, vocab, (3, 9))
    xc, yc = dp.tensor(ids[:, :-1]), dp.tensor(ids[:, 1:])
    xd, yd = xc.to("cuda"), yc.to("cuda")
    _compare_training(cpu, on_dev, lambda m: m.loss(xc, yc), lambda m: m.loss(xd, yd),
                      lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9))   # Adam would amplify rounding of ~0 gradients


def _fwd_bwd(fn, arrays, device):
    ts = [dp.tensor(a, requires_grad=a.dtype.kind == "f") for a in arrays]
    if device:
        ts = [t.to("cuda").detach().requires_grad_(t.requires_grad) for t in ts]
    out = fn(*ts)
    out = out[0] if isinstance(out, tuple) else out
    w = dp.tensor(np.cos(np.arange(out.size)).reshape(out.shape).astype(np.float32))
    (out * (w.to("cuda") if device else w)).sum().backward()
    return out, [t.grad for t in ts if t.requires_grad]


def _compare_op(make, arrays, rtol=1e-5, seed=0):
    """forward + backward of module ``make()`` (or a function when ``make`` returns one)
    on both backends: equal outputs and input and weight gradients, no host sync."""
    dp.manual_seed(seed)
    mc = make()
    md = make()
    if isinstance(mc, nn.Module):
        md.load_state_dict(mc.state_dict())
        md = md.to("cuda")
    oc, gc = _fwd_bwd(mc, arrays, False)
    before = DeviceArray.syncs
    od, gd = _fwd_bwd(md, arrays, True)
    assert DeviceArray.syncs == before, f"{DeviceArray.syncs - before} host syncs"
    assert isinstance(od.data, DeviceArray)
    _close(oc, od, rtol=rtol)
    for a, b in zip(gc, gd):
        if a is None:                        # an input the op does not read
            assert b is None
            continue
        assert isinstance(b.data, DeviceArray)
        _close(a, b, rtol=rtol, atol=1e-5)
    if isinstance(mc, nn.Module):
        for (n, p), q in zip(mc.named_parameters(), md.parameters()):
            _close(p.grad, q.grad, rtol=rtol, atol=1e-5)


class _Attention(nn.Module):
    """MultiheadAttention called as a layer of a model calls it, with one of the masks."""

    def __init__(self, e, h, mask):
        super().__init__()
        self.mha, self.mask = nn.MultiheadAttention(e, h), mask

    def forward(self, q, kv):
        if isinstance(self.mask, str):       # "causal"
            return self.mha(q, q, q, is_causal=True)[0]
        m = None if self.mask is None else dp.tensor(self.mask).to(q.backend.name)
        return self.mha(q, kv, kv, attn_mask=m)[0]


@pytest.mark.parametrize("mask", ["none", "causal", "bool", "float", "per-head"])
def test_multihead_attention_with_masks_on_the_device(dev, rng, mask):
    L, S, N, E, H = 5, 6, 2, 8, 2
    masks = {"none": None, "causal": "causal", "bool": np.triu(np.ones((L, S), bool), 2),
             "float": rng.standard_normal((L, S)).astype(np.float32),
             "per-head": np.triu(np.ones((N * H, L, S), bool), 3)}
    q = rng.standard_normal((L, N, E)).astype(np.float32)
    kv = rng.standard_normal((S, N, E)).astype(np.float32)
    _compare_op(lambda: _Attention(E, H, masks[mask]), [q, kv], seed=int(rng.integers(1 << 30)))


@pytest.mark.parametrize("case", ["embedding", "conv2d", "maxpool", "avgpool", "flatten"])
def test_layers_on_the_device(dev, rng, case):
    x = rng.standard_normal((3, 2, 7, 7)).astype(np.float32)
    makes = {
        "conv2d": lambda: nn.Conv2d(2, 4, 3, stride=2, padding=1),
        "maxpool": lambda: nn.MaxPool2d(3, stride=2, padding=1),
        "avgpool": lambda: nn.AvgPool2d(2),
        "flatten": lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(75, 4)),
    }
    if case == "embedding":
        _compare_op(lambda: nn.Embedding(9, 5), [rng.integers(0, 9, (4, 6))])
    else:
        _compare_op(makes[case], [x], seed=int(rng.integers(1 << 30)))


def test_sdpa_with_dropout_draws_the_same_mask_on_the_device(dev, rng):
    q, k, v = (rng.standard_normal((2, 3, 5, 4)).astype(np.float32) for _ in range(3))

    def sdpa():
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.3)
    _compare_op(sdpa, [q, k, v])


def test_embedding_index_check_is_deferred_on_the_device(dev, rng):
    emb = nn.Embedding(9, 5).to("cuda")
    idx = dp.tensor(np.array([[1, -1, 3]])).to("cuda")   # -1: out of range, yet a valid gather
    before = DeviceArray.syncs
    emb(idx).sum().backward()
    assert DeviceArray.syncs == before                   # no host read inside the step
    with pytest.raises(IndexError, match=r"index -1 is out of range for a table of 9 rows"):
        dp.check_deferred()
    with dp.eager_checks(), pytest.raises(IndexError, match=r"index 9 is out of range"):
        emb(dp.tensor(np.array([9])).to("cuda"))


@pytest.mark.parametrize("low", ["bfloat16", "float16"])
def test_gpt_autocast_step_on_the_device(dev, rng, low):
    vocab = 11
    cpu, on_dev = _twins(lambda: nn.GPT(vocab, block_size=6, n_layer=1, n_head=2, n_embd=8),
                         int(rng.integers(1 << 30)))
    ids = rng.integers(0, vocab, (2, 7))
    xc, yc = dp.tensor(ids[:, :-1]), dp.tensor(ids[:, 1:])
    xd, yd = xc.to("cuda"), yc.to("cuda")

    def loss(x, y):
        def f(m):
            with dp.autocast(low):
                return m.loss(x, y)
        return f
    _compare_training(cpu, on_dev, loss(xc, yc), loss(xd, yd),
                      lambda ps: optim.SGD(ps, lr=0.1), steps=2, rtol=2e-2)
    assert all(p.dtype == np.float32 for p in on_dev.parameters())   # float32 master weights
