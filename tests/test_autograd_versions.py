"""Version counters: a backward through an array written in place after the forward
raises (naming the op and the tensor) instead of returning a silently wrong gradient.

Each in-place writer dlprimer has is covered: optimizer steps on the arena,
``load_state_dict``, ``nn.init``, BatchNorm's running statistics. The CUDA code path
runs on the fake device (``tests/_fake_device.py``) as well as on a real GPU.
"""
import numpy as np
import pytest

import dlprimer as dp
from dlprimer import nn
from _fake_device import installed

OPTIMIZERS = [lambda ps: dp.optim.SGD(ps, lr=0.1, momentum=0.9),
              lambda ps: dp.optim.Adam(ps, lr=0.1), lambda ps: dp.optim.AdamW(ps, lr=0.1),
              lambda ps: dp.optim.LAMB(ps, lr=0.1), lambda ps: dp.optim.LARS(ps, lr=0.1)]


@pytest.fixture
def dev(monkeypatch):
    """The CUDA code path without a GPU: the fake device registered as 'cuda'."""
    with installed(monkeypatch):
        with dp.use_backend("cuda"):
            yield "cuda"


def _leaf(rng, *shape):
    return dp.tensor(rng.standard_normal(shape) + 0.5, dtype="float64", requires_grad=True)


@pytest.mark.parametrize("make_opt", OPTIMIZERS)
def test_optimizer_step_between_forward_and_backward_raises(backend, rng, make_opt):
    w = _leaf(rng, 5)
    opt = make_opt([w])
    y = (w * w).sum()
    w.grad = dp.tensor(rng.standard_normal(5), dtype="float64")
    opt.step()
    with pytest.raises(RuntimeError, match=r"saved for backward by Mul \(a float64 array of "
                                           r"shape \(5,\)\) was modified by an in-place "
                                           r"operation.*\.step\(\) on parameter"):
        y.backward()


def test_the_issue_example_on_the_fake_device(dev, rng):
    w = _leaf(rng, 2)
    assert w.backend.name == "cuda"
    opt = dp.optim.SGD([w], lr=1.0)
    y = (w * w).sum()
    w.grad = dp.tensor(rng.standard_normal(2), dtype="float64")
    opt.step()
    with pytest.raises(RuntimeError, match=r"by Mul .*modified.*SGD\.step\(\)"):
        y.backward()


def _model_and_loss(rng):
    model = nn.MLP([4, 6, 3]).to("float64")
    x = dp.tensor(rng.standard_normal((5, 4)), dtype="float64")
    y = dp.tensor(rng.integers(0, 3, 5))
    return model, dp.nn.functional.cross_entropy(model(x), y)


def test_load_state_dict_between_forward_and_backward_raises(backend, rng):
    model, loss = _model_and_loss(rng)
    other = nn.MLP([4, 6, 3]).to("float64")
    model.load_state_dict(other.state_dict())
    with pytest.raises(RuntimeError, match=r"Linear.*load_state_dict\(\) writing '2\.weight'"):
        loss.backward()


def test_load_state_dict_check_on_the_fake_device(dev, rng):
    model, loss = _model_and_loss(rng)
    assert model[0].weight.backend.name == "cuda"
    model.load_state_dict(model.state_dict())
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        loss.backward()


def test_init_and_retain_graph_second_backward_raise(backend, rng):
    w = _leaf(rng, 3)
    y = (w.exp() * w).sum()
    y.backward(retain_graph=True)
    g1 = w.grad.numpy().copy()
    np.testing.assert_allclose(g1, np.exp(w.numpy()) * (1 + w.numpy()), rtol=1e-12)
    nn.init.normal_(w)
    with pytest.raises(RuntimeError, match=r"nn\.init\.normal_"):
        y.backward()


def test_batchnorm_training_update_of_a_saved_running_stat_raises(backend, rng):
    bn = nn.BatchNorm1d(3).to("float64")
    w = _leaf(rng, 3)
    y = (w * bn.running_var).sum()  # the running variance is saved by Mul
    bn(dp.tensor(rng.standard_normal((8, 3)), dtype="float64"))
    with pytest.raises(RuntimeError, match="running-statistics"):
        y.backward()


