"""dlprimer.nn.functional activations, dropout and linear: gradients (float64
gradcheck), closed-form float32 references, stability at +-1e4, what each node
keeps, and argument errors."""
import math

import numpy as np
import pytest

import dlprimer as dp
import dlprimer.nn.functional as F

ACTIVATIONS = {
    "relu": F.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.2),
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "sigmoid": F.sigmoid,
    "tanh": F.tanh,
    "elu": lambda x: F.elu(x, 0.7),
    "softmax": F.softmax,
    "softmax_axis0": lambda x: F.softmax(x, axis=0),
    "log_softmax": F.log_softmax,
    "log_softmax_axis0": lambda x: F.log_softmax(x, axis=0),
}


def _away_from_kinks(a):
    """Keep finite differences off the kink at 0 of relu / leaky_relu / elu."""
    return np.where(np.abs(a) < 1e-3, 0.5, a)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_gradcheck(name, backend, rng):
    x = dp.tensor(_away_from_kinks(rng.standard_normal((4, 5)) * 2), dtype="float64",
                  requires_grad=True)
    assert dp.gradcheck(ACTIVATIONS[name], (x,))


def _erf_gelu(v):
    return 0.5 * v * (1 + math.erf(v / math.sqrt(2)))


def _tanh_gelu(v):
    return 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))


CLOSED_FORMS = {
    "relu": lambda v: max(v, 0.0),
    "leaky_relu": lambda v: v if v > 0 else 0.2 * v,
    "gelu": _erf_gelu,
    "gelu_tanh": _tanh_gelu,
    "silu": lambda v: v / (1 + math.exp(-v)),
    "sigmoid": lambda v: 1 / (1 + math.exp(-v)),
    "tanh": math.tanh,
    "elu": lambda v: v if v > 0 else 0.7 * (math.exp(v) - 1),
}


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_activation_float32_matches_closed_form(name, backend, rng):
    v = rng.standard_normal(300) * 4
    x = dp.tensor(v, dtype="float32")
    y = ACTIVATIONS[name](x)
    assert y.dtype == dp.float32
    ref = np.array([CLOSED_FORMS[name](float(a)) for a in x.numpy()])
    np.testing.assert_allclose(y.numpy(), ref, rtol=2e-6, atol=2e-6)


def test_gelu_exact_vs_tanh_differ_slightly(rng):
    x = dp.tensor(rng.standard_normal(1000) * 3)
    d = np.abs(F.gelu(x).numpy() - F.gelu(x, "tanh").numpy())
    assert 0 < d.max() < 1e-3


def test_softmax_matches_formula(backend, rng):
    v = rng.standard_normal((3, 6))
    for axis in (-1, 0):
        e = np.exp(v - v.max(axis=axis, keepdims=True))
        ref = e / e.sum(axis=axis, keepdims=True)
        np.testing.assert_allclose(F.softmax(dp.tensor(v, dtype="float32"), axis).numpy(), ref,
                                   rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(F.log_softmax(dp.tensor(v, dtype="float32"), axis).numpy(),
                                   np.log(ref), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_stable_at_1e4(name, backend):
    x = dp.tensor([[1e4, -1e4, 0.0, 3.0], [-1e4, -1e4, 1e4, 1e4]], requires_grad=True)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = ACTIVATIONS[name](x)
        (y * dp.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])).sum().backward()
    assert np.isfinite(y.numpy()).all()
    assert np.isfinite(x.grad.numpy()).all()


def test_sigmoid_and_softmax_saturate_exactly():
    x = dp.tensor([1e4, -1e4])
    np.testing.assert_array_equal(F.sigmoid(x).numpy(), [1.0, 0.0])
    np.testing.assert_array_equal(F.softmax(x).numpy(), [1.0, 0.0])
    np.testing.assert_allclose(F.log_softmax(x).numpy(), [0.0, -2e4])


def test_gradients_at_zero_follow_pytorch():
    x = dp.tensor([0.0, 0.0], requires_grad=True)
    F.relu(x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0, 0])
    x.grad = None
    F.leaky_relu(x, 0.1).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [0.1, 0.1])
    x.grad = None
    F.elu(x, 2.0).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 2.0])
    x.grad = None
    F.gelu(x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [0.5, 0.5])


@pytest.mark.parametrize("name,kept", [
    ("relu", "output"), ("sigmoid", "output"), ("tanh", "output"), ("gelu", "input"),
    ("silu", "input"), ("elu", "input"), ("leaky_relu", "input"), ("softmax", "output"),
    ("log_softmax", "output")])
def test_each_activation_keeps_one_array(name, kept, rng):
    x = dp.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    y = ACTIVATIONS[name](x)
    saved = [a for a in y.grad_fn.saved if a is not None]
    assert len(saved) == 1
    ref = y.data if kept == "output" else x.data
    assert saved[0] is ref or np.shares_memory(saved[0], ref)


def test_activation_flops_are_declared():
    from dlprimer.ops import activation as A
    for cls in (A.ReLU, A.LeakyReLU, A.ELU, A.GELU, A.BiasGELU, A.SiLU, A.Sigmoid, A.Tanh,
                A.Softmax, A.LogSoftmax, A.Dropout):
        assert cls.fwd_flops_per_elem > 0 and cls.bwd_flops_per_elem > 0, cls.__name__
    x = dp.randn(8, 16, requires_grad=True)
    exact, approx = F.gelu(x).grad_fn, F.gelu(x, "tanh").grad_fn
    exact.out_shape = approx.out_shape = (8, 16)
    assert exact.flops() == (5 * 128, 11 * 128)
    assert approx.flops()[0] > exact.flops()[0]


