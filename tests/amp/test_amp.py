"""Mixed precision: autocast's dtype rules, float16 training with float32 master
weights, GradScaler step for step against PyTorch's, and the bfloat16 dtype."""
import numpy as np
import pytest

import dlprimer as dp
import dlprimer.nn.functional as F
from dlprimer import nn, optim
from dlprimer.amp import GradScaler


@pytest.mark.parametrize("low", ["float16", "bfloat16"])
def test_autocast_runs_products_low_and_the_rest_in_float32(backend, rng, low):
    lin = nn.Linear(6, 4, backend=backend)
    conv = nn.Conv2d(2, 3, 3, backend=backend)
    x = dp.tensor(rng.standard_normal((5, 6)).astype("float32"), backend=backend)
    img = dp.tensor(rng.standard_normal((2, 2, 5, 5)).astype("float32"), backend=backend)
    with dp.autocast(low):
        h = lin(x)
        assert h.dtype == dp.amp.autocast_dtype() == dp._dtype.as_dtype(low)
        assert (x @ dp.randn(6, 2, backend=backend)).dtype == h.dtype
        assert conv(img).dtype == h.dtype
        q = dp.randn(2, 3, 4, backend=backend)
        assert F.scaled_dot_product_attention(q, q, q).dtype == h.dtype
        half_fused = dp.get_backend().half_fused     # fused ops with float32 math inside
        for name in ("gelu", "silu", "relu", "leaky_relu", "elu", "sigmoid", "tanh"):
            want = h.dtype if name in half_fused else dp.float32
            assert getattr(F, name)(h).dtype == want, name    # half in, half out
        assert F.softmax(h).dtype == dp.float32
        assert F.layer_norm(h, (4,)).dtype == dp.float32
        loss = F.cross_entropy(h, dp.tensor([0, 1, 2, 3, 0], backend=backend))
        assert loss.dtype == dp.float32
    assert dp.amp.autocast_dtype() is None
    loss.backward()
    assert lin.weight.dtype == lin.weight.grad.dtype == dp.float32   # master weights stay float32
    ref = F.linear(x, lin.weight, lin.bias).numpy()
    tol = 2e-3 if low == "float16" else 2e-2
    np.testing.assert_allclose(np.asarray(h.numpy(), dtype=np.float32), ref, rtol=tol, atol=tol)


def test_autocast_gradients_match_float32_at_half_precision(rng):
    mlp = nn.MLP([8, 16, 3], activation="gelu")
    x = dp.tensor(rng.standard_normal((32, 8)).astype("float32"))
    y = dp.tensor(rng.integers(0, 3, 32))
    F.cross_entropy(mlp(x), y).backward()
    ref = [p.grad.numpy().copy() for p in mlp.parameters()]
    mlp.zero_grad()
    with dp.autocast("float16"):
        F.cross_entropy(mlp(x), y).backward()
    for p, r in zip(mlp.parameters(), ref):
        np.testing.assert_allclose(p.grad.numpy(), r, rtol=0, atol=3e-3 * np.abs(r).max() + 1e-4)


def test_autocast_bad_dtype_and_unsupported_backend(monkeypatch):
    with pytest.raises(ValueError, match="valid dtypes: float16, bfloat16"):
        with dp.autocast("float64"):
            pass
    monkeypatch.setattr(dp.get_backend(), "autocast_dtypes", ("float16",))
    with pytest.raises(ValueError, match="'bfloat16' is not supported on the 'cpu' backend; valid dtypes: float16"):
        with dp.autocast("bfloat16"):
            pass


def test_autocast_float16_mlp_training_converges_with_float32_params():
    from threadpoolctl import threadpool_limits
    from dlprimer.data import load_dataset
    split = load_dataset("digits", seed=0)
    (X, y), (Xv, yv) = split.train.arrays, split.val.arrays
    dp.manual_seed(0)
    model = nn.MLP([64, 64, 10])
    opt = optim.Adam(model.parameters(), lr=3e-3)
    scaler = GradScaler()
    losses = []
    with threadpool_limits(1, user_api="blas"):
        for epoch in range(6):
            perm = np.random.default_rng(epoch).permutation(len(X))
            for i in range(0, len(X), 64):
                b = perm[i:i + 64]
                with dp.autocast("float16"):
                    loss = F.cross_entropy(model(dp.tensor(X[b])), dp.tensor(y[b]))
                opt.zero_grad()
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                losses.append(loss.item())
    assert all(p.dtype == dp.float32 for p in model.parameters())
    assert np.mean(losses[-10:]) < 0.25 * np.mean(losses[:5])
    with dp.no_grad(), dp.autocast("float16"):
        acc = float((model(dp.tensor(Xv)).numpy().argmax(1) == yv).mean())
    assert acc > 0.93, acc


