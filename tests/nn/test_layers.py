"""Layers: Linear's default init, Sequential, MLP, BatchNorm1d running statistics,
LayerNorm, their gradients, and nn.init."""
import math

import numpy as np
import pytest

import dlprimer as dp
import dlprimer.nn.functional as F
from dlprimer import nn


# -- Linear -------------------------------------------------------------------------------------
def test_linear_default_init_bounds(backend):
    m = nn.Linear(400, 300)
    w, b = m.weight.numpy(), m.bias.numpy()
    bound = 1 / math.sqrt(400)
    assert w.shape == (300, 400) and b.shape == (300,)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    # U(-a, a) has standard deviation a / sqrt 3
    assert abs(w.std() - bound / math.sqrt(3)) < 0.02 * bound
    assert abs(w.mean()) < 0.02 * bound
    assert abs(np.abs(w).max() - bound) < 0.01 * bound


def test_linear_init_is_seeded():
    dp.manual_seed(3)
    a = nn.Linear(5, 4).weight.numpy()
    dp.manual_seed(3)
    b = nn.Linear(5, 4).weight.numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, nn.Linear(5, 4).weight.numpy())


def test_linear_module_gradcheck_and_no_bias(backend, rng):
    m = nn.Linear(4, 3, bias=False, dtype="float64")
    assert m.bias is None and [n for n, _ in m.named_parameters()] == ["weight"]
    x = dp.tensor(rng.standard_normal((2, 4)), dtype="float64", requires_grad=True)
    assert dp.gradcheck(lambda x, w: m(x), (x, m.weight))


def test_linear_bad_sizes():
    with pytest.raises(ValueError, match="in_features must be a non-negative int"):
        nn.Linear(2.5, 3)
    with pytest.raises(ValueError, match="out_features"):
        nn.Linear(2, -1)


# -- containers ------------------------------------------------------------------------------------
def test_sequential_indexing():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert len(seq) == 3 and isinstance(seq[1], nn.ReLU) and isinstance(seq[-1], nn.Linear)
    assert [type(m).__name__ for m in seq] == ["Linear", "ReLU", "Linear"]
    assert len(seq[:2]) == 2
    seq.append(nn.Sigmoid())
    assert seq(dp.randn(4, 2)).shape == (4, 1)
    with pytest.raises(IndexError, match="out of range for 4 layers"):
        seq[7]
    with pytest.raises(TypeError, match="is not a Module"):
        nn.Sequential(nn.ReLU(), lambda x: x)


@pytest.mark.parametrize("norm,expect", [
    (None, ["Linear", "GELU", "Dropout", "Linear", "GELU", "Dropout", "Linear"]),
    ("batch", ["Linear", "BatchNorm1d", "GELU", "Dropout", "Linear", "BatchNorm1d", "GELU",
               "Dropout", "Linear"]),
    ("layer", ["Linear", "LayerNorm", "GELU", "Dropout", "Linear", "LayerNorm", "GELU",
               "Dropout", "Linear"])])
def test_mlp_structure(norm, expect):
    m = nn.MLP([5, 8, 6, 3], activation="gelu", dropout=0.2, norm=norm)
    assert [type(x).__name__ for x in m] == expect
    assert m(dp.randn(4, 5)).shape == (4, 3)
    m.eval()
    assert m(dp.randn(4, 5)).shape == (4, 3)


def test_mlp_activation_choices():
    assert [type(x).__name__ for x in nn.MLP([2, 3, 1])] == ["Linear", "ReLU", "Linear"]
    assert isinstance(nn.MLP([2, 3, 1], activation=nn.Tanh)[1], nn.Tanh)
    assert nn.MLP([2, 3, 1], activation="gelu_tanh")[1].approximate == "tanh"
    for name in ("leaky_relu", "silu", "sigmoid", "elu"):
        assert nn.MLP([2, 3, 1], activation=name)(dp.randn(2, 2)).shape == (2, 1)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sizes=[3]), "at least two positive ints"),
    (dict(sizes=[3, 0, 2]), "at least two positive ints"),
    (dict(sizes=[3, 2], activation="swiglu"), "unknown activation 'swiglu'"),
    (dict(sizes=[3, 2], activation=3), "activation must be a name or a Module class"),
    (dict(sizes=[3, 2], norm="group"), "norm must be None, 'batch' or 'layer'"),
    (dict(sizes=[3, 2], dropout=1.2), "dropout must be a probability")])
def test_mlp_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nn.MLP(**kwargs)


