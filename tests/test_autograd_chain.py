"""The engine's chain path against its general (Kahn's order) path.

``autograd._run_backward`` walks a graph whose nodes each have at most one edge to another
node (a sequential model, a chain of ops) without the consumer counts; any other graph, or
one that is observed, takes the general path. Each test here runs on both (the ``engine``
fixture: ``graph`` turns the chain detection off) and checks the same gradients, errors
and releases, and that the chain path was taken where it should be.
"""
import weakref

import numpy as np
import pytest

import dlprimer as dp
import dlprimer.nn.functional as F
from dlprimer import autograd, nn, optim
from dlprimer.autograd import Function


@pytest.fixture(params=["chain", "graph"])
def engine(request, monkeypatch):
    """Which engine path runs: ``chain`` as the engine chooses, ``graph`` always general."""
    if request.param == "graph":
        monkeypatch.setattr(autograd, "_chain", lambda node0: None)
    return request.param


def _leaf(rng, *shape):
    return dp.tensor(rng.standard_normal(shape), dtype="float64", requires_grad=True)


def _grads_both_ways(build, leaves, monkeypatch):
    """(chain path's gradients, general path's) of ``build().backward()`` on the leaves."""
    out = []
    for chain in (True, False):
        for t in leaves:
            t.grad = None
        with monkeypatch.context() as m:
            if not chain:
                m.setattr(autograd, "_chain", lambda node0: None)
            build().backward()
        out.append([None if t.grad is None else t.grad.numpy().copy() for t in leaves])
    return out


# -- which graphs are chains -----------------------------------------------------------------
def test_a_sequential_model_is_a_chain_and_a_branch_is_not(rng):
    x = dp.tensor(rng.standard_normal((4, 3)))
    net = nn.MLP([3, 5, 2]).to("float64")
    loss = F.cross_entropy(net(x.astype("float64")), dp.tensor(rng.integers(0, 2, 4)))
    path = autograd._chain(loss.grad_fn)
    assert [n.name for n in path] == ["CrossEntropy", "Linear", "ReLU", "Linear"]
    w = _leaf(rng, 3)
    a = w.exp()
    assert autograd._chain((a * a.tanh()).sum().grad_fn) is None   # a feeds two nodes
    assert autograd._chain((a * a).sum().grad_fn) is None           # one node, two edges
    assert autograd._chain((w * w).sum().grad_fn) is not None      # two edges to one leaf


def test_the_chain_path_runs_each_node_once_in_order(rng, monkeypatch):
    order = []
    w = _leaf(rng, 4)
    y = ((w * 2).exp() + 1.0).sum()
    path = autograd._chain(y.grad_fn)
    for n in path:
        orig = n.backward
        monkeypatch.setattr(n, "backward",
                            lambda gy, n=n, orig=orig: (order.append(n), orig(gy))[1])
    y.backward()
    assert order == path
    np.testing.assert_allclose(w.grad.numpy(), 2 * np.exp(2 * w.numpy()))


# -- same gradients on both paths ------------------------------------------------------------
def test_mlp_gradients_agree(rng, monkeypatch):
    net = nn.MLP([6, 8, 8, 3]).to("float64")
    x = dp.tensor(rng.standard_normal((5, 6)), dtype="float64", requires_grad=True)
    y = dp.tensor(rng.integers(0, 3, 5))
    ps = [x] + list(net.parameters())
    chain, graph = _grads_both_ways(lambda: F.cross_entropy(net(x), y), ps, monkeypatch)
    for a, b in zip(chain, graph):
        np.testing.assert_array_equal(a, b)


def test_mlp_gradients_in_the_optimizer_arena_agree(rng, monkeypatch):
    """Gradients computed straight into the arena's slots, on both paths."""
    net = nn.MLP([6, 8, 3]).to("float64")
    opt = optim.SGD(net.parameters(), lr=0.1)
    x = dp.tensor(rng.standard_normal((5, 6)), dtype="float64")
    y = dp.tensor(rng.integers(0, 3, 5))
    ps = list(net.parameters())
    chain, graph = _grads_both_ways(lambda: F.cross_entropy(net(x), y), ps, monkeypatch)
    for a, b, p in zip(chain, graph, ps):
        np.testing.assert_array_equal(a, b)
    opt.zero_grad()
    F.cross_entropy(net(x), y).backward()
    assert all(p.grad.data.base is not None for p in ps)   # views of the arena