def test_bias_gelu_gradcheck_and_value(backend, rng):
    x = dp.tensor(rng.standard_normal((3, 4)), dtype="float64", requires_grad=True)
    b = dp.tensor(rng.standard_normal(4), dtype="float64", requires_grad=True)
    for approx in ("none", "tanh"):
        assert dp.gradcheck(lambda x, b: F.bias_gelu(x, b, approx), (x, b))
        np.testing.assert_allclose(F.bias_gelu(x, b, approx).numpy(),
                                   F.gelu(x + b, approx).numpy(), rtol=1e-14)
    with pytest.raises(ValueError, match="does not match"):
        F.bias_gelu(x, dp.tensor(np.ones(3)))


# -- dropout ---------------------------------------------------------------------------------
def test_dropout_gradcheck_with_fixed_key(rng):
    x = dp.tensor(rng.standard_normal((6, 7)), dtype="float64", requires_grad=True)

    def f(x):
        dp.manual_seed(11)  # the same mask on every evaluation
        return F.dropout(x, 0.4)
    assert dp.gradcheck(f, (x,))


def test_dropout_keeps_nothing_but_its_key(rng):
    x = dp.tensor(rng.standard_normal((50, 40)) + 3, requires_grad=True)
    y = F.dropout(x, 0.5)
    node = y.grad_fn
    assert node.saved is None and isinstance(node.key, tuple)
    y.sum().backward()
    # the gradient is the mask / (1 - p): exactly where y kept x
    np.testing.assert_array_equal(x.grad.numpy() != 0, y.numpy() != 0)
    np.testing.assert_allclose(x.grad.numpy()[y.numpy() != 0], 2.0)


def test_dropout_replays_after_restoring_rng_state(rng):
    x = dp.tensor(rng.standard_normal((20, 20)))
    b = dp.get_backend()
    state = b.get_rng_state()
    y1 = F.dropout(x, 0.3).numpy()
    y2 = F.dropout(x, 0.3).numpy()
    b.set_rng_state(state)
    y3 = F.dropout(x, 0.3).numpy()
    np.testing.assert_array_equal(y1, y3)
    assert (y1 != y2).any()


def test_dropout_identity_cases_and_p_one(rng):
    x = dp.tensor(rng.standard_normal((4, 4)), requires_grad=True)
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0) is x
    y = F.dropout(x, 1.0)
    assert not y.numpy().any()
    y.sum().backward()
    assert not x.grad.numpy().any()


def test_dropout_scale_preserves_mean():
    x = dp.ones(200_000)
    assert abs(F.dropout(x, 0.25).numpy().mean() - 1.0) < 0.01


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), "0.5"])
def test_dropout_bad_p(p):
    with pytest.raises(ValueError, match="dropout: p"):
        F.dropout(dp.ones(3), p)


# -- linear ----------------------------------------------------------------------------------
def test_linear_value_and_gradcheck(backend, rng):
    x = dp.tensor(rng.standard_normal((2, 3, 4)), dtype="float64", requires_grad=True)
    w = dp.tensor(rng.standard_normal((5, 4)), dtype="float64", requires_grad=True)
    b = dp.tensor(rng.standard_normal(5), dtype="float64", requires_grad=True)
    np.testing.assert_allclose(F.linear(x, w, b).numpy(), x.numpy() @ w.numpy().T + b.numpy(),
                               rtol=1e-12)
    assert dp.gradcheck(F.linear, (x, w, b))
    assert dp.gradcheck(lambda x, w: F.linear(x, w), (x, w))


def test_linear_node_keeps_only_what_backward_needs(rng):
    x = dp.tensor(rng.standard_normal((3, 4)))  # no gradient wanted for the input
    w = dp.tensor(rng.standard_normal((2, 4)), requires_grad=True)
    y = F.linear(x, w)
    saved_x, saved_w = y.grad_fn.saved
    assert saved_x is x.data and saved_w is None
    y.grad_fn.in_shapes, y.grad_fn.out_shape = ((3, 4), (2, 4), ()), (3, 2)
    assert y.grad_fn.flops() == (2 * 3 * 4 * 2, 2 * 3 * 4 * 2)


def test_linear_shape_errors():
    x = dp.ones(3, 4)
    with pytest.raises(ValueError, match=r"input of shape \(3, 4\) does not match weight of shape \(5, 3\)"):
        F.linear(x, dp.ones(5, 3))
    with pytest.raises(ValueError, match="weight must be 2-D"):
        F.linear(x, dp.ones(4))
    with pytest.raises(ValueError, match=r"bias of shape \(4,\)"):
        F.linear(x, dp.ones(5, 4), dp.ones(4))


# -- argument errors ---------------------------------------------------------------------------
def test_activation_argument_errors():
    x = dp.ones(2, 3)
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh'"):
        F.gelu(x, approximate="fast")
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        F.softmax(x, axis=2)
    with pytest.raises(ValueError, match="axis"):
        F.log_softmax(x, axis=-3)
    with pytest.raises(TypeError, match="floating-point"):
        F.gelu(dp.tensor([1, 2]))
    with pytest.raises(ValueError, match="negative_slope"):
        F.leaky_relu(x, "a")
    with pytest.raises(ValueError, match="alpha"):
        F.elu(x, float("inf"))
    with pytest.raises(TypeError, match="must be a Tensor"):
        F.silu(object())


def test_functional_accepts_array_likes():
    np.testing.assert_allclose(F.relu([-1.0, 2.0]).numpy(), [0.0, 2.0])
