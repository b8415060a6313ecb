"""Every bad-input path of the optimizers raises a clear error naming what is wrong."""
import numpy as np
import pytest

import dlprimer as dp
from dlprimer.backend.cpu import CPUBackend
from dlprimer.nn.parameter import Parameter
from dlprimer.optim import NonFiniteGradientError
from dlprimer.tensor import Tensor

ALL = ["SGD", "Adam", "AdamW", "LAMB", "LARS"]


def _p(*shape):
    return Parameter(dp.randn(*shape))


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("lr", [-0.1, float("nan"), "fast"])
def test_bad_learning_rate(cls, lr):
    with pytest.raises(ValueError, match="learning rate lr"):
        getattr(dp.optim, cls)([_p(3)], lr=lr)


@pytest.mark.parametrize("cls", ["Adam", "AdamW", "LAMB"])
@pytest.mark.parametrize("betas,which", [((1.0, 0.999), "beta1"), ((-0.1, 0.9), "beta1"),
                                         ((0.9, 1.0), "beta2"), ((0.9, float("nan")), "beta2"),
                                         ((0.9,), "pair")])
def test_bad_betas(cls, betas, which):
    with pytest.raises(ValueError, match=which):
        getattr(dp.optim, cls)([_p(3)], betas=betas)


@pytest.mark.parametrize("cls,kw,what", [
    ("SGD", dict(lr=0.1, momentum=-0.5), "momentum"),
    ("SGD", dict(lr=0.1, weight_decay=-1), "weight_decay"),
    ("SGD", dict(lr=0.1, nesterov=True), "Nesterov"),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "Nesterov"),
    ("Adam", dict(eps=-1e-8), "eps"),
    ("AdamW", dict(weight_decay=float("nan")), "weight_decay"),
    ("LARS", dict(lr=0.1, trust_coefficient=-1), "trust_coefficient"),
    ("LARS", dict(lr=0.1, momentum=float("nan")), "momentum"),
])
def test_bad_hyperparameters(cls, kw, what):
    with pytest.raises(ValueError, match=what):
        getattr(dp.optim, cls)([_p(3)], **kw)


def test_bad_lr_in_a_group_names_the_group():
    with pytest.raises(ValueError, match=r"param_groups\[1\]"):
        dp.optim.SGD([{"params": [_p(2)]}, {"params": [_p(2)], "lr": -1.0}], lr=0.1)


def test_bad_lr_set_later_is_caught_at_step():
    p = _p(3)
    opt = dp.optim.Adam([p])
    p.sum().backward()
    opt.param_groups[0]["lr"] = float("nan")
    before = p.numpy().copy()
    with pytest.raises(ValueError, match="learning rate"):
        opt.step()
    np.testing.assert_array_equal(p.numpy(), before)


@pytest.mark.parametrize("cls", ALL)
def test_bad_hyperparameter_set_after_good_steps_is_caught(cls):
    """step() validates a group again whenever one of its values changed (it skips the
    checks only while every value is the same plain Python value as last time)."""
    p = _p(4)
    opt = getattr(dp.optim, cls)([p], lr=0.01)
    for _ in range(2):
        p.grad = None
        (p * p).sum().backward()
        opt.step()
    opt.param_groups[0]["lr"] = -float(np.random.default_rng().uniform(0.1, 1.0))
    before = p.numpy().copy()
    with pytest.raises(ValueError, match="learning rate"):
        opt.step()
    np.testing.assert_array_equal(p.numpy(), before)


def test_hyperparameter_array_changed_in_place_is_caught():
    """A NumPy value can change in place without a new assignment: it is checked at every step."""
    p = _p(3)
    lr = np.array(0.1)
    opt = dp.optim.SGD([p], lr=lr)
    (p * p).sum().backward()
    opt.step()
    lr[...] = np.nan
    with pytest.raises(ValueError, match="learning rate"):
        opt.step()


def test_duplicate_parameter():
    p, q = _p(3), _p(2)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[2\].*more than once"):
        dp.optim.SGD([p, q, p], lr=0.1)
    with pytest.raises(ValueError, match="'w'.*more than once"):
        dp.optim.SGD([{"params": [("w", p)]}, {"params": [("w", p)]}], lr=0.1)


