"""The step's bound plan (Optimizer._bound_plan): a step that changes nothing reuses the
updates bound at the last one, and every change that the bound updates depend on binds
them again. Each case runs a trajectory of steps with that change in the middle and
compares every step with a plain-NumPy SGD that knows nothing of plans."""
import numpy as np
import pytest

import dlprimer as dp
from dlprimer.nn.parameter import Parameter

SHAPES = [(3, 4), (4,), (5,)]


class _Ref:
    """PyTorch's SGD per parameter; a parameter without a gradient is left alone."""

    def __init__(self, ws, lr, momentum, nesterov=False, wd=0.0):
        self.ws = [w.astype(np.float64) for w in ws]
        self.h = dict(lr=lr, momentum=momentum, nesterov=nesterov, wd=wd)
        self.buf = {}

    def step(self, gs):
        h = self.h
        for i, (w, g) in enumerate(zip(self.ws, gs)):
            if g is None:
                continue
            d = g + h["wd"] * w
            if h["momentum"]:
                b = self.buf.get(i)
                b = d.copy() if b is None else h["momentum"] * b + d
                self.buf[i] = b
                d = d + h["momentum"] * b if h["nesterov"] else b
            w -= h["lr"] * d


def _setup(backend, rng, momentum, dtype="float64", **kw):
    init = [rng.standard_normal(s) for s in SHAPES]
    params = [Parameter(dp.tensor(a, dtype=dtype, backend=backend)) for a in init]
    opt = dp.optim.SGD(params, lr=0.1, momentum=momentum, **kw)
    ref = _Ref(init, 0.1, momentum, kw.get("nesterov", False), kw.get("weight_decay", 0.0))
    return params, opt, ref


def _step(params, opt, ref, rng, skip=(), replace=()):
    """One step with fresh gradients (``skip``: parameters given none; ``replace``: given
    a new Tensor instead of the one backward would have left)."""
    gs = []
    for i, p in enumerate(params):
        if i in skip:
            p.grad = None
            gs.append(None)
            continue
        g = rng.standard_normal(p.shape)
        t = dp.tensor(g, dtype=p.dtype, backend=p.backend)
        if i in replace:       # a user's Tensor: the step copies it into the arena
            p.grad = t
        else:                  # what backward does: the gradient lands in the arena view
            p.grad = None
            p._accumulate_grad(t.data)
        gs.append(g)
    opt.step()
    ref.step(gs)
    for p, w in zip(params, ref.ws):
        np.testing.assert_allclose(p.numpy(), w, rtol=1e-12, atol=1e-12)


def _bound(opt):
    plan = opt.arenas[0].plan
    return plan is not None and plan[2] is not None


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_unchanged_steps_reuse_the_plan_and_match_the_reference(backend, rng, momentum):
    params, opt, ref = _setup(backend, rng, momentum)
    for _ in range(2):
        _step(params, opt, ref, rng)
    plan = opt.arenas[0].plan
    for _ in range(3):
        _step(params, opt, ref, rng)
    assert opt.arenas[0].plan is plan
    # bound only where the backend can skip a kernel's dispatch (the JIT CPU backend)
    jit = bool(getattr(dp.get_backend(), "jit", False))
    assert _bound(opt) == jit
    # and there the unchanged steps are the usual step: the bound update called again
    assert (opt.arenas[0].usual is not None) == jit


CHANGES = {
    "new lr": lambda opt, params: opt.param_groups[0].__setitem__("lr", 0.05),
    "no gradient": lambda opt, params: setattr(params[1], "grad", None),
    "user's grad": lambda opt, params: setattr(params[0], "grad", dp.tensor(
        np.ones(SHAPES[0]), dtype="float64", backend=params[0].backend)),
    "user's data": lambda opt, params: setattr(params[2], "data", params[2].data.copy()),
    "loaded state": lambda opt, params: opt.load_state_dict(opt.state_dict()),
    "an array lr": lambda opt, params: opt.param_groups[0].update(lr=np.array([0.1, 0.1])),
    "a new params list": lambda opt, params: opt.param_groups[0].update(
        params=list(opt.param_groups[0]["params"])),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_the_usual_step_declines_any_change(rng, change):
    """The usual step (Optimizer._usual_step) repeats the last bound update only while
    nothing it was bound to changed: each change here makes it decline (the full step then
    runs and arms it again)."""
    params, opt, ref = _setup("cpu", rng, 0.9)
    if not getattr(dp.get_backend(), "jit", False):
        pytest.skip("the usual step binds the JIT backend's kernels")
    for _ in range(3):
        _step(params, opt, ref, rng)
    usual = opt.arenas[0].usual
    assert usual is not None and opt._usual_step(usual, True)   # a repeat of the last
    assert not opt._usual_step(usual, False)                    # GradScaler's unchecked step
    CHANGES[change](opt, params)
    usual = opt.arenas[0].usual     # load_state_dict disarms it
    assert usual is None or not opt._usual_step(usual, True)


def test_an_array_lr_after_usual_steps_is_refused_by_name(rng):
    """An lr replaced by an array after the usual step was armed: the step's validation
    names it (the usual step never compares an array with ==)."""
    params, opt, ref = _setup("cpu", rng, 0.9)
    for _ in range(3):
        _step(params, opt, ref, rng)
    before = [p.data.copy() for p in params]
    opt.param_groups[0]["lr"] = np.array([0.1, 0.2])
    with pytest.raises(ValueError, match="lr: array.*is not a number"):
        opt.step()
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.data, b)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_a_new_lr_is_used_at_the_next_step(backend, rng, momentum):
    params, opt, ref = _setup(backend, rng, momentum)
    for lr in (0.1, 0.1, 0.03, 0.03, 0.5):
        opt.param_groups[0]["lr"] = lr
        ref.h["lr"] = lr
        _step(params, opt, ref, rng)


