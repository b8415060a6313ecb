"""Every core op passes gradcheck in float64 on fresh random inputs,
broadcast shapes included."""
import numpy as np
import pytest

import dlprimer as dp


def T(rng, *shape, low=None, positive=False):
    a = rng.standard_normal(shape)
    if positive:
        a = np.abs(a) + 0.5
    if low is not None:
        a = a + low
    return dp.tensor(a, dtype="float64", requires_grad=True)


BINARY_SHAPES = [((3, 4), (3, 4)), ((4, 1, 5), (3, 1)), ((4, 1, 5), (5,)), ((3, 1), (4, 1, 5)),
                 ((2, 3), ())]


@pytest.mark.parametrize("sa,sb", BINARY_SHAPES)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_binary_broadcast(backend, rng, op, sa, sb):
    a = T(rng, *sa)
    b = T(rng, *sb, positive=(op == "div"))
    f = {"add": lambda x, y: x + y, "sub": lambda x, y: x - y,
         "mul": lambda x, y: x * y, "div": lambda x, y: x / y}[op]
    assert dp.gradcheck(f, (a, b))


def test_three_way_broadcast(backend, rng):
    a, b, c = T(rng, 4, 1, 5), T(rng, 3, 1), T(rng, 5)
    assert dp.gradcheck(lambda a, b, c: a * b + c / (b * b + 1) - a * c, (a, b, c))


@pytest.mark.parametrize("op", ["radd", "rsub", "rmul", "rdiv", "neg", "pow2", "pow3", "powf", "rpow"])
def test_scalar_ops(backend, rng, op):
    x = T(rng, 3, 4, positive=op in ("rdiv", "powf"))
    f = {"radd": lambda x: 2.5 + x, "rsub": lambda x: 1.5 - x, "rmul": lambda x: 3 * x,
         "rdiv": lambda x: 2.0 / x, "neg": lambda x: -x, "pow2": lambda x: x ** 2,
         "pow3": lambda x: x ** 3, "powf": lambda x: x ** 1.7, "rpow": lambda x: 1.8 ** x}[op]
    assert dp.gradcheck(f, (x,))


def test_tensor_pow(backend, rng):
    a = T(rng, 3, 4, positive=True)
    b = T(rng, 4)
    assert dp.gradcheck(lambda a, b: a ** b, (a, b))


@pytest.mark.parametrize("sa,sb", [((5,), (5,)), ((3, 5), (5,)), ((5,), (5, 4)), ((3, 5), (5, 4)),
                                   ((2, 3, 5), (5, 4)), ((3, 5), (2, 5, 4)), ((2, 1, 3, 5), (4, 5, 2)),
                                   ((4,), (2, 4, 3))])
def test_matmul(backend, rng, sa, sb):
    a, b = T(rng, *sa), T(rng, *sb)
    assert dp.gradcheck(lambda a, b: a @ b, (a, b))


@pytest.mark.parametrize("name", ["exp", "log", "sqrt", "abs", "tanh", "sigmoid", "relu"])
def test_unary(backend, rng, name):
    x = T(rng, 3, 5, positive=name in ("log", "sqrt"))
    if name in ("abs", "relu"):  # keep away from the kink at 0
        x = dp.tensor(np.where(np.abs(x.numpy()) < 1e-2, 0.5, x.numpy()), dtype="float64",
                      requires_grad=True)
    assert dp.gradcheck(lambda t: getattr(t, name)(), (x,))
    assert dp.gradcheck(lambda t: getattr(dp, name)(t), (x,))


@pytest.mark.parametrize("axis", [None, 0, 1, -1, (0, 2), (2, 0, 1)])
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("name", ["sum", "mean", "max", "min"])
def test_reductions(backend, rng, name, axis, keepdims):
    x = T(rng, 3, 4, 5)
    assert dp.gradcheck(lambda t: getattr(t, name)(axis=axis, keepdims=keepdims), (x,))


def test_max_ties_share_gradient(backend):
    x = dp.tensor([1.0, 3.0, 3.0, 2.0], dtype="float64", requires_grad=True)
    x.max().backward()
    np.testing.assert_allclose(x.grad.numpy(), [0, 0.5, 0.5, 0])


def test_reshape_transpose(backend, rng):
    x = T(rng, 2, 3, 4)
    assert dp.gradcheck(lambda t: t.reshape(4, 6) * dp.arange(6, dtype="float64"), (x,))
    assert dp.gradcheck(lambda t: t.reshape((6, -1)).T, (x,))
    assert dp.gradcheck(lambda t: t.transpose(2, 0, 1) * dp.arange(3, dtype="float64"), (x,))
    assert dp.gradcheck(lambda t: dp.transpose(t, (1, 2, 0)), (x,))


@pytest.mark.parametrize("index", [
    (slice(1, 3),), (slice(None, None, 2), 1), (1, slice(None), -1), (Ellipsis, 2),
    (slice(None, None, -1),), (None, 0)])