def _tiny():
    lin = nn.Linear(3, 2)
    return lin, optim.SGD(lin.parameters(), lr=0.1)


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_grad_scaler_skips_an_inf_step_and_halves_its_scale():
    lin, opt = _tiny()
    scaler = GradScaler()
    assert scaler.get_scale() == 65536.0
    before = [p.numpy().copy() for p in lin.parameters()]
    x = dp.tensor([[1.0, float("inf"), 0.0]])
    scaler.scale(lin(x).sum()).backward()
    assert scaler.step(opt) is None
    scaler.update()
    for p, b in zip(lin.parameters(), before):
        np.testing.assert_array_equal(p.numpy(), b)        # the step was skipped
    assert scaler.get_scale() == 32768.0
    opt.zero_grad()
    scaler.scale(lin(dp.tensor([[1.0, 2.0, 3.0]])).sum()).backward()
    scaler.step(opt)
    scaler.update()
    assert not np.allclose(lin.weight.numpy(), before[0])
    np.testing.assert_allclose(lin.weight.grad.numpy(), [[1, 2, 3], [1, 2, 3]])   # unscaled


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_grad_scaler_matches_torch_scale_sequence(rng):
    torch = pytest.importorskip("torch")
    lin, opt = _tiny()
    tlin = torch.nn.Linear(3, 2)
    topt = torch.optim.SGD(tlin.parameters(), lr=0.1)
    ours, theirs = GradScaler(growth_interval=3), torch.amp.GradScaler("cpu", growth_interval=3)
    lin.load_state_dict({k: v.detach().numpy() for k, v in tlin.state_dict().items()})
    for step in range(12):
        bad = rng.random() < 0.3
        xv = rng.standard_normal((4, 3)).astype("float32")
        if bad:
            xv[0, 0] = np.inf
        opt.zero_grad()
        topt.zero_grad()
        ours.scale(lin(dp.tensor(xv)).sum()).backward()
        theirs.scale(tlin(torch.tensor(xv)).sum()).backward()
        ours.step(opt)
        theirs.step(topt)
        ours.update()
        theirs.update()
        assert ours.get_scale() == theirs.get_scale(), step
        np.testing.assert_allclose(lin.weight.numpy(), tlin.weight.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_grad_scaler_step_checks_the_gradients_once(monkeypatch, rng):
    """scaler.step() unscales and checks the gradients itself, so the optimizer's own
    non-finite pass is skipped; after a user's unscale_() (and whatever came between, e.g.
    a clip) the optimizer checks again."""
    from dlprimer.optim.optimizer import Optimizer
    calls = []
    real = Optimizer._first_nonfinite
    monkeypatch.setattr(Optimizer, "_first_nonfinite",
                        staticmethod(lambda *a: calls.append(1) or real(*a)))
    lin, opt = _tiny()
    ref_lin, ref_opt = _tiny()
    ref_lin.load_state_dict(lin.state_dict())
    scaler = GradScaler()
    x = dp.tensor(rng.standard_normal((4, 3)).astype("float32"))
    scaler.scale(lin(x).sum()).backward()
    assert scaler.step(opt) is True and calls == []
    scaler.update()
    (ref_lin(x).sum()).backward()
    ref_opt.step()                       # the same step, unscaled and checked the plain way
    np.testing.assert_allclose(lin.weight.numpy(), ref_lin.weight.numpy(), rtol=1e-6)
    opt.zero_grad()
    scaler.scale(lin(x).sum()).backward()
    scaler.unscale_(opt)
    lin.weight.grad.data[0, 0] = np.nan  # a change after unscale_: the optimizer still sees it
    with pytest.raises(dp.optim.NonFiniteGradientError):
        scaler.step(opt)
    assert calls


def test_grad_scaler_misuse_raises():
    lin, opt = _tiny()
    scaler = GradScaler()
    scaler.scale(lin(dp.ones(1, 3)).sum()).backward()
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="already been called"):
        scaler.unscale_(opt)
    scaler.step(opt)
    scaler.update()
    with pytest.raises(RuntimeError, match="no unscale_"):
        scaler.update()
    with pytest.raises(ValueError, match="growth_factor must be > 1"):
        GradScaler(growth_factor=0.5)
    with pytest.raises(ValueError, match="init_scale must be a positive number"):
        GradScaler(init_scale=0)


