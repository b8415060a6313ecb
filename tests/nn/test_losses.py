"""Losses: float64 gradcheck for every loss and reduction, float32 closed-form
references, finiteness for logits of +-1e4, and the target errors."""
import math

import numpy as np
import pytest
import scipy.special

import dlprimer as dp
import dlprimer.nn.functional as F

REDUCTIONS = ["mean", "sum", "none"]
N, C = 6, 5


def _logits(rng, dtype="float64", scale=1.0):
    return dp.tensor(rng.standard_normal((N, C)) * scale, dtype=dtype, requires_grad=True)


def _target(rng):
    return dp.tensor(rng.integers(0, C, N))


# -- gradients --------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.15])
def test_cross_entropy_gradcheck(reduction, smoothing, backend, rng):
    t = _target(rng)
    assert dp.gradcheck(lambda z: F.cross_entropy(z, t, smoothing, reduction), (_logits(rng),))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("gamma,alpha", [(2.0, None), (0.5, 0.25), (1.0, [0.1, 0.2, 0.3, 0.2, 0.2]),
                                         (0.0, None), (3.0, [1, 2, 3, 4, 5])])
def test_focal_loss_gradcheck(reduction, gamma, alpha, backend, rng):
    t = _target(rng)
    assert dp.gradcheck(lambda z: F.focal_loss(z, t, gamma, alpha, reduction), (_logits(rng),))


def _kinkless_pair(rng, delta=None):
    x = rng.standard_normal((4, 3)) * 2
    y = rng.standard_normal((4, 3)) * 2
    d = x - y
    d = np.where(np.abs(d) < 1e-2, 0.5, d)  # keep |x - y| off 0 (l1) ...
    if delta is not None:                    # ... and off +-delta (huber)
        d = np.where(np.abs(np.abs(d) - delta) < 1e-2, delta + 0.3, d)
    return (dp.tensor(y + d, dtype="float64", requires_grad=True),
            dp.tensor(y, dtype="float64", requires_grad=True))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ["mse", "l1", "huber", "bce"])
def test_regression_loss_gradcheck(name, reduction, backend, rng):
    fn = {"mse": lambda a, b: F.mse_loss(a, b, reduction),
          "l1": lambda a, b: F.l1_loss(a, b, reduction),
          "huber": lambda a, b: F.huber_loss(a, b, 0.8, reduction),
          "bce": lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction)}[name]
    x, y = _kinkless_pair(rng, 0.8 if name == "huber" else None)
    if name == "bce":
        y = dp.tensor(rng.uniform(0, 1, (4, 3)), dtype="float64", requires_grad=True)
    assert dp.gradcheck(fn, (x, y))


# -- closed-form references (float32) ------------------------------------------------------------
def _np_log_softmax(z):
    return z - scipy.special.logsumexp(z, axis=1, keepdims=True)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_matches_formula(smoothing, backend, rng):
    z = _logits(rng, "float32")
    t = _target(rng)
    lp = _np_log_softmax(z.numpy().astype(np.float64))
    tt = t.numpy()
    ref = -(1 - smoothing) * lp[np.arange(N), tt] - smoothing * lp.mean(axis=1)
    out = F.cross_entropy(z, t, smoothing, "none")
    assert out.dtype == dp.float32 and out.shape == (N,)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5)
    np.testing.assert_allclose(F.cross_entropy(z, t, smoothing).item(), ref.mean(), rtol=1e-5)
    np.testing.assert_allclose(F.cross_entropy(z, t, smoothing, "sum").item(), ref.sum(), rtol=1e-5)


def _focal_ref(z, t, gamma, alpha):
    p = np.exp(_np_log_softmax(z.astype(np.float64)))
    out = []
    for i, c in enumerate(t):
        pt = p[i, c]
        a = 1.0 if alpha is None else (alpha if np.isscalar(alpha) else alpha[c])
        out.append(-a * (1 - pt) ** gamma * math.log(pt))
    return np.array(out)


@pytest.mark.parametrize("gamma,alpha", [(2.0, None), (0.5, 0.25), (1.5, [0.1, 0.2, 0.3, 0.2, 0.7])])
def test_focal_loss_matches_formula(gamma, alpha, backend, rng):
    z = _logits(rng, "float32", 2.0)
    t = _target(rng)
    ref = _focal_ref(z.numpy(), t.numpy(), gamma, alpha)
    np.testing.assert_allclose(F.focal_loss(z, t, gamma, alpha, "none").numpy(), ref, rtol=2e-5,
                               atol=1e-7)
    np.testing.assert_allclose(F.focal_loss(z, t, gamma, alpha).item(), ref.mean(), rtol=2e-5)


