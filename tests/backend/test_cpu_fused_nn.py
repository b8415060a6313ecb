"""The CPU backend's fused activation, dropout and softmax-cross-entropy ops against
plain NumPy references, across block boundaries, dtypes and memory layouts."""
import math

import numpy as np
import pytest
import scipy.special

from dlprimer.backend import backend_for

cpu = backend_for("cpu")
N_BIG = 2 * cpu._BLOCK + 7  # crosses two block boundaries


def _gelu(x):
    return 0.5 * x * (1 + scipy.special.erf(x / math.sqrt(2)))


def _gelu_tanh(x):
    k = math.sqrt(2 / math.pi)
    return 0.5 * x * (1 + np.tanh(k * (x + 0.044715 * x ** 3)))


def _dgelu(x):
    return 0.5 * (1 + scipy.special.erf(x / math.sqrt(2))) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def _dgelu_tanh(x):
    k = math.sqrt(2 / math.pi)
    t = np.tanh(k * (x + 0.044715 * x ** 3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x)


def _sig(x):
    return scipy.special.expit(x)


REFS = {
    "gelu": (lambda x: cpu.gelu_forward(x), lambda x, g: cpu.gelu_backward(x, g), _gelu, _dgelu),
    "gelu_tanh": (lambda x: cpu.gelu_forward(x, "tanh"), lambda x, g: cpu.gelu_backward(x, g, "tanh"),
                  _gelu_tanh, _dgelu_tanh),
    "silu": (cpu.silu_forward, cpu.silu_backward, lambda x: x * _sig(x),
             lambda x: _sig(x) * (1 + x * (1 - _sig(x)))),
    "leaky_relu": (lambda x: cpu.leaky_relu_forward(x, 0.1), lambda x, g: cpu.leaky_relu_backward(x, g, 0.1),
                   lambda x: np.where(x > 0, x, 0.1 * x), lambda x: np.where(x > 0, 1.0, 0.1)),
    "leaky_relu_steep": (lambda x: cpu.leaky_relu_forward(x, 3.0),
                         lambda x, g: cpu.leaky_relu_backward(x, g, 3.0),
                         lambda x: np.where(x > 0, x, 3.0 * x), lambda x: np.where(x > 0, 1.0, 3.0)),
    "elu": (lambda x: cpu.elu_forward(x, 1.5), lambda x, g: cpu.elu_backward(x, g, 1.5),
            lambda x: np.where(x > 0, x, 1.5 * np.expm1(np.minimum(x, 0))),
            lambda x: np.where(x > 0, 1.0, 1.5 * np.exp(np.minimum(x, 0)))),
}


@pytest.mark.parametrize("name", sorted(REFS))
@pytest.mark.parametrize("dtype,tol", [("float32", 2e-6), ("float64", 1e-13)])
@pytest.mark.parametrize("n", [1, 1000, N_BIG])
def test_fused_activation_matches_reference(name, dtype, tol, n, ):
    fwd, bwd, ref, dref = REFS[name]
    rng = np.random.default_rng()
    x = (rng.standard_normal(n) * 3).astype(dtype)
    gy = rng.standard_normal(n).astype(dtype)
    y = fwd(x)
    gx = bwd(x, gy)
    assert y.dtype == np.dtype(dtype) and gx.dtype == np.dtype(dtype)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y, ref(x64), rtol=tol * 4, atol=tol)
    np.testing.assert_allclose(gx, gy * dref(x64), rtol=tol * 4, atol=tol * 4)