def test_parameter_of_another_backend():
    class OtherBackend(CPUBackend):
        name = "other"
    other = Tensor(np.zeros(3, np.float32), True, OtherBackend())
    with pytest.raises(ValueError, match=r"\['params'\]\[1\].*backend 'other'.*'cpu'"):
        dp.optim.SGD([_p(2), other], lr=0.1)


@pytest.mark.parametrize("params,exc,what", [
    ([], ValueError, "empty parameter list"),
    ([{"params": []}], ValueError, "empty 'params'"),
    ([{"lr": 0.1}], ValueError, "no 'params'"),
    (None, TypeError, None),
    ([np.zeros(3)], TypeError, "not a Tensor"),
    ([dp.tensor([1, 2, 3])], ValueError, "dtype int64"),
])
def test_bad_parameter_lists(params, exc, what):
    if params is None:
        params = _p(3)  # a single Tensor, not a list
        what = "single Tensor"
    with pytest.raises(exc, match=what):
        dp.optim.SGD(params, lr=0.1)


def test_non_leaf_and_mixed_dtype():
    p = _p(3)
    with pytest.raises(ValueError, match="not a leaf"):
        dp.optim.SGD([p * 2.0], lr=0.1)
    q = Parameter(dp.zeros(2, dtype="float64"))
    with pytest.raises(ValueError, match="float64 but its group is float32"):
        dp.optim.SGD([p, q], lr=0.1)
    dp.optim.SGD([{"params": [p]}, {"params": [q]}], lr=0.1)  # separate groups are fine


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_gradient_raises_naming_the_parameter(cls, bad):
    a, b = _p(4), _p(3)
    kw = {"lr": 0.1} if cls in ("SGD", "LARS") else {}
    opt = getattr(dp.optim, cls)([("encoder.weight", a), b], **kw)
    (a.sum() + b.sum()).backward()
    opt.step()  # a good step first, so there is state to protect
    before = [a.numpy().copy(), b.numpy().copy()]
    state = {k: v.copy() for k, v in opt.arenas[0].state.items()}
    b.grad.data[1] = bad
    with pytest.raises(NonFiniteGradientError, match=r"\['params'\]\[1\] \(shape \(3,\)\)") as e:
        opt.step()
    assert "NaN or inf" in str(e.value)
    b.grad.data[1] = 0.0
    a.grad.data[0] = bad
    with pytest.raises(NonFiniteGradientError, match="'encoder.weight'"):
        opt.step()
    np.testing.assert_array_equal(a.numpy(), before[0])
    np.testing.assert_array_equal(b.numpy(), before[1])
    for k, v in opt.arenas[0].state.items():
        np.testing.assert_array_equal(v, state[k])


def test_skip_nonfinite_skips_and_counts():
    a, b = _p(4), _p(3)
    opt = dp.optim.Adam([{"params": [a]}, {"params": [b]}], skip_nonfinite=True)
    (a.sum() + b.sum()).backward()
    b.grad.data[0] = float("nan")
    before = [a.numpy().copy(), b.numpy().copy()]
    assert opt.step() is False
    assert opt.skipped_steps == 1
    np.testing.assert_array_equal(a.numpy(), before[0])  # other groups untouched too
    np.testing.assert_array_equal(b.numpy(), before[1])
    assert list(opt.arenas[0].counts) == [0]
    b.grad.data[0] = 1.0
    assert opt.step() is True
    assert opt.skipped_steps == 1 and opt.state_dict()["skipped_steps"] == 1


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NumPy path
def test_check_finite_false_drops_the_check_as_pytorch_has_none(cls):
    """Finite steps are bit for bit those of the checked optimizer; a NaN or inf gradient
    then goes into the weights instead of raising (what a PyTorch optimizer does)."""
    rng = np.random.default_rng()
    w0 = rng.standard_normal(5).astype(np.float32)
    kw = {"lr": 0.1} if cls in ("SGD", "LARS") else {}
    pa, pb = Parameter(dp.tensor(w0.copy())), Parameter(dp.tensor(w0.copy()))
    checked = getattr(dp.optim, cls)([pa], **kw)
    unchecked = getattr(dp.optim, cls)([pb], check_finite=False, **kw)
    assert checked.check_finite and not unchecked.check_finite
    for _ in range(3):
        g = rng.standard_normal(5).astype(np.float32)
        pa.grad, pb.grad = dp.tensor(g.copy()), dp.tensor(g.copy())
        assert checked.step() is True and unchecked.step() is True
        np.testing.assert_array_equal(pa.numpy(), pb.numpy())
    bad = np.float32(rng.choice([np.nan, np.inf, -np.inf]))
    g[int(rng.integers(5))] = bad
    pa.grad, pb.grad = dp.tensor(g.copy()), dp.tensor(g.copy())
    with pytest.raises(NonFiniteGradientError):
        checked.step()
    assert unchecked.step() is True
    assert not np.isfinite(pb.numpy()).all()


