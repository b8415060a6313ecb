"""The CPU fast paths of the performance push (issue 9) compute the same numbers as
the plain paths: gradients written straight into an optimizer's arena
(``Function.leaf_grad_out``), BLAS axpy in the optimizer updates, the engine's
dependency count, and the g.g non-finite check."""
import numpy as np
import pytest

import dlprimer as dp
import dlprimer.nn as nn
import dlprimer.nn.functional as F
from dlprimer import optim
from dlprimer.backend.cpu import _axpy


def _grads(build, with_optimizer, steps=1):
    """Gradients of build()'s parameters after ``steps`` backward passes (no zeroing)."""
    model, loss_fn = build()
    if with_optimizer:
        opt = optim.SGD(model.parameters(), lr=0.1)
        opt.zero_grad()
    for _ in range(steps):
        loss_fn(model).backward()
    return model, [p.grad.numpy().copy() for p in model.parameters()]


def _mlp_builder(rng, tied=False):
    x = rng.standard_normal((5, 6)).astype("float32")
    y = rng.integers(0, 6, 5)
    state = {}

    def build():
        dp.manual_seed(3)
        net = nn.MLP([6, 7, 6])
        if not state:
            state.update({k: v.numpy().copy() for k, v in net.state_dict().items()})
        if tied:  # every parameter used by two nodes: two contributions to add
            def loss_fn(m):
                xt = dp.tensor(x)
                return F.cross_entropy(m(xt) + m(xt * 0.5), dp.tensor(y))
        else:
            def loss_fn(m):
                return F.cross_entropy(m(dp.tensor(x)), dp.tensor(y))
        return net, loss_fn
    return build


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("steps", [1, 2])
def test_arena_gradients_match_plain_gradients(rng, tied, steps):
    build = _mlp_builder(rng, tied)
    _, ref = _grads(build, with_optimizer=False, steps=steps)
    model, got = _grads(build, with_optimizer=True, steps=steps)
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
    arena = next(iter(model.parameters()))._grad_arena
    for p in model.parameters():  # every gradient is a view of the arena, not a copy
        assert np.shares_memory(p.grad.data, arena)


def test_linear_writes_weight_gradient_into_the_arena(rng):
    lin = nn.Linear(4, 3)
    opt = optim.SGD(lin.parameters(), lr=0.1)
    x = dp.tensor(rng.standard_normal((8, 4)).astype("float32"))
    opt.zero_grad()
    out = lin(x)
    node = out.grad_fn
    buf = lin.weight._grad_buffer
    assert node.leaf_grad_out(1, (3, 4), np.dtype("float32")) is buf
    assert node.leaf_grad_out(1, (4, 3), np.dtype("float32")) is None  # wrong shape
    assert node.leaf_grad_out(1, (3, 4), np.dtype("float64")) is None  # wrong dtype
    assert node.leaf_grad_out(0, (8, 4), np.dtype("float32")) is None  # not a parameter
    out.sum().backward()
    assert lin.weight.grad.data is buf
    np.testing.assert_allclose(buf, np.ones((8, 3), np.float32).T @ x.numpy(), rtol=1e-5)
    assert node.next_edges[1].grad is not None
    assert node.leaf_grad_out(1, (3, 4), np.dtype("float32")) is None  # accumulates instead


def test_same_leaf_twice_in_one_node_is_not_written_in_place(rng):
    w = dp.tensor(rng.standard_normal((3, 3)).astype("float32"), requires_grad=True)
    w_ref = dp.tensor(w.numpy().copy(), requires_grad=True)
    optim.SGD([w], lr=0.1).zero_grad()
    F.linear(w, w).sum().backward()  # W is input and weight of one node
    F.linear(w_ref, w_ref).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), w_ref.grad.numpy(), rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_axpy_in_place(rng, dtype):
    x = rng.standard_normal(1000).astype(dtype)
    y = rng.standard_normal(1000).astype(dtype)
    want = y.astype("float64") + (-0.3) * x.astype("float64")
    out = _axpy(-0.3, x, y, np.empty(1000, dtype))
    assert out is y
    np.testing.assert_allclose(y, want, rtol=1e-2 if dtype == "float16" else 1e-5, atol=1e-3)


def test_axpy_strided_falls_back(rng):
    x = rng.standard_normal(20).astype("float32")[::2]
    y = rng.standard_normal(10).astype("float32")
    want = y + 2.0 * x
    assert _axpy(2.0, x, y, np.empty(10, "float32")) is y
    np.testing.assert_allclose(y, want, rtol=1e-6)


def test_nonfinite_check_survives_overflowing_dot(rng):
    """g.g overflows for huge finite gradients: the per-parameter search then finds
    nothing and the step runs."""
    p = dp.tensor(rng.standard_normal(4).astype("float32"), requires_grad=True)
    opt = optim.SGD([p], lr=1e-30)
    p.grad = dp.tensor(np.full(4, 1e30, np.float32))
    assert opt.step() is True
    p.grad = dp.tensor(np.array([1.0, np.nan, 0, 0], np.float32))
    with pytest.raises(optim.NonFiniteGradientError, match="NaN or inf"):
        opt.step()


def test_engine_counts_shared_nodes(rng):
    """A node reached along several paths runs once, after all its consumers."""
    x = dp.tensor(rng.standard_normal(3).astype("float32"), requires_grad=True)
    h = x * 2.0
    y = (h * h + h * 3.0 + h).sum()
    y.backward()
    xv = x.numpy()
    np.testing.assert_allclose(x.grad.numpy(), 2 * (2 * (2 * xv) + 3 + 1), rtol=1e-5)