@pytest.mark.parametrize("name", sorted(REFS))
def test_fused_activation_non_contiguous_and_shapes(name):
    fwd, bwd, ref, dref = REFS[name]
    rng = np.random.default_rng()
    base = rng.standard_normal((40, 30))
    x = base[::2, ::3]  # a strided view
    gy = np.broadcast_to(rng.standard_normal(10), x.shape)  # a broadcast gradient
    np.testing.assert_allclose(fwd(x), ref(x), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(bwd(x, gy), gy * dref(x), rtol=1e-12, atol=1e-14)
    assert fwd(np.empty((0, 3))).shape == (0, 3)
    assert fwd(np.asarray(0.5)).shape == ()


def test_activation_inputs_are_not_modified():
    x = np.random.default_rng().standard_normal(N_BIG).astype(np.float32)
    gy = np.ones_like(x)
    keep = x.copy()
    for fwd, bwd, _, _ in REFS.values():
        fwd(x)
        bwd(x, gy)
    np.testing.assert_array_equal(x, keep)


def test_gelu_rejects_unknown_approximation():
    with pytest.raises(ValueError, match="approximate"):
        cpu.gelu_forward(np.ones(3), "erf")
    with pytest.raises(ValueError, match="approximate"):
        cpu.gelu_backward(np.ones(3), np.ones(3), "fast")


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", [(3, 5), (2, cpu._BLOCK // 4 + 1, 9)])
def test_bias_gelu_equals_gelu_of_sum(approximate, shape):
    rng = np.random.default_rng()
    x = rng.standard_normal(shape)
    b = rng.standard_normal(shape[-1])
    gy = rng.standard_normal(shape)
    z = x + b
    np.testing.assert_allclose(cpu.bias_gelu_forward(x, b, approximate),
                               cpu.gelu_forward(z, approximate), rtol=1e-13, atol=1e-15)
    gx, gb = cpu.bias_gelu_backward(x, b, gy, approximate)
    ref = cpu.gelu_backward(z, gy, approximate)
    np.testing.assert_allclose(gx, ref, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(gb, ref.reshape(-1, shape[-1]).sum(0), rtol=1e-10)


def test_bias_gelu_shape_mismatch():
    with pytest.raises(ValueError, match="does not match"):
        cpu.bias_gelu_forward(np.ones((2, 3)), np.ones(4))


def test_dropout_mask_replays_from_key():
    x = np.random.default_rng().standard_normal((64, 1000)).astype(np.float32) + 5
    key = (1234, 7)
    p = 0.3
    y = cpu.dropout_forward(x, p, key)
    keep = cpu.dropout_keep(x.shape, p, key)
    np.testing.assert_allclose(y, np.where(keep, x / (1 - p), 0), rtol=1e-6)
    g = cpu.dropout_backward(np.ones_like(x), p, key)
    np.testing.assert_array_equal(g != 0, keep)
    np.testing.assert_allclose(g[keep], 1 / (1 - p), rtol=1e-6)
    assert abs(keep.mean() - (1 - p)) < 0.01
    other = cpu.dropout_keep(x.shape, p, (1234, 8))
    assert (other != keep).any()


def test_dropout_p_one_is_all_zero():
    x = np.ones((3, 4), dtype=np.float32)
    assert not cpu.dropout_forward(x, 1.0, (1, 1)).any()
    assert not cpu.dropout_backward(x, 1.0, (1, 1)).any()


def _ce_ref(logits, target, eps):
    lse = scipy.special.logsumexp(logits, axis=1)
    logp = logits - lse[:, None]
    c = logits.shape[1]
    q = np.full(logits.shape, eps / c)
    q[np.arange(len(target)), target] += 1 - eps
    return -(q * logp).sum(1), np.exp(logp), q


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_softmax_cross_entropy_matches_reference(eps, scale):
    rng = np.random.default_rng()
    logits = rng.standard_normal((7, 5)) * scale
    target = rng.integers(0, 5, 7)
    loss, probs = cpu.softmax_cross_entropy_forward(logits, target, eps)
    ref, p_ref, q = _ce_ref(logits, target, eps)
    # log p = z - lse carries an absolute error of a few ulps of the largest |logit| in any
    # order of operations (the reference's too): 1e-12 at scale 1, ~1e-11 at scale 1e4
    tol = 1e-12 + 4 * np.finfo(np.float64).eps * np.abs(logits).max()
    np.testing.assert_allclose(loss, ref, rtol=1e-12, atol=tol)
    np.testing.assert_allclose(probs, p_ref, rtol=tol, atol=1e-300)
    gy = rng.standard_normal(7)
    g = cpu.softmax_cross_entropy_backward(probs, target, gy, eps)
    # p - q cancels where p is near 1, so p's relative error becomes an absolute one
    np.testing.assert_allclose(g, (p_ref - q) * gy[:, None], rtol=1e-12,
                               atol=tol * np.abs(gy).max())
    np.testing.assert_array_equal(probs, cpu.softmax_cross_entropy_forward(logits, target, eps)[1])
