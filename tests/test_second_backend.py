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