def test_bfloat16_dtype(backend, rng):
    a = rng.standard_normal(100).astype("float32")
    t = dp.tensor(a, dtype="bfloat16", backend=backend)
    assert t.dtype == dp.bfloat16 and t.dtype.itemsize == 2 and dp._dtype.is_float(t.dtype)
    back = np.asarray(t.astype("float32").numpy())
    np.testing.assert_allclose(back, a, rtol=2 ** -8)      # 8 significant bits
    x = dp.tensor(a[:12].reshape(3, 4), requires_grad=True, backend=backend)
    y = x.astype("bfloat16").astype("float32").sum()
    y.backward()
    assert x.grad.dtype == dp.float32
    with pytest.raises(ValueError, match="bfloat16"):
        dp.tensor(a, dtype="bfloat8")


def _saved_activation_bytes(model, loss_fn, batch, monkeypatch, half_fused):
    from dlprimer.profiler import memory_by_precision
    monkeypatch.setattr(dp.get_backend(), "half_fused", half_fused)
    rows = memory_by_precision(model, loss_fn, batch, None, ("float32", "bfloat16"))
    return {r["dtype"]: r["split"]["activations"] for r in rows}


@pytest.mark.parametrize("arch", ["mlp", "gpt"])
def test_half_fused_ops_shrink_the_saved_activations_under_autocast(arch, monkeypatch, rng):
    """Measured with the allocator: with GELU and the cross-entropy on half inputs
    (backend.half_fused) the bytes saved for backward under bfloat16 autocast fall below
    what they are when those ops cast to float32 first (ReLU alone half: the old rule)."""
    from dlprimer.workloads import token_loss
    if arch == "mlp":
        model = nn.MLP([32, 256, 256, 10], activation="gelu")
        batch = (dp.tensor(rng.standard_normal((512, 32)).astype(np.float32)),
                 dp.tensor(rng.integers(0, 10, 512)))
        loss_fn = F.cross_entropy
    else:
        model = nn.GPT(30, block_size=16, n_layer=1, n_head=2, n_embd=32)
        batch = (dp.tensor(rng.integers(0, 30, (16, 16))), dp.tensor(rng.integers(0, 30, (16, 16))))
        loss_fn = token_loss(30)
    full = dp.get_backend().half_fused
    assert {"gelu", "cross_entropy"} <= full
    old = _saved_activation_bytes(model, loss_fn, batch, monkeypatch, frozenset({"relu"}))
    new = _saved_activation_bytes(model, loss_fn, batch, monkeypatch, full)
    assert new["float32"] == pytest.approx(old["float32"], rel=0.02)   # float32: unchanged
    assert new["bfloat16"] < 0.9 * old["bfloat16"], (old, new)


class _BiasGeluDropoutMLP(nn.Module):
    """Linear (no bias) -> bias+GELU -> dropout -> Linear: the two fused ops under test."""

    def __init__(self, hidden=256):
        super().__init__()
        self.fc1 = nn.Linear(32, hidden, bias=False)
        self.b1 = nn.Parameter(dp.zeros(hidden))
        self.drop = nn.Dropout(0.1)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x):
        return self.fc2(self.drop(F.bias_gelu(self.fc1(x), self.b1)))


def _bfloat16_row(model, batch, monkeypatch, half_fused):
    from dlprimer.profiler import memory_by_precision
    monkeypatch.setattr(dp.get_backend(), "half_fused", half_fused)
    return memory_by_precision(model, F.cross_entropy, batch, None, ("bfloat16",))[0]


def test_half_bias_gelu_and_dropout_shrink_activation_memory_under_autocast(monkeypatch, rng):
    """Measured with the allocator under bfloat16 autocast: with bias+GELU on half inputs
    the bytes saved for backward fall (it saved a float32 copy of x before); with dropout
    on half inputs too, the forward's peak falls by about dropout's float32 output (the
    next Linear saves a half copy either way, dropout itself saves nothing). Measured
    at this size: 1.00x that output with the JIT, 7.9x with the NumPy path (its float32
    dropout hashes the whole mask at once, the half one a block at a time)."""
    n, hidden = 256, 1024
    model = _BiasGeluDropoutMLP(hidden)
    batch = (dp.tensor(rng.standard_normal((n, 32)).astype(np.float32)),
             dp.tensor(rng.integers(0, 10, n)))
    full = dp.get_backend().half_fused
    assert {"bias_gelu", "dropout"} <= full
    old = _bfloat16_row(model, batch, monkeypatch, full - {"bias_gelu", "dropout"})
    mid = _bfloat16_row(model, batch, monkeypatch, full - {"dropout"})
    new = _bfloat16_row(model, batch, monkeypatch, full)
    assert new["split"]["activations"] < 0.8 * old["split"]["activations"], (old, new)
    assert mid["split"]["activations"] == pytest.approx(new["split"]["activations"], rel=0.01)
    drop_f32 = n * hidden * 4
    saved = mid["phases"]["forward"]["peak"] - new["phases"]["forward"]["peak"]
    assert saved > 0.75 * drop_f32, (drop_f32, mid["phases"], new["phases"])