def test_check_finite_false_cannot_skip_nonfinite_steps():
    with pytest.raises(ValueError, match="skip_nonfinite=True needs the non-finite check"):
        dp.optim.Adam([_p(3)], skip_nonfinite=True, check_finite=False)


def test_huge_but_finite_gradient_is_not_rejected():
    """The fast check sums the gradients; a sum overflowing to inf must not reject
    finite values (the exact per-parameter check decides)."""
    p = _p(4)
    opt = dp.optim.SGD([p], lr=0.0)
    p.grad = dp.tensor(np.full(4, 3e38, np.float32))
    with np.errstate(over="ignore"):
        assert opt.step() is True


def test_replaced_data_of_wrong_shape_or_backend():
    p = _p(3, 2)
    opt = dp.optim.SGD([("fc.w", p)], lr=0.1)
    p.sum().backward()
    p.data = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"'fc.w'.*shape \(2, 3\).*\(3, 2\)"):
        opt.step()
    p.data = [[0.0] * 2] * 3
    with pytest.raises(ValueError, match="'fc.w'.*no longer a 'cpu' array"):
        opt.step()


def test_replaced_grad_of_wrong_shape():
    p = _p(3)
    opt = dp.optim.SGD([p], lr=0.1)
    p.grad = dp.ones(4)
    with pytest.raises(ValueError, match=r"\.grad was replaced by an array of shape \(4,\)"):
        opt.step()


def test_load_state_dict_mismatches():
    a, b = _p(3), _p(2)
    opt = dp.optim.Adam([a, b])
    (a.sum() + b.sum()).backward()
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="2 parameters, this optimizer's has 1"):
        dp.optim.Adam([_p(3)]).load_state_dict(sd)
    with pytest.raises(ValueError, match="1 param groups, this optimizer has 2"):
        dp.optim.Adam([{"params": [_p(3)]}, {"params": [_p(2)]}]).load_state_dict(sd)
    with pytest.raises(ValueError, match=r"'exp_avg' of parameter .*\['params'\]\[1\].*expected \(5,\)"):
        dp.optim.Adam([_p(3), _p(5)]).load_state_dict(sd)
    with pytest.raises(ValueError, match="expected a dict"):
        opt.load_state_dict({"state": {}})
    bad = opt.state_dict()
    bad["param_groups"][0]["lr"] = -1.0
    with pytest.raises(ValueError, match="learning rate"):
        opt.load_state_dict(bad)
    assert opt.param_groups[0]["lr"] == 1e-3  # nothing changed by the failed load


def test_grad_norm_rejects_bad_norm_type():
    with pytest.raises(ValueError, match="norm_type"):
        dp.get_backend().grad_norm([np.ones(3, np.float32)], norm_type=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("where", [0, 20000, -1])
def test_nonfinite_in_a_large_arena_is_found_and_not_applied(where, dtype):
    """Past the small-run threshold the check is one pass over the arena (a numba kernel
    with the JIT on, a BLAS dot with it off); one bad element anywhere stops the step."""
    rng = np.random.default_rng()
    a = Parameter(dp.tensor(rng.standard_normal(40000).astype(dtype)))
    b = Parameter(dp.tensor(rng.standard_normal(5).astype(dtype)))
    opt = dp.optim.Adam([("big", a), ("small", b)], lr=0.1)
    (a.sum() + b.sum()).backward()
    before = [a.numpy().copy(), b.numpy().copy()]
    a.grad.data[where] = -np.inf
    with pytest.raises(NonFiniteGradientError, match="'big'"):
        opt.step()
    np.testing.assert_array_equal(a.numpy(), before[0])
    np.testing.assert_array_equal(b.numpy(), before[1])
    a.grad.data[where] = 1.0
    assert opt.step() is True
    assert not np.array_equal(a.numpy(), before[0])
