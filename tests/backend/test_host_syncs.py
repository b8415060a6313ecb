"""A training step reads nothing back from the device (issue 17, point 1).

On the fake device (``tests/_fake_device.py``) every ``float()``, ``int()``,
``bool()``, ``.item()``, ``.tolist()``, ``to_numpy`` and NumPy-scalar conversion of a
device value counts as a host synchronisation. A step (forward, cross-entropy,
backward, gradient clipping, optimizer step) must count none: the target check and the
non-finite check are device flags read at logging time (``dp.check_deferred()``).
"""
import numpy as np
import pytest

import dlprimer as dp
import dlprimer.nn.functional as F
from dlprimer import nn, optim
from dlprimer.optim.optimizer import NonFiniteGradientError
from dlprimer.nn.utils import clip_grad_norm_

from _fake_device import DeviceArray, installed

OPTIMIZERS = {
    "sgd": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adam": lambda ps: optim.Adam(ps, lr=1e-3, weight_decay=1e-4),
    "adamw": lambda ps: optim.AdamW(ps, lr=1e-3),
}


@pytest.fixture
def dev(monkeypatch):
    with installed(monkeypatch) as d:
        yield d


def _setup(name, rng, skip_nonfinite=False):
    model = nn.MLP([12, 16, 5], activation="gelu").to("cuda")
    opt = OPTIMIZERS[name](model.parameters())
    opt.skip_nonfinite = skip_nonfinite
    x = dp.tensor(rng.normal(size=(8, 12)).astype(np.float32)).to("cuda")
    y = dp.tensor(rng.integers(0, 5, 8)).to("cuda")
    return model, opt, x, y


def _step(model, opt, x, y, clip=1.0):
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
    loss.backward()
    norm = clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return loss, norm


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_training_step_does_not_sync(dev, name):
    rng = np.random.default_rng()
    model, opt, x, y = _setup(name, rng)
    _step(model, opt, x, y)  # first step: state arrays created
    before = DeviceArray.syncs
    for _ in range(3):
        loss, norm = _step(model, opt, x, y, clip=rng.uniform(0.01, 0.1))
    assert DeviceArray.syncs == before, f"{DeviceArray.syncs - before} host syncs in 3 steps"
    assert isinstance(loss.data, DeviceArray) and isinstance(norm.data, DeviceArray)
    dp.check_deferred()  # logging time: one read, nothing wrong
    assert DeviceArray.syncs - before == 1
    assert np.isfinite(loss.item()) and norm.item() > 0


def test_clipping_on_the_device_matches_the_eager_clip(dev):
    rng = np.random.default_rng()
    model, opt, x, y = _setup("adam", rng)
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad.numpy().copy() for p in model.parameters()]
    with dp.use_backend("cpu"):
        ref = [dp.tensor(g, requires_grad=True) for g in grads]
        for r, g in zip(ref, grads):
            r.grad = dp.tensor(g.copy())
        want = clip_grad_norm_(ref, 0.05).item()
    got = clip_grad_norm_(model.parameters(), 0.05)
    np.testing.assert_allclose(got.item(), want, rtol=1e-6)
    for p, r in zip(model.parameters(), ref):
        np.testing.assert_allclose(p.grad.numpy(), r.grad.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_nonfinite_gradient_is_skipped_on_the_device(dev, name):
    """The step is masked by the device flag (weights and state untouched), and the error
    comes at logging time, or is counted with skip_nonfinite."""
    rng = np.random.default_rng()
    model, opt, x, y = _setup(name, rng)
    _step(model, opt, x, y)
    w = [p.numpy().copy() for p in model.parameters()]
    state = {k: a.view(np.ndarray).copy() for k, a in opt.arenas[0].state.items()}
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    g = opt.arenas[0].grad
    g[int(rng.integers(g.size))] = np.float32(np.inf if rng.random() < 0.5 else np.nan)
    before = DeviceArray.syncs
    assert opt.step() is None
    assert DeviceArray.syncs == before
    for p, w0 in zip(model.parameters(), w):
        np.testing.assert_array_equal(p.numpy(), w0)
    for k, a in opt.arenas[0].state.items():
        np.testing.assert_array_equal(a.view(np.ndarray), state[k])
    with pytest.raises(NonFiniteGradientError, match="NaN or inf in a step"):
        dp.check_deferred()
    opt.skip_nonfinite = True
    opt.step()
    opt.step()
    assert opt.skipped_steps == 2
    _step(model, opt, x, y)
    assert opt.skipped_steps == 2
    assert any((p.numpy() != w0).any() for p, w0 in zip(model.parameters(), w))


def test_without_the_check_a_device_step_launches_no_flag(dev, monkeypatch):
    """``check_finite=False``: no non-finite flag, no masking; the NaN reaches the weights."""
    rng = np.random.default_rng()
    model, opt, x, y = _setup("adam", rng)
    opt.check_finite = False
    be = dp.get_backend()
    monkeypatch.setattr(type(be), "nonfinite_flag",
                        lambda *a: pytest.fail("nonfinite_flag called with check_finite=False"))
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.arenas[0].grad[0] = np.float32(np.nan)
    before = DeviceArray.syncs
    assert opt.step() is None
    assert DeviceArray.syncs == before
    assert np.isnan(opt.arenas[0].data.view(np.ndarray)[0])
    dp.check_deferred()  # nothing was recorded


def test_the_debug_switch_brings_back_the_eager_checks(dev):
    rng = np.random.default_rng()
    model, opt, x, y = _setup("adam", rng)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.arenas[0].grad[3] = np.float32(np.nan)
    with dp.eager_checks():
        assert dp.get_backend().defers_checks is False
        with pytest.raises(NonFiniteGradientError, match="parameter"):
            opt.step()
    with pytest.raises(TypeError, match="True or False"):
        dp.set_eager_checks("yes")


def test_the_cpu_checks_stay_eager():
    model = nn.MLP([4, 3])
    opt = optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(dp.randn(2, 4)), dp.tensor([0, 2])).backward()
    list(model.parameters())[0].grad.data[0, 0] = np.nan
    with pytest.raises(NonFiniteGradientError, match="parameter"):
        opt.step()
    with pytest.raises(ValueError, match="target class 3 is out of range for 3 classes"):
        F.cross_entropy(model(dp.randn(2, 4)), dp.tensor([0, 3]))