def test_graphs_that_are_not_chains_agree_with_finite_differences(rng, engine):
    x = _leaf(rng, 4)
    assert dp.gradcheck(lambda x: (x.exp() + x.tanh()) * x.sigmoid() + x, (x,))
    a = _leaf(rng, 3, 3)
    assert dp.gradcheck(lambda a: ((a @ a).tanh() @ a).sum(), (a,))


def test_chains_agree_with_finite_differences(rng, engine):
    x = _leaf(rng, 5)
    assert dp.gradcheck(lambda x: ((x * 1.5).tanh() * 0.5 + 0.25).exp().sum(), (x,))
    w, b = _leaf(rng, 4, 5), _leaf(rng, 4)
    xi = dp.tensor(rng.standard_normal((3, 5)), dtype="float64")
    assert dp.gradcheck(lambda w, b: F.relu(F.linear(xi, w, b)).sum(), (w, b))


def test_a_leaf_used_twice_by_one_node_or_by_two_nodes_adds_up(rng, monkeypatch):
    w = _leaf(rng, 4)
    chain, graph = _grads_both_ways(lambda: (w * w).sum(), [w], monkeypatch)
    np.testing.assert_allclose(chain[0], 2 * w.numpy())
    np.testing.assert_array_equal(chain[0], graph[0])
    # a tied weight: the same leaf in two Linear nodes of one chain
    W = _leaf(rng, 4, 4)
    x = dp.tensor(rng.standard_normal((3, 4)), dtype="float64")
    chain, graph = _grads_both_ways(lambda: F.linear(F.linear(x, W).tanh(), W).sum(), [W],
                                    monkeypatch)
    np.testing.assert_array_equal(chain[0], graph[0])
    assert dp.gradcheck(lambda W: F.linear(F.linear(x, W).tanh(), W).sum(), (W,))


class _NoGradFor(Function):
    """y = 2x, whose backward gives no gradient at all (None) for its input."""
    def forward(self, x):
        return 2 * x

    def backward(self, gy):
        return None


def test_a_none_gradient_stops_there_and_the_rest_is_still_freed(rng, engine):
    w, v = _leaf(rng, 3), _leaf(rng, 3)
    inner = w.exp()
    y = (_NoGradFor.apply(inner) * v).sum()
    below = inner.grad_fn
    y.backward()
    assert w.grad is None
    np.testing.assert_allclose(v.grad.numpy(), 2 * np.exp(w.numpy()))
    assert below._freed and below.saved is None


def test_gradients_accumulate_across_backward_calls(rng, engine):
    x = _leaf(rng, 4)
    (x * 3).sum().backward()
    (x.tanh() * 2).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 3 + 2 * (1 - np.tanh(x.numpy()) ** 2))


# -- retain_graph, freed graphs, release -----------------------------------------------------
def test_retain_graph_twice_doubles_and_a_third_backward_raises(rng, engine):
    x = _leaf(rng, 5)
    y = (x.exp() * 2).tanh().sum()
    y.backward(retain_graph=True)
    g1 = x.grad.numpy().copy()
    y.backward(retain_graph=True)
    np.testing.assert_allclose(x.grad.numpy(), 2 * g1)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 3 * g1)
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


def test_a_freed_node_below_raises_before_any_gradient_lands(rng, engine):
    """Backward from a tensor whose graph shares a freed part: the error comes before any
    node runs, so no leaf gets a partial gradient."""
    w, v = _leaf(rng, 3), _leaf(rng, 3)
    h = (w * 2).exp()
    h.sum().backward()               # frees h's nodes
    w.grad = None
    with pytest.raises(RuntimeError, match=r"second time \(the saved arrays of Exp"):
        (h * v).tanh().sum().backward()
    assert w.grad is None and v.grad is None


