"""Type promotion of + - * / ** @: PyTorch's rules with float32 as the default float
(NumPy alone gives float64 for int / int, int64 + float32 and int + 2.5)."""
import itertools

import numpy as np
import pytest

import dlprimer as dp
from dlprimer._dtype import result_type

DTYPES = ["bool", "uint8", "int8", "int32", "int64", "float16", "float32", "float64"]
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
       "/": lambda a, b: a / b}


def _values(rng, dtype, shape):
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype == "uint8":
        return rng.integers(1, 5, shape).astype(dtype)
    return (rng.integers(1, 5, shape) * rng.choice([-1, 1], shape)).astype(dtype)


def test_the_issue_examples(backend, rng):
    i = dp.tensor(rng.integers(1, 9, 5))
    f = dp.tensor(rng.standard_normal(5), dtype="float32")
    assert (i / 2).dtype == dp.float32
    np.testing.assert_allclose((i / 2).numpy(), i.numpy() / 2)
    assert (i + f).dtype == dp.float32 and (f + i).dtype == dp.float32
    assert (i * 2.5).dtype == dp.float32 and (i / i).dtype == dp.float32
    assert (i + 1).dtype == dp.int64 and (i ** 2).dtype == dp.int64
    assert (f * np.float64(2.0)).dtype == dp.float32  # a NumPy scalar is a number


@pytest.mark.parametrize("op", list(OPS))
def test_tensor_pairs_match_pytorch(op, rng):
    torch = pytest.importorskip("torch")
    for da, db in itertools.product(DTYPES, DTYPES):
        for sa, sb in (((3,), (3,)), ((3,), ()), ((), (3,))):
            if op == "-" and "bool" in (da, db):
                continue  # PyTorch refuses - on bool
            a, b = _values(rng, da, sa), _values(rng, db, sb)
            with np.errstate(divide="ignore", invalid="ignore"):  # bool 0 divisors
                want = OPS[op](torch.from_numpy(np.array(a)), torch.from_numpy(np.array(b)))
                got = OPS[op](dp.tensor(a, dtype=da), dp.tensor(b, dtype=db))
            assert str(got.dtype) == str(want.dtype).replace("torch.", ""), (da, sa, op, db, sb)
            np.testing.assert_allclose(got.numpy().astype("float64"),
                                       want.numpy().astype("float64"), rtol=2e-3)


@pytest.mark.parametrize("scalar", [2, 2.5, True])
@pytest.mark.parametrize("op", list(OPS) + ["**"])
def test_tensor_and_python_number_match_pytorch(op, scalar, rng):
    torch = pytest.importorskip("torch")
    fn = OPS.get(op, lambda a, b: a ** b)
    for d in DTYPES:
        if (op == "-" and (d == "bool" or scalar is True)) or (op == "**" and d == "bool"):
            continue
        a = _values(rng, d, (4,))
        if op == "**":
            a = np.abs(a)
        for swap in (False, True):
            f = (lambda x, s: fn(s, x)) if swap else fn
            with np.errstate(divide="ignore", invalid="ignore"):  # bool 0 divisors
                want = f(torch.from_numpy(np.array(a)), scalar)
                got = f(dp.tensor(a, dtype=d), scalar)
            assert str(got.dtype) == str(want.dtype).replace("torch.", ""), (d, op, scalar, swap)


def test_result_type_table():
    f32, i64 = np.zeros(2, "float32"), np.zeros(2, "int64")
    assert result_type(i64, f32) == np.float32
    assert result_type(i64, np.zeros(2, "float16")) == np.float16
    assert result_type(f32, np.zeros((), "float64")) == np.float32   # 0-d does not upgrade
    assert result_type(i64, np.zeros((), "float64")) == np.float64   # ... unless a higher kind
    assert result_type(np.zeros(2, "uint8"), 300) == np.uint8
    assert result_type(np.zeros(2, bool), 1.0) == np.float32


def test_gradients_flow_through_the_promotion_cast(backend, rng):
    a = dp.tensor(rng.standard_normal(4), dtype="float16", requires_grad=True)
    b = dp.tensor(rng.standard_normal(4), dtype="float64", requires_grad=True)
    i = dp.tensor(rng.integers(1, 5, 4))
    y = (a * b + b / i).sum()
    assert y.dtype == dp.float64
    y.backward()
    assert a.grad.dtype == dp.float16 and b.grad.dtype == dp.float64
    np.testing.assert_allclose(b.grad.numpy(), a.numpy().astype("float64") + 1 / i.numpy())
    c = dp.tensor(rng.standard_normal(4) + 0.5, dtype="float64", requires_grad=True)
    assert dp.gradcheck(lambda t: (t * i + t / i - i / (t * t + 1)).sum(), (c,))


@pytest.mark.parametrize("name", ["exp", "log", "sqrt", "tanh", "sigmoid"])
@pytest.mark.parametrize("dtype", ["int64", "int32", "uint8", "bool"])
def test_float_functions_of_integer_tensors_are_float32(backend, rng, name, dtype):
    torch = pytest.importorskip("torch")
    a = _values(rng, dtype, (5,))
    a = np.abs(a) if dtype != "bool" else a
    with np.errstate(divide="ignore"):  # log(False) = -inf
        got = getattr(dp.tensor(a, dtype=dtype), name)()
    want = getattr(torch, name)(torch.from_numpy(np.array(a)))
    assert str(got.dtype) == str(want.dtype).replace("torch.", "") == "float32"
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)
