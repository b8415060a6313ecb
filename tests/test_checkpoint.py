"""Gradient checkpointing: same gradients as plain backward (dropout masks replayed),
fewer activations kept, clear errors."""
import numpy as np
import pytest

import dlprimer as dp
from dlprimer.checkpoint import Checkpoint, is_recomputing
from _toy_modules import Dropout, Linear, Seq, Tanh, mse


def _net(rng, depth=6, width=12, p=0.3):
    mods = []
    for i in range(depth):
        mods += [Linear(width, width, bias=True, rng=rng), Tanh(), Dropout(p)]
    return Seq(*mods)


def _grads(net, x, y, segments, seed):
    dp.manual_seed(seed)
    for p in net.parameters():
        p.grad = None
    x.grad = None
    if segments is None:
        out = net(x)
    else:
        out = dp.checkpoint_sequential(net, segments, x)
    loss = mse(out, y)
    loss.backward()
    return loss.item(), [p.grad.numpy().copy() for p in net.parameters()], x.grad.numpy().copy()


@pytest.mark.parametrize("segments", [2, 3, 6, 18])
def test_checkpointed_grads_equal_plain_with_dropout(backend, rng, segments):
    net = _net(rng)
    x = dp.tensor(rng.standard_normal((5, 12)), requires_grad=True)
    y = dp.tensor(rng.standard_normal((5, 12)))
    seed = int(rng.integers(1 << 30))
    l0, g0, gx0 = _grads(net, x, y, None, seed)
    l1, g1, gx1 = _grads(net, x, y, segments, seed)
    assert l1 == pytest.approx(l0, rel=1e-12)
    for a, b in zip(g0, g1):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(gx1, gx0, rtol=1e-6, atol=1e-12)


def test_dropout_really_drops_and_rng_advances_as_without_checkpoint(rng):
    """Masks differ between steps (the stream moves on), and after a checkpointed
    step the RNG is where a plain step leaves it."""
    net = _net(rng, depth=2, p=0.5)
    x = dp.tensor(rng.standard_normal((4, 12)), requires_grad=True)
    dp.manual_seed(3)
    mse(net(x), 0.0).backward()
    plain_state = dp.get_backend().get_rng_state()
    dp.manual_seed(3)
    mse(dp.checkpoint_sequential(net, 2, x), 0.0).backward()
    assert dp.get_backend().get_rng_state() == plain_state
    a = net(x).numpy()
    b = net(x).numpy()
    assert not np.allclose(a, b)


def test_input_without_grad_still_gives_param_grads(backend, rng):
    """First segment's input is data (no grad): the parameters must still learn."""
    net = _net(rng, depth=3, p=0.0)
    x = dp.tensor(rng.standard_normal((3, 12)))
    y = dp.tensor(rng.standard_normal((3, 12)))
    out_plain = mse(net(x), y)
    out_plain.backward()
    ref = [p.grad.numpy().copy() for p in net.parameters()]
    for p in net.parameters():
        p.grad = None
    mse(dp.checkpoint_sequential(net, 3, x), y).backward()
    for a, p in zip(ref, net.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), a, rtol=1e-6)


def test_checkpoint_of_a_closure_matches_plain(backend, rng):
    w = dp.tensor(rng.standard_normal((4, 4)), requires_grad=True)
    x = dp.tensor(rng.standard_normal((2, 4)), requires_grad=True)

    def fn(a, scale):
        return ((a @ w).tanh() * scale).sigmoid()

    (fn(x, 2.0) ** 2).sum().backward()
    gw, gx = w.grad.numpy().copy(), x.grad.numpy().copy()
    w.grad = x.grad = None
    (dp.checkpoint(fn, x, 2.0) ** 2).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), gw, rtol=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), gx, rtol=1e-6)


def test_checkpoint_gradcheck(rng):
    w = dp.tensor(rng.standard_normal((3, 3)), requires_grad=True)
    x = dp.tensor(rng.standard_normal((2, 3)), requires_grad=True)
    assert dp.gradcheck(lambda a, b: dp.checkpoint(lambda u: (u @ b).tanh() * u, a), (x, w))


def test_forward_keeps_only_the_segment_input(rng):
    x = dp.tensor(rng.standard_normal((4, 8)), requires_grad=True)
    lin = Linear(8, 8, rng=rng)
    seen = []

    class Obs:
        def on_forward(self, node):
            seen.append((node.name, is_recomputing()))

    from dlprimer.autograd import observe
    with observe(Obs()):
        out = dp.checkpoint(lambda a: lin(a).tanh().tanh(), x)
        assert seen == [("Checkpoint", False)]
        assert isinstance(out.grad_fn, Checkpoint)
        assert len(out.grad_fn.saved) == 1 and out.grad_fn.saved[0] is x.data
        out.sum().backward()
    assert ("MatMul", True) in seen and ("Tanh", True) in seen


def test_no_grad_mode_is_a_plain_call(rng):
    x = dp.tensor(rng.standard_normal((2, 3)), requires_grad=True)
    with dp.no_grad():
        y = dp.checkpoint(lambda a: a * 2, x)
    assert y.grad_fn is None and not y.requires_grad


def test_errors_name_the_problem(rng):
    x = dp.tensor(rng.standard_normal((2, 3)), requires_grad=True)
    with pytest.raises(TypeError, match="callable"):
        dp.checkpoint(3, x)
    with pytest.raises(TypeError, match="at least one Tensor"):
        dp.checkpoint(lambda a: a, 1.0)
    with pytest.raises(TypeError, match="one Tensor"):
        dp.checkpoint(lambda a: (a, a), x)
    net = _net(rng, depth=2)
    with pytest.raises(ValueError, match="positive int"):
        dp.checkpoint_sequential(net, 0, x)
    with pytest.raises(ValueError, match="no layers"):
        dp.checkpoint_sequential([], 2, x)
    with pytest.raises(TypeError, match="Sequential or an iterable"):
        dp.checkpoint_sequential(5, 2, x)


@pytest.mark.parametrize("segments", [2, 4])
def test_nn_mlp_with_dropout_checkpointed_grads_equal_plain(backend, rng, segments):
    """The real layers: nn.MLP with GELU and Dropout, float64, rtol 1e-6."""
    import dlprimer.nn as nn
    import dlprimer.nn.functional as F
    net = nn.MLP([10, 16, 16, 16, 4], activation="gelu", dropout=0.4)
    for p in net.parameters():
        p.data = p.data.astype("float64")
    x = dp.tensor(rng.standard_normal((6, 10)), dtype="float64")
    y = dp.tensor(rng.integers(0, 4, 6))
    seed = int(rng.integers(1 << 30))
    grads = []
    for segs in (None, segments):
        net.zero_grad()
        dp.manual_seed(seed)
        out = net(x) if segs is None else dp.checkpoint_sequential(net, segs, x)
        F.cross_entropy(out, y).backward()
        grads.append([p.grad.numpy().copy() for p in net.parameters()])
    for a, b in zip(*grads):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-12)
    assert any(isinstance(m, nn.Dropout) for m in net.modules())
