"""Empty indices and reductions, and the gradients at the edges of pow, max/min and
GELU, where dlprimer used to differ from PyTorch (issue 15, points 6 and 7)."""
import numpy as np
import pytest

import dlprimer as dp
import dlprimer.nn.functional as F


# -- point 6: empty results are tensors, not errors ---------------------------------------
def test_indexing_with_an_empty_list_gives_an_empty_tensor(backend, rng):
    t = dp.tensor(rng.standard_normal((3, 4)), dtype="float64", requires_grad=True)
    e = t[[]]
    assert e.shape == (0, 4) and e.dtype == dp.float64
    assert t[:, []].shape == (3, 0)
    (e.sum() + t[[2, 0]].sum()).backward()
    want = np.zeros((3, 4))
    want[[2, 0]] = 1
    np.testing.assert_array_equal(t.grad.numpy(), want)


@pytest.mark.parametrize("name", ["max", "min"])
def test_reductions_over_non_empty_axes_of_an_empty_tensor(backend, name):
    z = dp.zeros(1, 0)
    r = getattr(z, name)(axis=0)
    assert r.shape == (0,)
    assert getattr(dp.zeros(2, 0, 3), name)(axis=(0, 2)).shape == (0,)
    with pytest.raises(ValueError, match=f"{name}\\(\\) over axis 1 of size 0"):
        getattr(z, name)(axis=1)
    with pytest.raises(ValueError, match="of size 0"):
        getattr(z, name)()


# -- point 7: gradients at the edges --------------------------------------------------------
def test_pow_gradients_at_zero_match_pytorch(backend, rng):
    torch = pytest.importorskip("torch")
    a_np = np.array([0.0, 0.0, 0.0, 1.5, 2.0, -1.0] + list(rng.uniform(0.1, 2, 4)))
    b_np = np.array([2.0, 0.0, 0.5, 0.0, 3.0, 2.0] + list(rng.uniform(-2, 2, 4)))
    a = dp.tensor(a_np, dtype="float64", requires_grad=True)
    b = dp.tensor(b_np, dtype="float64", requires_grad=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        (a ** b).sum().backward()
    ta = torch.tensor(a_np, requires_grad=True)
    tb = torch.tensor(b_np, requires_grad=True)
    (ta ** tb).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), ta.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(b.grad.numpy(), tb.grad.numpy(), rtol=1e-12)
    assert b.grad.numpy()[0] == 0 and not np.isnan(b.grad.numpy()[:5]).any()
    pos = dp.tensor(rng.uniform(0.5, 2, 5), dtype="float64", requires_grad=True)
    ex = dp.tensor(rng.uniform(-2, 2, 5), dtype="float64", requires_grad=True)
    assert dp.gradcheck(lambda x, y: x ** y, (pos, ex))


@pytest.mark.parametrize("name", ["max", "min"])
def test_max_min_send_a_nan_result_gradient_only_to_the_nans(backend, rng, name):
    x_np = rng.standard_normal((3, 5))
    x_np[0, 2] = np.nan
    x_np[1, 1] = x_np[1, 3] = np.nan
    x = dp.tensor(x_np, dtype="float64", requires_grad=True)
    g = rng.standard_normal(3)
    getattr(x, name)(axis=1).backward(dp.tensor(g, dtype="float64"))
    want = np.zeros((3, 5))
    want[0, 2] = g[0]
    want[1, 1] = want[1, 3] = g[1] / 2
    want[2, getattr(np, "arg" + name)(x_np[2])] = g[2]
    np.testing.assert_allclose(x.grad.numpy(), want, rtol=1e-12)
    y = dp.tensor(x_np, dtype="float64", requires_grad=True)
    getattr(y, name)().backward()
    assert np.isnan(y.grad.numpy()).sum() == 0 and y.grad.numpy().sum() == pytest.approx(1.0)
    clean = dp.tensor(rng.standard_normal((3, 4)), dtype="float64", requires_grad=True)
    assert dp.gradcheck(lambda t: getattr(t, name)(axis=1), (clean,))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_of_huge_float64_inputs_is_x(backend, fused, approximate):
    big = np.array([1e308, 9e307, 1.7e308, -1e308, -9e307])
    with dp.fusion(fused), np.errstate(over="ignore", invalid="ignore"):
        y = F.gelu(dp.tensor(big, dtype="float64"), approximate=approximate).numpy()
    np.testing.assert_array_equal(y, np.where(big > 0, big, 0.0))


def test_edge_cases_on_the_cuda_code_path_without_a_gpu(monkeypatch, rng):
    """The same fixes through the fake device (tests/_fake_device.py), whose xp refuses
    host arrays as CuPy does: no NumPy array may leak into these code paths."""
    from _fake_device import DeviceArray, installed
    with installed(monkeypatch), dp.use_backend("cuda"):
        a = dp.tensor(np.array([0.0, 0.0, 1.5]), dtype="float64", requires_grad=True)
        b = dp.tensor(np.array([2.0, 0.0, rng.uniform(0.5, 2)]), dtype="float64", requires_grad=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            (a ** b).sum().backward()
        assert isinstance(b.grad.data, DeviceArray)
        np.testing.assert_array_equal(a.grad.numpy()[:2], 0)
        np.testing.assert_array_equal(b.grad.numpy()[:2], 0)
        x = dp.tensor(np.array([[1.0, np.nan, 3.0], [1.0, 5.0, 2.0]]), dtype="float64",
                      requires_grad=True)
        x.max(axis=1).sum().backward()
        np.testing.assert_array_equal(x.grad.numpy(), [[0, 1, 0], [0, 1, 0]])
        t = dp.tensor(rng.standard_normal(3), dtype="float32")
        assert t[[]].shape == (0,) and dp.zeros(1, 0).min(axis=0).shape == (0,)
        i = dp.tensor(rng.integers(1, 9, 3))
        assert (i / 2).dtype == dp.float32 and (i + t).dtype == dp.float32
