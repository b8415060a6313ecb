"""The fusion switch: unfused compositions equal the fused backend ops, the switch
swaps them in and out, and training under it gives the same numbers."""
import numpy as np
import pytest

import dlprimer as dp
import dlprimer.nn as nn
import dlprimer.nn.functional as F
from dlprimer import optim, unfused
from dlprimer.unfused import UNFUSED_OPS

ACTS = [("relu", (), "y"), ("leaky_relu", (0.07,), "x"), ("elu", (0.8,), "x"),
        ("gelu", ("none",), "x"), ("gelu", ("tanh",), "x"), ("silu", (), "x"),
        ("sigmoid", (), "y"), ("tanh", (), "y")]


def _fused(b, name):
    return getattr(type(b), name).__get__(b)


@pytest.mark.parametrize("name,extra,keeps", ACTS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_unfused_activation_equals_fused(backend, rng, name, extra, keeps, dtype):
    b = dp.get_backend()
    x = b.asarray(rng.standard_normal((37, 53)) * 3, dtype=dtype)
    gy = b.asarray(rng.standard_normal((37, 53)), dtype=dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)
    yf = _fused(b, f"{name}_forward")(x, *extra)
    yu = getattr(unfused, f"{name}_forward")(b, x, *extra)
    assert yu.dtype == yf.dtype and yu.shape == yf.shape
    np.testing.assert_allclose(b.to_numpy(yu), b.to_numpy(yf), **tol)
    arg = yf if keeps == "y" else x
    gf = _fused(b, f"{name}_backward")(arg, gy, *extra)
    gu = getattr(unfused, f"{name}_backward")(b, arg, gy, *extra)
    assert gu.dtype == gf.dtype
    np.testing.assert_allclose(b.to_numpy(gu), b.to_numpy(gf), **tol)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_unfused_bias_gelu_equals_fused(backend, rng, approximate):
    b = dp.get_backend()
    x = b.asarray(rng.standard_normal((6, 5, 7)))
    bias = b.asarray(rng.standard_normal(7))
    gy = b.asarray(rng.standard_normal((6, 5, 7)))
    np.testing.assert_allclose(b.to_numpy(unfused.bias_gelu_forward(b, x, bias, approximate)),
                               b.to_numpy(_fused(b, "bias_gelu_forward")(x, bias, approximate)), rtol=1e-12,
                               atol=1e-14)  # the primitive chain cancels in 1 + tanh(u) for x << 0
    for u, f in zip(unfused.bias_gelu_backward(b, x, bias, gy, approximate),
                    _fused(b, "bias_gelu_backward")(x, bias, gy, approximate)):
        np.testing.assert_allclose(b.to_numpy(u), b.to_numpy(f), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ls", [0.0, 0.1])
def test_unfused_cross_entropy_equals_fused(backend, rng, ls):
    b = dp.get_backend()
    logits = b.asarray(rng.standard_normal((9, 6)) * 30)
    target = b.asarray(rng.integers(0, 6, 9))
    gy = b.asarray(rng.standard_normal(9))
    lu, pu = unfused.softmax_cross_entropy_forward(b, logits, target, ls)
    lf, pf = _fused(b, "softmax_cross_entropy_forward")(logits, target, ls)
    # the two shift by different values (the row max, the first logit): log p agrees to a few
    # ulps of the largest |logit|, absolute, which is all of a loss near 0 and, in p - q, all
    # of a gradient where p is near 1
    tol = 4 * np.finfo(np.float64).eps * float(abs(b.to_numpy(logits)).max())
    np.testing.assert_allclose(b.to_numpy(lu), b.to_numpy(lf), rtol=1e-12, atol=tol)
    np.testing.assert_allclose(b.to_numpy(pu), b.to_numpy(pf), rtol=1e-12 + tol, atol=1e-300)
    np.testing.assert_allclose(b.to_numpy(unfused.softmax_cross_entropy_backward(b, pf, target, gy, ls)),
                               b.to_numpy(_fused(b, "softmax_cross_entropy_backward")(pf, target, gy, ls)),
                               rtol=1e-12, atol=1e-15 + tol * float(abs(b.to_numpy(gy)).max()))


def _arrays(b, rng, n, k):
    return [b.asarray(rng.standard_normal(n)) for _ in range(k)]


@pytest.mark.parametrize("kw", [dict(momentum=0.0), dict(momentum=0.9, weight_decay=0.01),
                                dict(momentum=0.9, dampening=0.1, nesterov=False),
                                dict(momentum=0.9, nesterov=True, weight_decay=0.1)])
def test_unfused_sgd_equals_fused(backend, rng, kw):
    b = dp.get_backend()
    p, g, buf = _arrays(b, rng, 1000, 3)
    p2, buf2 = p.copy(), buf.copy()
    for first in (True, False):
        _fused(b, "sgd_update")(p, g, buf if kw["momentum"] else None, 0.1, first_step=first, **kw)
        unfused.sgd_update(b, p2, g, buf2 if kw["momentum"] else None, 0.1, first_step=first, **kw)
    # p - lr * step cancels where the step nearly equals p, so relative error alone is
    # unbounded there; the two orders of operations differ by a few ulps of |p| ~ 1.
    np.testing.assert_allclose(b.to_numpy(p2), b.to_numpy(p), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("decoupled", [False, True])
def test_unfused_adam_equals_fused(backend, rng, decoupled):
    b = dp.get_backend()
    p, g = _arrays(b, rng, 1000, 2)
    m, v = b.xp.zeros(1000), b.xp.zeros(1000)
    p2, m2, v2 = p.copy(), m.copy(), v.copy()
    for step in (1, 2, 3):
        _fused(b, "adam_update")(p, g, m, v, 1e-2, 0.9, 0.999, 1e-8, 0.05, step, decoupled=decoupled)
        unfused.adam_update(b, p2, g, m2, v2, 1e-2, 0.9, 0.999, 1e-8, 0.05, step, decoupled=decoupled)
    for a, c in ((p, p2), (m, m2), (v, v2)):
        np.testing.assert_allclose(b.to_numpy(c), b.to_numpy(a), rtol=1e-12)


def test_unfused_lamb_and_lars_equal_fused(backend, rng):
    b = dp.get_backend()
    offsets = np.array([0, 300, 700, 1000])
    p, g = _arrays(b, rng, 1000, 2)
    m, v, buf = b.xp.zeros(1000), b.xp.zeros(1000), b.xp.zeros(1000)
    p2, m2, v2 = p.copy(), m.copy(), v.copy()
    for step in (1, 2):
        _fused(b, "lamb_update")(p, g, m, v, offsets, 1e-2, 0.9, 0.999, 1e-6, 0.01, step)
        unfused.lamb_update(b, p2, g, m2, v2, offsets, 1e-2, 0.9, 0.999, 1e-6, 0.01, step)
    np.testing.assert_allclose(b.to_numpy(p2), b.to_numpy(p), rtol=1e-10)
    p3, buf3 = p.copy(), buf.copy()
    for mom in (0.9, 0.0):
        _fused(b, "lars_update")(p, g, buf if mom else None, offsets, 0.1, mom, 1e-4, 1e-3)
        unfused.lars_update(b, p3, g, buf3 if mom else None, offsets, 0.1, mom, 1e-4, 1e-3)
        np.testing.assert_allclose(b.to_numpy(p3), b.to_numpy(p), rtol=1e-10)


def test_switch_swaps_methods_and_restores_them(backend):
    b = dp.get_backend()
    assert dp.fusion_enabled()
    with dp.fusion(False):
        assert not dp.fusion_enabled()
        for name in UNFUSED_OPS:
            assert getattr(b, name).func is getattr(unfused, name)
        with dp.fusion(True):
            assert dp.fusion_enabled() and "gelu_forward" not in vars(b)
        assert "gelu_forward" in vars(b)
    assert dp.fusion_enabled()
    assert not any(name in vars(b) for name in UNFUSED_OPS)


def test_switch_restores_after_an_error():
    with pytest.raises(ZeroDivisionError):
        with dp.fusion(False):
            1 / 0
    assert dp.fusion_enabled() and "relu_forward" not in vars(dp.get_backend())


def test_switch_rejects_non_bool():
    with pytest.raises(TypeError, match="bool"):
        with dp.fusion("no"):
            pass


@pytest.mark.parametrize("act", ["gelu", "silu", "elu", "leaky_relu", "sigmoid", "tanh", "relu"])
def test_gradcheck_under_unfused(rng, act):
    x = dp.tensor(rng.standard_normal((4, 5)) + 0.05, dtype="float64", requires_grad=True)
    with dp.fusion(False):
        assert dp.gradcheck(getattr(F, act), (x,))


@pytest.mark.parametrize("opt_cls,kw", [(optim.SGD, dict(lr=0.05, momentum=0.9)),
                                        (optim.Adam, dict(lr=1e-2)), (optim.AdamW, dict(lr=1e-2)),
                                        (optim.LAMB, dict(lr=1e-2)), (optim.LARS, dict(lr=0.1))])
def test_training_fused_and_unfused_agree(rng, opt_cls, kw):
    """Same model, same data: three steps with and without fusion end at the same weights."""
    x = dp.tensor(rng.standard_normal((16, 8)), dtype="float64")
    y = dp.tensor(rng.integers(0, 3, 16))
    results = []
    for enabled in (True, False):
        dp.manual_seed(7)
        net = nn.MLP([8, 12, 3], activation="gelu").to("cpu")
        for p in net.parameters():
            p.data = p.data.astype("float64")
        opt = opt_cls(net.parameters(), **kw)
        with dp.fusion(enabled):
            for _ in range(3):
                opt.zero_grad()
                F.cross_entropy(net(x), y).backward()
                opt.step()
        results.append([p.numpy().copy() for p in net.parameters()])
    for a, b in zip(*results):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
