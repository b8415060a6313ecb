"""What the layers above the backend do when a second backend holds the arrays.

Without a GPU, ``_fake_device.FakeDevice`` stands in for CUDA: its ``xp`` refuses
host arrays as CuPy does, and it counts host synchronisations, so mixing two
backends' arrays and syncing in hot paths show up here.
"""
import numpy as np
import pytest

import dlprimer as dp
from _fake_device import DeviceArray, installed


@pytest.fixture
def dev(monkeypatch):
    with installed(monkeypatch) as d:
        yield d


def test_fake_device_refuses_host_arrays(dev):
    with pytest.raises(TypeError, match="host"):
        dev.xp.exp(np.ones(3))
    assert isinstance(dev.xp.exp(dev.asarray(np.ones(3))), DeviceArray)


def test_detect_anomaly_checks_each_gradient_on_its_own_backend(dev):
    x = dp.tensor(np.random.default_rng().normal(size=(3, 4)), requires_grad=True)
    with dp.detect_anomaly():
        y = x.to("cuda")
        assert y.backend is dev
        (y * y).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy())
    g = x.to("cuda").detach().requires_grad_()
    with dp.detect_anomaly():
        g.to("cpu").sum().backward()
    assert isinstance(g.grad.data, DeviceArray)


def test_module_to_leaves_the_old_optimizers_gradient_buffers_behind(dev):
    lin = dp.nn.Linear(4, 3)
    opt = dp.optim.SGD(lin.parameters(), lr=0.1)
    x = dp.tensor(np.random.default_rng().normal(size=(5, 4)))
    lin(x).sum().backward()
    opt.zero_grad()
    lin.to("cuda")
    lin(x.to("cuda")).sum().backward()  # no write into the CPU arena
    for p in lin.parameters():
        assert isinstance(p.grad.data, DeviceArray)
    with pytest.raises(ValueError, match="no longer a 'cpu' array"):
        opt.step()
    opt2 = dp.optim.SGD(lin.parameters(), lr=0.1)
    opt2.zero_grad()
    lin(x.to("cuda")).sum().backward()
    assert all(p.grad.data is p._grad_buffer for p in lin.parameters())
    opt2.step()


def _unfused_ops(b):
    from dlprimer import unfused
    return [n for n in unfused.UNFUSED_OPS
            if getattr(vars(b).get(n), "func", None) is getattr(unfused, n)]


def test_a_backend_created_inside_fusion_false_runs_unfused(monkeypatch):
    from dlprimer import unfused
    with installed(monkeypatch, make_lazily=True):
        with dp.fusion(False):
            dev = dp.backend.backend_for("cuda")
            assert _unfused_ops(dev) == list(unfused.UNFUSED_OPS)
        assert _unfused_ops(dev) == []
        assert dev.relu_forward(dev.asarray(np.ones(2))) is not None


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_unfused_lamb_and_lars_do_not_sync_with_the_host(dev, momentum):
    """The unfused updates stand for an eager framework's chain of device ops: the
    per-parameter trust ratios stay on the device (no float() per parameter)."""
    from dlprimer import unfused
    rng = np.random.default_rng()
    offsets = np.array([0, 7, 7, 40, 41])
    p, g, m, v, buf = (dev.asarray(rng.normal(size=41).astype(np.float32)) for _ in range(5))
    v = dev.xp.abs(v)
    p[7:40] = 0.0  # a zero-norm parameter: trust ratio 1
    before = DeviceArray.syncs
    unfused.lamb_update(dev, p, g, m, v, offsets, 1e-2, 0.9, 0.999, 1e-6, 0.01, 3)
    unfused.lars_update(dev, p, g, buf if momentum else None, offsets, 0.1, momentum, 1e-4, 1e-3)
    assert DeviceArray.syncs == before
    assert isinstance(p, DeviceArray) and np.isfinite(p.view(np.ndarray)).all()


@pytest.mark.parametrize("fn", ["cross_entropy", "focal_loss"])
def test_class_losses_check_targets_without_a_host_sync(dev, fn):
    """On a device the target range check is a device flag: the loss and its backward
    read nothing; dp.check_deferred() reads it (one transfer) and names the bad class.
    With the debug switch the check is eager again: one read, raised at the loss."""
    rng = np.random.default_rng()
    logits = dp.tensor(rng.normal(size=(6, 5))).to("cuda").requires_grad_()
    target = dp.tensor(rng.integers(0, 5, 6)).to("cuda")
    before = DeviceArray.syncs
    loss = getattr(dp.nn.functional, fn)(logits, target)
    loss.backward()
    assert DeviceArray.syncs == before
    dp.check_deferred()
    assert DeviceArray.syncs - before == 1
    bad = dp.tensor(np.array([0, 1, 5, 2, 3, 4])).to("cuda")
    ce = dp.nn.functional.cross_entropy  # as CuPy's kernels, runs on a bad target (NaN loss)
    ce(logits, target)
    assert not np.isfinite(ce(logits, bad).numpy())
    ce(logits, -1 - bad)
    with pytest.raises(ValueError, match=r"target class 5 is out of range for 5 classes .*2 batches"):
        dp.check_deferred()
    dp.check_deferred()  # read and cleared
    before = DeviceArray.syncs
    with dp.eager_checks(), pytest.raises(ValueError, match="target class -6 is out of range"):
        getattr(dp.nn.functional, fn)(logits, -1 - bad)
    assert DeviceArray.syncs - before == 1
