import numpy as np
import pytest

import dlprimer as dp
from dlprimer.autograd import Function


class WrongGrad(Function):
    def forward(self, x):
        self.save(x)
        return x * x

    def backward(self, gy):
        return gy * self.saved[0]  # should be 2x


def test_gradcheck_catches_a_wrong_gradient(rng):
    x = dp.tensor(rng.standard_normal(4) + 2, dtype="float64", requires_grad=True)
    with pytest.raises(dp.GradcheckError, match="disagree"):
        dp.gradcheck(lambda t: WrongGrad.apply(t), (x,))
    assert dp.gradcheck(lambda t: WrongGrad.apply(t), (x,), raise_exception=False) is False


def test_gradcheck_requires_float64(rng):
    x = dp.tensor(rng.standard_normal(4), dtype="float32", requires_grad=True)
    with pytest.raises(ValueError, match="float64"):
        dp.gradcheck(lambda t: t * 2, (x,))


def test_gradcheck_needs_an_input_requiring_grad():
    with pytest.raises(ValueError, match="requires grad"):
        dp.gradcheck(lambda t: t * 2, (dp.ones(3, dtype="float64"),))


def test_gradcheck_leaves_inputs_and_grads_untouched(rng):
    x = dp.tensor(rng.standard_normal(4), dtype="float64", requires_grad=True)
    before = x.numpy().copy()
    dp.gradcheck(lambda t: (t * t).sum(), (x,))
    np.testing.assert_array_equal(x.numpy(), before)
    assert x.grad is None


def test_gradcheck_accepts_non_leaf_inputs(rng):
    x = dp.tensor(rng.standard_normal((4, 3)), dtype="float32", requires_grad=True)
    w = dp.tensor(rng.standard_normal((3, 2)), dtype="float32", requires_grad=True)
    x64, w64 = x.astype("float64"), w.astype("float64")
    assert not x64.is_leaf
    assert dp.gradcheck(lambda a, b: (a @ b).tanh(), (x64, w64))
    assert x.grad is None and w.grad is None