def test_saved_arrays_are_released(rng, engine):
    x = _leaf(rng, 6)
    h = (x * 2).exp()
    node = h.grad_fn
    ref = weakref.ref(node.saved[0])
    loss = h.tanh().sum()
    del h
    loss.backward()
    assert node.saved is None and node._freed
    assert ref() is None


# -- in-place writes and ownership -----------------------------------------------------------
def test_an_inplace_write_after_the_forward_raises(rng, engine):
    net = nn.MLP([4, 5, 3]).to("float64")
    opt = optim.SGD(net.parameters(), lr=0.1)
    x = dp.tensor(rng.standard_normal((2, 4)), dtype="float64")
    loss = F.cross_entropy(net(x), dp.tensor(rng.integers(0, 3, 2)))
    for p in net.parameters():
        p.grad = dp.tensor(rng.standard_normal(p.shape), dtype="float64")
    opt.step()
    with pytest.raises(RuntimeError, match=r"saved for backward by Linear.*SGD\.step\(\)"):
        loss.backward()


class _Returns(Function):
    """y = 3x; backward returns a fresh array, or one it keeps."""
    def forward(self, x, keep=False):
        self.keep = keep
        return 3 * x

    def backward(self, gy):
        g = 3 * gy
        if self.keep:
            self.kept = g
        return g


@pytest.mark.parametrize("keep", [False, True], ids=["sole", "kept"])
def test_a_leaf_owns_a_sole_gradient_and_copies_a_kept_one(rng, engine, keep):
    x = _leaf(rng, 3, 2)
    y = _Returns.apply(x, keep=keep)
    node = y.grad_fn
    (y * 1.0).sum().backward(retain_graph=True)
    if keep:
        assert not np.shares_memory(x.grad.data, node.kept)
    np.testing.assert_allclose(x.grad.numpy(), 3.0)


def test_observers_and_anomaly_take_the_general_path(rng, monkeypatch):
    calls = []
    monkeypatch.setattr(autograd, "_chain", lambda n: calls.append(n))
    x = _leaf(rng, 3)

    class Obs:
        def on_backward_begin(self, node):
            pass
    with autograd.observe(Obs()):
        (x * 2).sum().backward()
    with dp.detect_anomaly():
        (x * 2).sum().backward()
    assert calls == []
    (x * 2).sum().backward()
    assert len(calls) == 1
    np.testing.assert_allclose(x.grad.numpy(), 6.0)


def test_an_ops_output_has_every_field_a_tensor_gets_from_its_init(rng):
    """Function.apply builds its output without Tensor.__init__ (one call less per op): it
    must set the same fields, and a recorded output points at its node."""
    x = _leaf(rng, 3)
    fields = [s for s in dp.Tensor.__slots__ if not s.startswith("__")]
    plain = dp.Tensor(x.data, True, x.backend)
    for out, node in (((x * 2), True), (x.detach() * 2, False)):
        for f in fields:
            assert hasattr(out, f) and hasattr(plain, f), f
        assert type(out) is dp.Tensor and out.grad is None and out._backend is x.backend
        assert out.requires_grad is node and (out.grad_fn is not None) is node
        assert out.__dict__ == {}


@pytest.mark.parametrize("chain", [True, False], ids=["chain", "graph"])
def test_a_gradient_attached_in_its_arena_slot_is_a_plain_tensor(rng, monkeypatch, chain):
    if not chain:
        monkeypatch.setattr(autograd, "_chain", lambda node0: None)
    lin = nn.Linear(3, 2, dtype="float64")
    optim.SGD(lin.parameters(), lr=0.1)
    x = dp.tensor(rng.standard_normal((4, 3)), dtype="float64")
    lin(x).sum().backward()
    for p in lin.parameters():
        g = p.grad
        assert type(g) is dp.Tensor and g.data.base is not None   # the arena's view
        assert not g.requires_grad and g.grad is None and g.grad_fn is None
        assert g._backend is p._backend and g.__dict__ == {}
    np.testing.assert_allclose(lin.bias.grad.numpy(), [4.0, 4.0])