def test_a_saved_view_of_a_parameter_is_checked_and_its_neighbours_are_not(backend, rng):
    """``x @ w.T`` saves a view of ``w``'s slot in the arena: a step that updates ``w``
    is caught; a step that updates only ``b`` (next to ``w`` in the same arena) is not."""
    w, b = _leaf(rng, 3, 4), _leaf(rng, 3)
    x = _leaf(rng, 2, 4)
    opt = dp.optim.SGD([w, b], lr=0.1)
    y = (x @ w.T).sum()
    b.grad = dp.tensor(rng.standard_normal(3), dtype="float64")
    opt.step()
    y.backward(retain_graph=True)
    np.testing.assert_allclose(x.grad.numpy(), np.tile(w.numpy().sum(0), (2, 1)), rtol=1e-12)
    w.grad = dp.tensor(rng.standard_normal((3, 4)), dtype="float64")
    opt.step()
    with pytest.raises(RuntimeError, match=r"MatMul.*shape \(4, 3\).*'params'\]\[0\]"):
        y.backward()


def test_writes_to_unsaved_inputs_and_fresh_forwards_are_allowed(backend, rng):
    """No false alarm: Add saves nothing, and a forward after the step sees the new
    weights; gradients then match finite differences in float64."""
    w = _leaf(rng, 4)
    x = _leaf(rng, 4)
    opt = dp.optim.Adam([w], lr=0.1)
    s = (w + x).sum()
    w.grad = dp.tensor(rng.standard_normal(4), dtype="float64")
    opt.step()
    s.backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.ones(4))
    opt.zero_grad()
    f = lambda a, b: (a * a * b).tanh().sum()  # noqa: E731
    f(w, x).backward()
    assert dp.gradcheck(f, (w, x))
    np.testing.assert_allclose(
        w.grad.numpy(), (1 - np.tanh(w.numpy() ** 2 * x.numpy()) ** 2) * 2 * w.numpy() * x.numpy(),
        rtol=1e-10, atol=1e-12)   # 1 - tanh^2 cancels where tanh is near 1: absolute, not relative


def test_a_training_step_in_the_usual_order_is_untouched(backend, rng):
    model = nn.MLP([4, 6, 3], norm="batch").to("float64")
    opt = dp.optim.SGD(model.parameters(), lr=0.1)
    v0 = [p._version for p in model.parameters()]
    for _ in range(3):
        x = dp.tensor(rng.standard_normal((5, 4)), dtype="float64")
        loss = dp.nn.functional.cross_entropy(model(x), dp.tensor(rng.integers(0, 3, 5)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert [p._version - v for p, v in zip(model.parameters(), v0)] == [3] * len(v0)


@pytest.mark.parametrize("through_optimizer", [True, False])
def test_broadcast_parameters_counts_as_a_write(rng, monkeypatch, through_optimizer):
    import dlprimer.distributed as dist
    from dlprimer.distributed.parallel import broadcast_parameters
    for var in dist._SIZE_VARS:
        monkeypatch.delenv(var, raising=False)
    dist.finalize()
    dist.init("single")
    try:
        w = _leaf(rng, 4)
        opt = dp.optim.SGD([w], lr=0.1)
        y = (w * w).sum()
        broadcast_parameters(opt if through_optimizer else [w])
        with pytest.raises(RuntimeError, match=r"broadcast_parameters\(root=0\)"):
            y.backward()
    finally:
        dist.finalize()


def test_a_checkpointed_segment_refuses_to_recompute_with_stepped_weights(backend, rng):
    """A checkpointed segment keeps only its input and re-runs its layers in backward:
    a step in between would silently recompute with the new weights."""
    net = nn.MLP([4, 8, 8, 3]).to("float64")
    x = dp.tensor(rng.standard_normal((5, 4)), dtype="float64", requires_grad=True)
    opt = dp.optim.SGD(net.parameters(), lr=0.1)
    out = dp.checkpoint(net, x).sum()  # one segment: only x is kept
    for p in net.parameters():
        p.grad = dp.tensor(rng.standard_normal(p.shape), dtype="float64")
    opt.step()
    with pytest.raises(RuntimeError, match=r"Checkpoint.*SGD\.step\(\)"):
        out.backward()
    opt.zero_grad()
    dp.checkpoint_sequential(net, 2, x).sum().backward()  # a fresh forward is fine
    g = x.grad.numpy().copy()
    x.grad = None
    net(x).sum().backward()
    np.testing.assert_allclose(g, x.grad.numpy(), rtol=1e-12)
