"""The flat arena: parameters keep their values and identity, gradients land in the
arena, and user replacements of .data/.grad are absorbed safely."""
import numpy as np
import pytest

import dlprimer as dp
from dlprimer.nn.parameter import Parameter
from .optim_refs import RefSGD


def _params(backend, seed=0):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in [(3, 4), (4,), (), (2, 2, 2)]]
    return arrays, [Parameter(dp.tensor(a, backend=backend)) for a in arrays]


def _loss(params):
    total = None
    for i, p in enumerate(params):
        term = ((p * (i + 1.0)).tanh() * p).sum()
        total = term if total is None else total + term
    return total


@pytest.mark.parametrize("cls", ["SGD", "Adam", "AdamW", "LAMB", "LARS"])
def test_move_into_arena_keeps_values_and_identity(backend, cls):
    arrays, params = _params(backend)
    ids = [id(p) for p in params]
    opt = getattr(dp.optim, cls)(params, lr=0.1)
    arena = opt.arenas[0]
    assert [id(p) for p in arena.params] == ids
    assert arena.numel == sum(a.size for a in arrays) and arena.data.ndim == 1
    xp = dp.get_backend().xp
    for p, a, view in zip(params, arrays, arena.views):
        assert p.data is view and p.shape == a.shape
        np.testing.assert_array_equal(p.numpy(), a)
        assert xp.shares_memory(p.data, arena.data)


def test_gradients_land_in_the_arena_and_accumulate(backend):
    arrays, params = _params(backend)
    opt = dp.optim.SGD(params, lr=0.1)
    arena = opt.arenas[0]
    _loss(params).backward()
    first = [p.grad.numpy().copy() for p in params]
    for p, gv in zip(params, arena.grad_views):
        assert p.grad.data is gv
    _loss(params).backward()  # accumulates in place
    for p, g, gv in zip(params, first, arena.grad_views):
        np.testing.assert_allclose(p.grad.numpy(), 2 * g, rtol=1e-6)
        assert p.grad.data is gv
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    _loss(params).backward()  # first gradient after zero_grad is a copy, not an add
    for p, g in zip(params, first):
        np.testing.assert_allclose(p.grad.numpy(), g, rtol=1e-6)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and float(p.grad.numpy().sum()) == 0.0 for p in params)
    assert all(p.grad.data is gv for p, gv in zip(params, arena.grad_views))
    _loss(params).backward()
    for p, g in zip(params, first):
        np.testing.assert_allclose(p.grad.numpy(), g, rtol=1e-6)


def test_existing_gradient_is_moved_into_the_arena(backend):
    _, params = _params(backend)
    _loss(params).backward()
    before = [p.grad.numpy().copy() for p in params]
    opt = dp.optim.SGD(params, lr=0.1)
    for p, g, gv in zip(params, before, opt.arenas[0].grad_views):
        assert p.grad.data is gv
        np.testing.assert_array_equal(p.grad.numpy(), g)


def test_user_replacing_data_and_grad_is_absorbed(backend):
    arrays, params = _params(backend)
    opt = dp.optim.SGD(params, lr=0.5)
    arena = opt.arenas[0]
    new_w = np.full((3, 4), 2.0, np.float32)
    params[0].data = dp.get_backend().asarray(new_w)                 # replaced weights
    _loss(params).backward()
    params[1].grad = dp.tensor(np.ones(4, np.float32), backend=backend)   # replaced gradient
    params[2].grad = None                                     # dropped gradient: no update
    grads = [None if p.grad is None else p.grad.numpy().copy() for p in params]
    expected = [new_w] + arrays[1:]
    opt.step()
    for i, p in enumerate(params):
        assert p.data is arena.views[i]
        want = expected[i] if grads[i] is None else expected[i] - 0.5 * grads[i]
        np.testing.assert_allclose(p.numpy(), want, rtol=1e-6)
    assert params[1].grad.data is arena.grad_views[1]
    np.testing.assert_array_equal(params[1].grad.numpy(), np.ones(4))


def test_plain_tensors_and_named_parameters():
    a = dp.tensor(np.arange(3.0, dtype=np.float32), requires_grad=True)
    b = Parameter(dp.ones(2))
    opt = dp.optim.SGD([("a", a), ("b", b)], lr=0.1)
    ((a * a).sum() + (b * 3.0).sum()).backward()
    opt.step()
    np.testing.assert_allclose(a.numpy(), np.arange(3.0) * 0.8, rtol=1e-6)
    np.testing.assert_allclose(b.numpy(), [0.7, 0.7], rtol=1e-6)
    assert opt.arenas[0].names[0].startswith("'a'")


def test_scheduler_lr_reaches_the_update():
    init = [np.linspace(-1, 1, 6).astype(np.float64)]
    p = Parameter(dp.tensor(init[0].copy()))
    opt = dp.optim.SGD([p], lr=1.0, momentum=0.5)
    sched = dp.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    ref = RefSGD(lr=1.0, momentum=0.5)
    w = [init[0].copy()]
    for t in range(6):
        opt.zero_grad()
        (p * p).sum().backward()
        opt.step()
        ref.h["lr"] = 1.0 * 0.5 ** (t // 2)
        ref.step(w, [2 * w[0]])
        sched.step()
        np.testing.assert_allclose(p.numpy(), w[0], rtol=1e-12)


def test_state_bytes_per_param():
    def p():
        return [Parameter(dp.zeros(10)), Parameter(dp.zeros(3, 2))]
    assert dp.optim.SGD(p(), lr=0.1).state_bytes_per_param == 0
    assert dp.optim.SGD(p(), lr=0.1, momentum=0.9).state_bytes_per_param == 4
    assert dp.optim.Adam(p()).state_bytes_per_param == 8
    assert dp.optim.AdamW(p()).state_bytes_per_param == 8
    assert dp.optim.LAMB(p()).state_bytes_per_param == 8
    assert dp.optim.LARS(p(), lr=0.1).state_bytes_per_param == 4
    assert dp.optim.LARS(p(), lr=0.1, momentum=0).state_bytes_per_param == 0
    p64 = [Parameter(dp.zeros(4, dtype="float64"))]
    assert dp.optim.Adam(p64).state_bytes_per_param == 16


def test_state_view_and_optimizer_state_memory_matches_bytes():
    params = [Parameter(dp.randn(5, 3)), Parameter(dp.randn(3))]
    opt = dp.optim.Adam(params, lr=0.1)
    assert opt.state == {}
    (params[0].sum() + (params[1] * params[1]).sum()).backward()
    opt.step()
    st = opt.state
    assert st[params[0]]["step"] == 1 and st[params[0]]["exp_avg"].shape == (5, 3)
    state_bytes = sum(a.nbytes for a in opt.arenas[0].state.values())
    assert state_bytes == opt.state_bytes_per_param * 18