def test_focal_with_gamma_zero_is_cross_entropy(rng):
    z = _logits(rng)
    t = _target(rng)
    np.testing.assert_allclose(F.focal_loss(z, t, gamma=0.0).item(), F.cross_entropy(z, t).item(),
                               rtol=1e-12)


def test_mse_l1_match_formula(backend, rng):
    x = dp.tensor(rng.standard_normal(20), dtype="float32")
    y = dp.tensor(rng.standard_normal(20), dtype="float32")
    d = x.numpy().astype(np.float64) - y.numpy()
    np.testing.assert_allclose(F.mse_loss(x, y).item(), (d ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(F.l1_loss(x, y, "sum").item(), np.abs(d).sum(), rtol=1e-5)
    np.testing.assert_allclose(F.mse_loss(x, y, "none").numpy(), d ** 2, rtol=1e-5)


@pytest.mark.parametrize("delta", [0.5, 1.0, 2.0])
def test_huber_both_sides_of_delta(delta, backend):
    d = np.array([-3 * delta, -1.01 * delta, -0.99 * delta, -0.2 * delta, 0.0, 0.3 * delta,
                  0.99 * delta, 1.01 * delta, 4 * delta])
    x = dp.tensor(d, dtype="float32", requires_grad=True)
    y = dp.zeros(len(d))
    out = F.huber_loss(x, y, delta, "none")
    dd = d.astype(np.float32).astype(np.float64)
    quad, lin = np.abs(dd) < delta, np.abs(dd) >= delta
    assert quad.any() and lin.any()
    ref = np.where(quad, 0.5 * dd ** 2, delta * (np.abs(dd) - 0.5 * delta))
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6)
    out.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.where(quad, dd, delta * np.sign(dd)), rtol=1e-6)
    # continuous at |d| = delta: both branches give delta^2 / 2
    edge = F.huber_loss(dp.tensor([delta]), dp.zeros(1), delta).item()
    assert edge == pytest.approx(0.5 * delta ** 2, rel=1e-6)


def test_bce_with_logits_matches_formula(backend, rng):
    x = rng.standard_normal(30) * 3
    y = rng.uniform(0, 1, 30)
    s = 1 / (1 + np.exp(-x))
    ref = -(y * np.log(s) + (1 - y) * np.log(1 - s))
    out = F.binary_cross_entropy_with_logits(dp.tensor(x, dtype="float32"),
                                             dp.tensor(y, dtype="float32"), "none")
    np.testing.assert_allclose(out.numpy(), ref, rtol=2e-5, atol=1e-6)


# -- stability -----------------------------------------------------------------------------------
BIG = np.array([[1e4, -1e4, 0.0, 5.0, -1e4], [-1e4, -1e4, -1e4, -1e4, 1e4],
                [1e4, 1e4, -1e4, 0.0, 0.0]])


@pytest.mark.parametrize("name", ["ce", "ce_smooth", "focal", "focal_alpha", "bce"])
def test_losses_finite_for_huge_logits(name, backend):
    z = dp.tensor(BIG, dtype="float32", requires_grad=True)
    t = dp.tensor([1, 0, 2])  # targets far from the winning class: loss ~ 2e4
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        if name == "ce":
            loss = F.cross_entropy(z, t)
        elif name == "ce_smooth":
            loss = F.cross_entropy(z, t, label_smoothing=0.1)
        elif name == "focal":
            loss = F.focal_loss(z, t)
        elif name == "focal_alpha":
            loss = F.focal_loss(z, t, gamma=0.5, alpha=[1, 2, 3, 4, 5])
        else:
            loss = F.binary_cross_entropy_with_logits(z, dp.tensor(np.eye(3, 5), dtype="float32"))
        loss.backward()
    assert np.isfinite(loss.item()) and loss.item() > 1e3
    assert np.isfinite(z.grad.numpy()).all()


def test_cross_entropy_at_1e4_exact_values():
    z = dp.tensor([[1e4, -1e4], [1e4, -1e4]], requires_grad=True)
    loss = F.cross_entropy(z, dp.tensor([0, 1]), reduction="none")
    np.testing.assert_allclose(loss.numpy(), [0.0, 2e4])
    loss.sum().backward()
    np.testing.assert_allclose(z.grad.numpy(), [[0, 0], [1, -1]])