def test_activation_modules_match_functional(rng):
    x = dp.tensor(rng.standard_normal((3, 4)))
    pairs = [(nn.ReLU(), F.relu), (nn.LeakyReLU(0.3), lambda t: F.leaky_relu(t, 0.3)),
             (nn.GELU("tanh"), lambda t: F.gelu(t, "tanh")), (nn.SiLU(), F.silu),
             (nn.Sigmoid(), F.sigmoid), (nn.Tanh(), F.tanh), (nn.ELU(0.5), lambda t: F.elu(t, 0.5)),
             (nn.Softmax(0), lambda t: F.softmax(t, 0)), (nn.LogSoftmax(), F.log_softmax),
             (nn.Identity(), lambda t: t), (nn.Dropout(0.3).eval(), lambda t: t)]
    for mod, fn in pairs:
        np.testing.assert_array_equal(mod(x).numpy(), fn(x).numpy())
    with pytest.raises(ValueError, match="Dropout: p must be a probability"):
        nn.Dropout(2)
    with pytest.raises(ValueError, match="approximate"):
        nn.GELU("fast")


# -- BatchNorm1d ----------------------------------------------------------------------------------
def test_batchnorm_running_stats_by_hand(backend, rng):
    bn = nn.BatchNorm1d(3, momentum=0.1)
    rm, rv = np.zeros(3), np.ones(3)
    for step in range(3):
        x = rng.standard_normal((8, 3)) * (step + 1) + step
        y = bn(dp.tensor(x, dtype="float32"))
        mu, var = x.mean(0), x.var(0)
        rm = 0.9 * rm + 0.1 * mu
        rv = 0.9 * rv + 0.1 * x.var(0, ddof=1)  # unbiased, as PyTorch keeps it
        np.testing.assert_allclose(y.numpy(), (x - mu) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(bn.running_mean.numpy(), rm, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(bn.running_var.numpy(), rv, rtol=1e-5)
    assert bn.num_batches_tracked.item() == 3
    bn.eval()
    x = rng.standard_normal((5, 3))
    y = bn(dp.tensor(x, dtype="float32"))
    np.testing.assert_allclose(y.numpy(), (x - rm) / np.sqrt(rv + 1e-5), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.running_mean.numpy(), rm, rtol=1e-5, atol=1e-6)  # unchanged
    assert bn.num_batches_tracked.item() == 3


def test_batchnorm_3d_input_statistics(rng):
    bn = nn.BatchNorm1d(2)
    x = rng.standard_normal((4, 2, 5))
    bn(dp.tensor(x, dtype="float32"))
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.1 * x.mean((0, 2)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(bn.running_var.numpy(), 0.9 + 0.1 * x.transpose(1, 0, 2).reshape(2, -1).var(1, ddof=1),
                               rtol=1e-5)


def test_batchnorm_matches_torch_if_installed(rng):
    torch = pytest.importorskip("torch")
    tb = torch.nn.BatchNorm1d(4, momentum=0.2).double()
    mb = nn.BatchNorm1d(4, momentum=0.2, dtype="float64")
    with torch.no_grad():
        tb.weight.copy_(torch.tensor(rng.standard_normal(4)))
        tb.bias.copy_(torch.tensor(rng.standard_normal(4)))
    mb.load_state_dict({k: v.numpy() for k, v in tb.state_dict().items()})
    for _ in range(3):
        x = rng.standard_normal((6, 4)) * 2 + 1
        xt = torch.tensor(x, requires_grad=True)
        xm = dp.tensor(x, requires_grad=True)
        yt, ym = tb(xt), mb(xm)
        g = rng.standard_normal((6, 4))
        yt.backward(torch.tensor(g))
        ym.backward(g)
        np.testing.assert_allclose(ym.numpy(), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(xm.grad.numpy(), xt.grad.numpy(), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(mb.weight.grad.numpy(), tb.weight.grad.numpy(), rtol=1e-10)
        tb.zero_grad()
        mb.zero_grad()
    for k, v in tb.state_dict().items():
        np.testing.assert_allclose(mb.state_dict()[k].numpy(), v.numpy(), rtol=1e-12, err_msg=k)
    tb.eval(), mb.eval()
    x = rng.standard_normal((3, 4))
    np.testing.assert_allclose(mb(dp.tensor(x)).numpy(), tb(torch.tensor(x)).detach().numpy(), rtol=1e-10)


@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradcheck(shape, training, backend, rng):
    x = dp.tensor(rng.standard_normal(shape), dtype="float64", requires_grad=True)
    w = dp.tensor(rng.standard_normal(3) + 1, dtype="float64", requires_grad=True)
    b = dp.tensor(rng.standard_normal(3), dtype="float64", requires_grad=True)
    rm = dp.tensor(rng.standard_normal(3), dtype="float64")
    rv = dp.tensor(rng.uniform(0.5, 2, 3), dtype="float64")
    # running stats are passed only in eval mode, so repeated evaluations are identical
    fn = (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True)) if training else \
        (lambda x, w, b: F.batch_norm(x, rm, rv, w, b, training=False))
    assert dp.gradcheck(fn, (x, w, b))


def test_batch_norm_errors():
    bn = nn.BatchNorm1d(3)
    with pytest.raises(ValueError, match=r"more than one value per channel, got input of shape \(1, 3\)"):
        bn(dp.randn(1, 3))
    with pytest.raises(ValueError, match=r"running_mean of shape \(3,\) does not match 4 channels"):
        bn(dp.randn(5, 4))
    with pytest.raises(ValueError, match=r"expected \(N, C\) or \(N, C, L\) input"):
        bn(dp.randn(5))
    with pytest.raises(ValueError, match="evaluation mode needs running_mean"):
        F.batch_norm(dp.randn(4, 3), training=False)
    with pytest.raises(ValueError, match="num_features must be a positive int"):
        nn.BatchNorm1d(0)


def test_batchnorm_without_running_stats_uses_batch_in_eval(rng):
    bn = nn.BatchNorm1d(2, track_running_stats=False, affine=False).eval()
    x = rng.standard_normal((6, 2))
    np.testing.assert_allclose(bn(dp.tensor(x)).numpy(), (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5),
                               rtol=1e-10)
    assert list(bn.state_dict()) == []


# -- LayerNorm -----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,norm", [((4, 5), (5,)), ((2, 3, 4), (3, 4))])
def test_layer_norm_formula_and_gradcheck(shape, norm, backend, rng):
    x = rng.standard_normal(shape) * 3 + 1
    ln = nn.LayerNorm(norm, dtype="float64")
    ln.weight.data[...] = rng.standard_normal(norm)
    ln.bias.data[...] = rng.standard_normal(norm)
    axes = tuple(range(len(shape) - len(norm), len(shape)))
    ref = (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + 1e-5)
    ref = ref * ln.weight.numpy() + ln.bias.numpy()
    xt = dp.tensor(x, requires_grad=True)
    np.testing.assert_allclose(ln(xt).numpy(), ref, rtol=1e-10, atol=1e-12)
    assert dp.gradcheck(lambda x, w, b: ln(x), (xt, ln.weight, ln.bias))
    assert dp.gradcheck(lambda x: F.layer_norm(x, norm), (xt,))


def test_layer_norm_matches_torch_if_installed(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((3, 6))
    w, b = rng.standard_normal(6), rng.standard_normal(6)
    ref = torch.nn.functional.layer_norm(torch.tensor(x), (6,), torch.tensor(w), torch.tensor(b))
    mine = F.layer_norm(dp.tensor(x), 6, dp.tensor(w), dp.tensor(b))
    np.testing.assert_allclose(mine.numpy(), ref.numpy(), rtol=1e-10, atol=1e-12)


def test_layer_norm_errors():
    with pytest.raises(ValueError, match=r"does not end in normalized_shape \(4,\)"):
        F.layer_norm(dp.randn(3, 5), 4)
    with pytest.raises(ValueError, match=r"weight of shape \(3,\) does not match normalized_shape"):
        F.layer_norm(dp.randn(3, 5), 5, dp.ones(3))


# -- nn.init ---------------------------------------------------------------------------------------
def test_init_distributions(backend):
    w = dp.empty(500, 200)
    nn.init.kaiming_uniform_(w, nonlinearity="relu")
    bound = math.sqrt(2) * math.sqrt(3 / 200)
    assert np.abs(w.numpy()).max() <= bound and np.abs(w.numpy()).max() > 0.99 * bound
    nn.init.kaiming_normal_(w, nonlinearity="relu")
    assert abs(w.numpy().std() - math.sqrt(2 / 200)) < 0.02 * math.sqrt(2 / 200)
    nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
    assert abs(w.numpy().std() - math.sqrt(2 / 500)) < 0.02 * math.sqrt(2 / 500)
    nn.init.xavier_uniform_(w, gain=2.0)
    xb = 2.0 * math.sqrt(6 / 700)
    assert np.abs(w.numpy()).max() <= xb and np.abs(w.numpy()).max() > 0.99 * xb
    nn.init.xavier_normal_(w)
    assert abs(w.numpy().std() - math.sqrt(2 / 700)) < 0.02 * math.sqrt(2 / 700)
    arr = w.data
    nn.init.zeros_(w)
    assert w.data is arr and not w.numpy().any()
    nn.init.ones_(w)
    assert (w.numpy() == 1).all()


def test_init_errors_and_gain():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        nn.init.kaiming_uniform_(dp.empty(5))
    with pytest.raises(ValueError, match="mode must be 'fan_in' or 'fan_out'"):
        nn.init.kaiming_normal_(dp.empty(3, 3), mode="fan")
    with pytest.raises(ValueError, match="unknown nonlinearity"):
        nn.init.calculate_gain("swish")
    with pytest.raises(TypeError, match="floating-point"):
        nn.init.zeros_(dp.tensor([1, 2]))
    assert nn.init.calculate_gain("leaky_relu", math.sqrt(5)) == pytest.approx(math.sqrt(1 / 3))
    assert nn.init.calculate_gain("tanh") == pytest.approx(5 / 3)


def test_init_float64_and_float16():
    w = dp.empty(30, 20, dtype="float64")
    nn.init.kaiming_uniform_(w)
    assert w.dtype == dp.float64 and w.numpy().std() > 0
    h = dp.empty(30, 20, dtype="float16")
    nn.init.xavier_uniform_(h)
    assert h.dtype == dp.float16 and h.numpy().std() > 0
