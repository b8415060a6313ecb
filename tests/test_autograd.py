"""The engine: depth without recursion, release of saved arrays, graph modes, errors."""
import gc
import sys
import weakref

import numpy as np
import pytest

import dlprimer as dp
from dlprimer.autograd import Function, observe


def test_chain_of_10000_ops_has_no_recursion_limit(backend):
    x = dp.tensor(0.5, dtype="float64", requires_grad=True)
    y = x
    limit = sys.getrecursionlimit()
    for _ in range(10_000):
        y = y * 1.0001 + 0.0
    y.backward()
    assert sys.getrecursionlimit() == limit
    np.testing.assert_allclose(x.grad.item(), 1.0001 ** 10_000, rtol=1e-9)


def test_deep_mlp_of_1000_layers_backprops(backend, rng):
    x = dp.tensor(rng.standard_normal((2, 4)), requires_grad=True)
    ws = [dp.tensor(np.eye(4) + 0.01 * rng.standard_normal((4, 4)), dtype="float32",
                    requires_grad=True) for _ in range(1000)]
    h = x
    for w in ws:
        h = (h @ w).tanh()
    h.sum().backward()
    assert all(w.grad is not None and np.isfinite(w.grad.numpy()).all() for w in ws)


def test_saved_arrays_are_released_after_backward(backend, rng):
    x = dp.tensor(rng.standard_normal((8, 8)), requires_grad=True)
    a = x * 2
    h = (a @ a).tanh()
    del a  # now only the graph holds a's array
    node = h.grad_fn
    saved_ref = weakref.ref(node.saved[0])
    mm_node = node.next_edges[0]
    mm_refs = [weakref.ref(a) for a in mm_node.saved if a is not None]
    assert mm_refs
    loss = h.sum()
    del h  # tanh saves its output, which h also holds
    loss.backward()
    gc.collect()
    assert node.saved is None and mm_node.saved is None
    assert saved_ref() is None
    assert all(r() is None for r in mm_refs)


def test_retain_graph_allows_second_backward(backend, rng):
    x = dp.tensor(rng.standard_normal(5), dtype="float64", requires_grad=True)
    y = (x.exp() * x).sum()
    y.backward(retain_graph=True)
    g1 = x.grad.numpy().copy()
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * g1)


def test_backward_twice_through_freed_graph_raises(backend, rng):
    x = dp.tensor(rng.standard_normal(5), requires_grad=True)
    y = (x.exp() * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


def test_backward_of_non_scalar_needs_grad(backend, rng):
    x = dp.tensor(rng.standard_normal((2, 3)), requires_grad=True)
    y = x * 2
    with pytest.raises(RuntimeError, match="non-scalar"):
        y.backward()
    y.backward(dp.ones(2, 3))
    np.testing.assert_allclose(x.grad.numpy(), 2.0)


def test_backward_without_grad_fn_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        dp.ones(3).sum().backward()


def test_gradients_accumulate_across_backward_calls(backend, rng):
    x = dp.tensor(rng.standard_normal(4), dtype="float64", requires_grad=True)
    (x * 3).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 3 + 2 * x.numpy())


def test_shared_gradient_arrays_are_not_aliased(backend, rng):
    a = dp.tensor(rng.standard_normal(3), requires_grad=True)
    b = dp.tensor(rng.standard_normal(3), requires_grad=True)
    (a + b).sum().backward()
    a.grad.data += 1
    np.testing.assert_allclose(b.grad.numpy(), 1.0)


def test_no_grad_and_enable_grad(backend, rng):
    x = dp.tensor(rng.standard_normal(3), requires_grad=True)
    with dp.no_grad():
        assert not dp.is_grad_enabled()
        y = x * 2
        with dp.enable_grad():
            z = x * 2
    assert dp.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None
    assert z.requires_grad and z.grad_fn is not None

    @dp.no_grad()
    def f(t):
        return t * 3
    assert not f(x).requires_grad


def test_detach_cuts_the_graph(backend, rng):
    x = dp.tensor(rng.standard_normal(3), dtype="float64", requires_grad=True)
    y = x * x.detach()
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), x.numpy())
    assert x.detach().data is x.data