def test_an_equal_but_new_lr_and_a_scheduler(backend, rng):
    params, opt, ref = _setup(backend, rng, 0.9)
    sched = dp.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(6):
        ref.h["lr"] = opt.param_groups[0]["lr"]
        _step(params, opt, ref, rng)
        sched.step()
        opt.param_groups[0]["lr"] = float(str(opt.param_groups[0]["lr"]))  # equal, new object


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_a_parameter_without_a_gradient_for_one_step(backend, rng, momentum):
    params, opt, ref = _setup(backend, rng, momentum)
    _step(params, opt, ref, rng)
    _step(params, opt, ref, rng)
    _step(params, opt, ref, rng, skip={1})
    _step(params, opt, ref, rng, skip={0, 2})
    _step(params, opt, ref, rng)
    _step(params, opt, ref, rng)


def test_a_parameter_first_stepped_later_starts_its_momentum(backend, rng):
    params, opt, ref = _setup(backend, rng, 0.9, nesterov=True)
    _step(params, opt, ref, rng, skip={2})
    _step(params, opt, ref, rng, skip={2})
    _step(params, opt, ref, rng)   # parameter 2's first momentum step
    _step(params, opt, ref, rng)


def test_replaced_grads_and_data_reach_the_bound_update(backend, rng):
    params, opt, ref = _setup(backend, rng, 0.9, weight_decay=0.01)
    _step(params, opt, ref, rng)
    _step(params, opt, ref, rng)
    new = rng.standard_normal(SHAPES[0])
    params[0].data = dp.tensor(new, dtype="float64", backend=params[0].backend).data
    ref.ws[0][...] = new
    _step(params, opt, ref, rng, replace={1})
    assert params[0].data is opt.arenas[0].views[0]
    assert params[1].grad.data is opt.arenas[0].grad_views[1]


def test_load_state_dict_and_hyperparameter_changes_rebind(backend, rng):
    params, opt, ref = _setup(backend, rng, 0.9)
    _step(params, opt, ref, rng)
    saved = opt.state_dict()
    ref_buf = {i: b.copy() for i, b in ref.buf.items()}
    _step(params, opt, ref, rng)
    _step(params, opt, ref, rng)
    opt.load_state_dict(saved)     # momentum buffers back to those of step 1
    ref.buf = ref_buf
    _step(params, opt, ref, rng)
    opt.param_groups[0]["momentum"] = 0.5
    ref.h["momentum"] = 0.5
    _step(params, opt, ref, rng)
    opt.param_groups[0]["nesterov"] = True
    ref.h["nesterov"] = True
    _step(params, opt, ref, rng)


def test_an_added_param_group_and_unfused_steps(backend, rng):
    params, opt, ref = _setup(backend, rng, 0.9)
    _step(params, opt, ref, rng)
    _step(params, opt, ref, rng)
    extra = Parameter(dp.tensor(rng.standard_normal(3), dtype="float64"))
    w_extra = extra.numpy().copy()
    opt.add_param_group({"params": [extra], "lr": 0.2, "momentum": 0.0})
    g = rng.standard_normal(3)
    extra.grad = dp.tensor(g, dtype="float64")
    _step(params, opt, ref, rng)
    np.testing.assert_allclose(extra.numpy(), w_extra - 0.2 * g, rtol=1e-12)
    with dp.fusion(False):         # the unfused chain, not the bound kernel
        _step(params, opt, ref, rng)
    _step(params, opt, ref, rng)


def test_a_step_while_a_graph_saved_a_parameter_still_raises(backend, rng):
    """The arena's write is noted once per step; the error still names the parameter."""
    params, opt, ref = _setup(backend, rng, 0.0)
    for _ in range(3):
        _step(params, opt, ref, rng)
    y = (params[2] * params[2]).sum()
    _step(params, opt, ref, rng)
    with pytest.raises(RuntimeError, match=r"Mul .*SGD\.step\(\) on parameter "
                                           r"param_groups\[0\]\['params'\]\[2\] \(shape \(5,\)\)"):
        y.backward()
    assert [p._version for p in params] == [4, 4, 4]


def test_pickled_and_copied_optimizers_leave_the_plan_behind(backend, rng):
    """A bound plan holds compiled entry points of this process: an optimizer still pickles
    (as before the plan) and a copy starts without one; the original steps on."""
    import copy
    import pickle
    params, opt, ref = _setup(backend, rng, 0.9)
    _step(params, opt, ref, rng)
    _step(params, opt, ref, rng)
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert clone.arenas[0].plan is None and clone.arenas[0].usual is None
    assert opt.arenas[0].plan is not None
    _step(params, opt, ref, rng)