def test_focal_gradient_finite_when_confident():
    # p_t == 1 exactly: (1 - p_t)^(gamma - 1) would be inf for gamma < 1
    z = dp.tensor([[1e4, -1e4]], requires_grad=True)
    F.focal_loss(z, dp.tensor([0]), gamma=0.5).backward()
    np.testing.assert_array_equal(z.grad.numpy(), [[0.0, 0.0]])


def test_cross_entropy_matches_torch_if_installed(rng):
    torch = pytest.importorskip("torch")
    z = rng.standard_normal((N, C))
    t = rng.integers(0, C, N)
    for s in (0.0, 0.3):
        zt = torch.tensor(z, requires_grad=True)
        ref = torch.nn.functional.cross_entropy(zt, torch.tensor(t), label_smoothing=s)
        ref.backward()
        mine = dp.tensor(z, dtype="float64", requires_grad=True)
        out = F.cross_entropy(mine, t, s)
        out.backward()
        np.testing.assert_allclose(out.item(), ref.item(), rtol=1e-12)
        np.testing.assert_allclose(mine.grad.numpy(), zt.grad.numpy(), rtol=1e-10, atol=1e-14)
    x, y = rng.standard_normal(10), rng.uniform(size=10)
    for mine, theirs in [
            (F.huber_loss(dp.tensor(x * 3, dtype="float64"), dp.tensor(y, dtype="float64"), 0.7),
             torch.nn.functional.huber_loss(torch.tensor(x * 3), torch.tensor(y), delta=0.7)),
            (F.binary_cross_entropy_with_logits(dp.tensor(x, dtype="float64"), dp.tensor(y, dtype="float64")),
             torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(x), torch.tensor(y)))]:
        np.testing.assert_allclose(mine.item(), theirs.item(), rtol=1e-12)


def test_loss_flops_scale_with_input(rng):
    z = _logits(rng)
    loss = F.cross_entropy(z, _target(rng))
    node = loss.grad_fn
    node.in_shapes, node.out_shape = ((N, C), (N,)), ()
    f, b = node.flops()
    assert f == 5 * N * C and b == 3 * N * C


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [F.cross_entropy, F.focal_loss])
def test_class_target_errors(fn):
    z = dp.randn(4, 3)
    with pytest.raises(ValueError, match=r"target of shape \(3,\) does not match logits of shape \(4, 3\)"):
        fn(z, dp.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"target of shape \(4, 1\)"):
        fn(z, np.zeros((4, 1), dtype=np.int64))
    with pytest.raises(ValueError, match="integer class indices, got dtype float32"):
        fn(z, dp.tensor([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="target class 3 is out of range for 3 classes"):
        fn(z, dp.tensor([0, 1, 3, 1]))
    with pytest.raises(ValueError, match="target class -1 is out of range"):
        fn(z, [0, -1, 2, 1])
    with pytest.raises(ValueError, match=r"logits must have shape \(N, C\)"):
        fn(dp.randn(3), dp.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="reduction must be one of mean, sum, none"):
        fn(z, [0, 1, 2, 1], reduction="avg")


def test_option_errors():
    z, t = dp.randn(4, 3), [0, 1, 2, 1]
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        F.cross_entropy(z, t, label_smoothing=1.5)
    with pytest.raises(ValueError, match="alpha must be None, a float or 3 per-class weights"):
        F.focal_loss(z, t, alpha=[0.1, 0.2])
    with pytest.raises(ValueError, match="gamma must be in"):
        F.focal_loss(z, t, gamma=-1.0)
    with pytest.raises(ValueError, match="delta must be in"):
        F.huber_loss(dp.ones(3), dp.ones(3), delta=0.0)


@pytest.mark.parametrize("fn", [F.mse_loss, F.l1_loss, F.huber_loss, F.binary_cross_entropy_with_logits])
def test_pair_target_errors(fn):
    x = dp.randn(4, 3)
    with pytest.raises(ValueError, match=r"target of shape \(3,\) does not match .* of shape \(4, 3\)"):
        fn(x, dp.randn(3))
    with pytest.raises(ValueError, match="target must be floating point, got dtype int64"):
        fn(x, dp.tensor(np.ones((4, 3), dtype=np.int64)))
    with pytest.raises(ValueError, match="target dtype float64 differs"):
        fn(x, dp.randn(4, 3, dtype="float64"))
    with pytest.raises(ValueError, match="reduction must be one of"):
        fn(x, dp.randn(4, 3), reduction="max")
    # array-like targets are converted to the input's dtype
    assert fn(x, np.zeros((4, 3))).dtype == dp.float32