def test_diamond_graph(backend, rng):
    x = dp.tensor(rng.standard_normal(4), dtype="float64", requires_grad=True)
    assert dp.gradcheck(lambda x: (x.exp() + x.tanh()) * x.sigmoid() + x, (x,))


def test_observer_sees_forward_flops_and_backward_order(backend, rng):
    class Obs:
        def __init__(self):
            self.fwd, self.bwd = [], []

        def on_forward(self, node):
            self.fwd.append((node.name, node.flops()))

        def on_backward_begin(self, node):
            self.bwd.append(node.name)

    x = dp.randn(8, 16)
    w = dp.randn(16, 4, requires_grad=True)
    with observe(Obs()) as obs:
        loss = (x @ w).relu().sum()
        loss.backward()
    assert obs.fwd[0] == ("MatMul", (2 * 8 * 16 * 4, 2 * 8 * 16 * 4))
    assert obs.bwd == ["Sum", "ReLU", "MatMul"]


def test_custom_function(backend, rng):
    class Cube(Function):
        def forward(self, x):
            self.save(x)
            return x ** 3

        def backward(self, gy):
            (x,) = self.saved
            return 3 * x * x * gy

    x = dp.tensor(rng.standard_normal(5), dtype="float64", requires_grad=True)
    assert dp.gradcheck(lambda t: Cube.apply(t), (x,))


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # the injected inf
def test_detect_anomaly_names_the_op_and_line(backend):
    x = dp.tensor([1.0, 0.0, 2.0], requires_grad=True)
    with dp.detect_anomaly():
        y = x.sqrt()  # d/dx sqrt at 0 is inf
        with pytest.raises(RuntimeError) as ei:
            y.sum().backward()
    msg = str(ei.value)
    assert "Sqrt" in msg and "test_autograd.py" in msg and "x.sqrt()" in msg


# -- a leaf's first gradient: owned when nothing else holds it, copied otherwise ----------
class _Returns(Function):
    """y = 2x; backward returns a fresh array, or one it keeps, or a view, per ``how``."""
    def forward(self, x, how="fresh"):
        self.how = how
        return 2 * x

    def backward(self, gy):
        g = 2 * gy
        if self.how == "kept":
            self.kept = g
            return g
        if self.how == "view":
            self.whole = np.concatenate([g.reshape(-1), g.reshape(-1)])
            return self.whole[:g.size].reshape(g.shape)
        _Returns.address = g.__array_interface__["data"][0]   # not a reference: a second
        return g                                              # holder would force a copy


def test_a_fresh_gradient_nothing_else_holds_becomes_the_leafs_grad_without_a_copy(rng):
    x = dp.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    _Returns.apply(x).sum().backward()
    assert x.grad.data.__array_interface__["data"][0] == _Returns.address
    np.testing.assert_array_equal(x.grad.numpy(), np.full((3, 4), 2.0))


@pytest.mark.parametrize("how", ["kept", "view"])
def test_a_gradient_held_or_viewed_elsewhere_is_copied(rng, how):
    x = dp.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    y = _Returns.apply(x, how=how)
    y.sum().backward(retain_graph=True)
    node = y._node
    held = node.kept if how == "kept" else node.whole[:12].reshape(3, 4)
    x.grad.data[...] = 7.0       # the leaf's grad is its own: the other holder is unchanged
    np.testing.assert_array_equal(held, np.full((3, 4), 2.0))


def test_one_gradient_handed_to_two_leaves_or_one_leaf_twice_stays_separate(rng):
    a = dp.tensor(rng.standard_normal(5), requires_grad=True)
    b = dp.tensor(rng.standard_normal(5), requires_grad=True)
    (a + b).sum().backward()
    a.grad.data[0] = 100.0
    np.testing.assert_array_equal(b.grad.numpy(), np.ones(5))
    c = dp.tensor(rng.standard_normal(5), requires_grad=True)
    (c + c).sum().backward()
    np.testing.assert_array_equal(c.grad.numpy(), np.full(5, 2.0))