def test_basic_indexing(backend, rng, index):
    x = T(rng, 4, 5, 3)
    assert dp.gradcheck(lambda t: t[index], (x,))


def test_integer_array_indexing_accumulates(backend, rng):
    x = T(rng, 5, 3)
    idx = np.array([0, 2, 2, 4, 0, 0])
    assert dp.gradcheck(lambda t: t[idx], (x,))
    assert dp.gradcheck(lambda t: t[dp.tensor(idx), 1], (x,))
    assert dp.gradcheck(lambda t: t[[1, 1, 3], [0, 0, 2]], (x,))
    y = dp.ones(5, dtype="float64", requires_grad=True)
    y[dp.tensor([1, 1, 1, 4])].sum().backward()
    np.testing.assert_array_equal(y.grad.numpy(), [0, 3, 0, 0, 1])


def test_boolean_mask_indexing(backend, rng):
    # Each element at least 0.1 from zero, with a random sign: gradcheck's perturbation
    # must not flip an element across 0 and change the mask it selects with.
    signs = np.where(rng.random((4, 5)) < 0.5, -1.0, 1.0)
    x = dp.tensor(signs * (np.abs(rng.standard_normal((4, 5))) + 0.1), dtype="float64",
                  requires_grad=True)
    mask = x.numpy() > 0
    assert dp.gradcheck(lambda t: t[mask], (x,))
    assert dp.gradcheck(lambda t: t[t.detach() > 0] * 2, (x,))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat_stack(backend, rng, axis):
    a, b, c = T(rng, 2, 3), T(rng, 2, 3), T(rng, 2, 3)
    assert dp.gradcheck(lambda a, b, c: dp.concat([a, b, c], axis=axis), (a, b, c))
    assert dp.gradcheck(lambda a, b, c: dp.stack([a, b, c], axis=axis), (a, b, c))
    d = T(rng, 2, 5)
    assert dp.gradcheck(lambda a, d: dp.concat([a, d], axis=1), (a, d))


def test_where_maximum_minimum_clip(backend, rng):
    a, b = T(rng, 3, 4), T(rng, 4)
    cond = rng.standard_normal((3, 4)) > 0
    assert dp.gradcheck(lambda a, b: dp.where(cond, a, b), (a, b))
    assert dp.gradcheck(lambda a, b: dp.where(dp.tensor(cond), a * 2, 1.0), (a, b))
    assert dp.gradcheck(lambda a, b: dp.maximum(a, b), (a, b))
    assert dp.gradcheck(lambda a, b: dp.minimum(a, b), (a, b))
    assert dp.gradcheck(lambda a: dp.maximum(a, 0.1), (a,))
    assert dp.gradcheck(lambda a: dp.clip(a, -0.5, 0.5), (a,))
    assert dp.gradcheck(lambda a: a.clip(min=0.2), (a,))


def test_composite_mlp_gradients(backend, rng):
    x = dp.tensor(rng.standard_normal((6, 4)), dtype="float64")
    w1, b1, w2 = T(rng, 4, 8), T(rng, 8), T(rng, 8, 3)
    f = lambda w1, b1, w2: ((x @ w1 + b1).tanh() @ w2).sigmoid().mean(axis=0)  # noqa: E731
    assert dp.gradcheck(f, (w1, b1, w2))


def test_comparisons_have_no_gradient(backend, rng):
    a, b = T(rng, 3), T(rng, 3)
    for r in (a < b, a <= b, a > b, a >= b, a == b, a != b, a > 0.0):
        assert r.dtype == dp.bool_ and not r.requires_grad
    np.testing.assert_array_equal((a < b).numpy(), a.numpy() < b.numpy())


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh"])
def test_core_activations_keep_dtype(backend, rng, name, dtype):
    x = dp.tensor(rng.standard_normal((3, 70_000)), dtype=dtype, requires_grad=True)
    y = getattr(x, name)()
    y.backward(dp.ones_like(y))  # a float16 sum of 210k values would overflow
    assert y.dtype == np.dtype(dtype) and x.grad.dtype == np.dtype(dtype)
    ref = {"relu": lambda a: a > 0, "sigmoid": lambda a: (1 / (1 + np.exp(-a))) * (1 / (1 + np.exp(a))),
           "tanh": lambda a: 1 - np.tanh(a) ** 2}[name](x.numpy().astype(np.float64))
    tol = 2e-3 if dtype == "float16" else 1e-6
    np.testing.assert_allclose(x.grad.numpy().astype(np.float64), ref, rtol=tol, atol=tol)


def test_pow_zero_has_zero_gradient_even_at_zero(backend):
    x = dp.tensor([0.0, 2.0, -1.5], dtype="float64", requires_grad=True)
    (x ** 0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0, 0.0])
