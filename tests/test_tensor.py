"""Tensor creation, dtype rules, conversion and the errors bad input gets."""
import numpy as np
import pytest

import dlprimer as dp
from dlprimer.backend.cpu import CPUBackend


def test_python_data_dtype_rules(backend):
    assert dp.tensor(1.5).dtype == dp.float32
    assert dp.tensor([1.0, 2.0]).dtype == dp.float32
    assert dp.tensor(3).dtype == dp.int64
    assert dp.tensor([[1, 2], [3, 4]]).dtype == dp.int64
    assert dp.tensor([True, False]).dtype == dp.bool_
    assert dp.tensor([1, 2], dtype="float64").dtype == dp.float64


def test_numpy_arrays_keep_their_dtype(backend, rng):
    for dt in (np.float64, np.float32, np.int32, np.int64):
        a = rng.standard_normal(4).astype(dt)
        t = dp.tensor(a)
        assert t.dtype == dt
        np.testing.assert_array_equal(t.numpy(), a)


def test_python_scalars_take_the_tensor_dtype(backend, rng):
    for dt in ("float32", "float64"):
        t = dp.tensor(rng.standard_normal(3), dtype=dt)
        for r in (t * 2.5, 2.5 + t, t / 3, 1 - t, t ** 2.0, t * 2):
            assert r.dtype == np.dtype(dt)


def test_float64_flows_through(backend, rng):
    x = dp.tensor(rng.standard_normal((3, 4)), dtype="float64", requires_grad=True)
    y = ((x @ x.T).tanh().exp() / 2).mean()
    y.backward()
    assert y.dtype == dp.float64 and x.grad.dtype == dp.float64


def test_creation_functions(backend):
    dp.manual_seed(0)
    assert dp.zeros(2, 3).shape == (2, 3) and dp.zeros(2, 3).numpy().sum() == 0
    assert dp.ones((2, 3)).numpy().sum() == 6
    assert dp.empty(4).shape == (4,)
    np.testing.assert_array_equal(dp.full((2,), 7.0).numpy(), [7, 7])
    r = dp.randn(1000)
    assert r.dtype == dp.float32 and abs(float(r.numpy().mean())) < 0.2
    u = dp.rand(1000, dtype="float64")
    assert u.dtype == dp.float64 and 0 <= u.numpy().min() and u.numpy().max() < 1
    np.testing.assert_array_equal(dp.arange(4).numpy(), [0, 1, 2, 3])
    assert dp.arange(4).dtype == dp.int64 and dp.arange(0, 1, 0.5).dtype == dp.float32
    assert dp.zeros(3, requires_grad=True).requires_grad


def test_manual_seed_reproduces(backend):
    dp.manual_seed(123)
    a = dp.randn(5).numpy()
    dp.manual_seed(123)
    np.testing.assert_array_equal(dp.randn(5).numpy(), a)


def test_conversions(backend, rng):
    a = rng.standard_normal((2, 2))
    t = dp.tensor(a)
    assert isinstance(t.numpy(), np.ndarray)
    assert t.tolist() == a.tolist()
    assert dp.tensor([[2.5]]).item() == 2.5
    with pytest.raises(ValueError, match="one element"):
        t.item()
    assert float(dp.tensor(1.5)) == 1.5


def test_from_numpy_shares_memory_on_cpu(rng):
    a = rng.standard_normal(3)
    t = dp.from_numpy(a)
    a[0] = 42.0
    assert t.numpy()[0] == 42.0
    with pytest.raises(TypeError):
        dp.from_numpy([1, 2])


def test_dlpack_roundtrip(backend, rng):
    a = rng.standard_normal((3, 2)).astype(np.float32)
    t = dp.from_dlpack(a)
    np.testing.assert_array_equal(t.numpy(), a)
    back = np.from_dlpack(dp.tensor(a).to("cpu"))
    np.testing.assert_array_equal(back, a)
    assert dp.tensor(a).__dlpack_device__()[0] in (1, 2)


def test_to_same_backend_is_identity(backend):
    t = dp.ones(3)
    assert t.to(backend) is t
    assert t.to("float64").dtype == dp.float64


def test_unknown_dtype_lists_valid_ones():
    with pytest.raises(ValueError, match="float32"):
        dp.zeros(3, dtype="float31")
    with pytest.raises(ValueError, match="valid dtypes"):
        dp.tensor([1, 2], dtype="complex64")


def test_unknown_backend_lists_valid_ones():
    with pytest.raises(ValueError, match="cpu, cuda, auto"):
        dp.zeros(3, backend="tpu")
    with pytest.raises(ValueError, match="valid backends"):
        dp.set_backend("metal")


def test_ops_on_two_backends_raise_naming_both(rng):
    class Other(CPUBackend):
        name = "other"
    a = dp.tensor(rng.standard_normal(3))
    b = dp.Tensor(rng.standard_normal(3), False, Other())
    with pytest.raises(RuntimeError, match="'cpu'.*'other'"):
        a + b
    with pytest.raises(RuntimeError, match="two backends"):
        dp.matmul(a, b)


def test_matmul_shape_mismatch_names_both_shapes(backend, rng):
    a, b = dp.randn(3, 4), dp.randn(5, 2)
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(5, 2\)"):
        a @ b
    with pytest.raises(ValueError, match="do not broadcast"):
        dp.randn(2, 3, 4) @ dp.randn(3, 4, 5)
    with pytest.raises(ValueError, match="at least one dimension"):
        dp.tensor(2.0) @ dp.randn(3)


def test_other_shape_errors_are_clear(backend):
    with pytest.raises(ValueError, match="cannot reshape"):
        dp.randn(2, 3).reshape(4, 2)
    with pytest.raises(ValueError, match="out of range"):
        dp.randn(2, 3).sum(axis=2)
    with pytest.raises(ValueError, match="do not match"):
        dp.concat([dp.randn(2, 3), dp.randn(2, 4)], axis=0)
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(dp.ones(3))


def test_requires_grad_only_for_floats():
    with pytest.raises(RuntimeError, match="floating-point"):
        dp.tensor([1, 2], requires_grad=True)


def test_repr_is_readable():
    t = dp.tensor([1.0, 2.0], requires_grad=True)
    assert "requires_grad=True" in repr(t)
    assert "grad_fn=Mul" in repr(t * 2)
