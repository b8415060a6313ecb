"""The step's non-finite check as it rides on the first update (Optimizer._apply,
Backend.checked_update): checked steps are bit for bit the unchecked ones, and a NaN or inf
gradient anywhere (first, middle or last parameter, the tail of a run, a run checked before
the update or the one whose update checks itself, another param group) writes nothing:
weights, moments, momentum buffers and step counts stay as they were."""
import numpy as np
import pytest

import dlprimer as dp
from dlprimer.nn.parameter import Parameter
from dlprimer.optim import NonFiniteGradientError

SHAPES = [(3, 4), (5,), (8 * 40 + 3,), (2, 3)]     # the third spans 8 streams and a tail
NAMES = ["first", "mid1", "mid2", "last"]
OPTS = {
    "SGD": dict(lr=0.1), "SGD momentum": dict(lr=0.1, momentum=0.9, weight_decay=0.01),
    "SGD nesterov": dict(lr=0.1, momentum=0.9, nesterov=True), "Adam": dict(lr=1e-2),
    "AdamW": dict(lr=1e-2), "LAMB": dict(lr=1e-2), "LARS": dict(lr=0.1),
}


def _make(name, backend, dtype, init, layout, **kw):
    params = [Parameter(dp.tensor(a, dtype=dtype, backend=backend)) for a in init]
    named = list(zip(NAMES, params))
    groups = ([{"params": named[:2]}, {"params": named[2:]}] if layout == "two groups"
              else named)
    cls = getattr(dp.optim, name.split()[0])
    return params, cls(groups, **OPTS[name], **kw)


def _set_grads(params, gs):
    for p, g in zip(params, gs):
        p.grad = None
        if g is not None:     # as backward leaves it: in the arena's slot
            p._accumulate_grad(dp.tensor(g, dtype=p.dtype, backend=p.backend).data)


def _snapshot(opt, params):
    return ([p.numpy().copy() for p in params],
            [{k: dp.get_backend().to_numpy(v).copy() for k, v in a.state.items()}
             for a in opt.arenas],
            [a.counts.copy() for a in opt.arenas])


def _assert_same(a, b):
    for x, y in zip(a[0], b[0]):
        np.testing.assert_array_equal(x, y)
    for sx, sy in zip(a[1], b[1]):
        assert sx.keys() == sy.keys()
        for k in sx:
            np.testing.assert_array_equal(sx[k], sy[k])
    for cx, cy in zip(a[2], b[2]):
        np.testing.assert_array_equal(cx, cy)


LAYOUTS = ["one run", "two runs", "two groups"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", list(OPTS))
def test_checked_steps_are_bit_for_bit_the_unchecked_ones(backend, rng, name, layout, dtype):
    init = [rng.standard_normal(s) for s in SHAPES]
    pa, checked = _make(name, backend, dtype, init, layout)
    pb, unchecked = _make(name, backend, dtype, init, layout, check_finite=False)
    for step in range(5):
        gs = [rng.standard_normal(s) for s in SHAPES]
        if layout == "two runs" and step % 2:
            gs[1] = None      # a parameter without a gradient: two runs in the group
        _set_grads(pa, gs)
        _set_grads(pb, gs)
        assert checked.step() is not False
        unchecked.step()
        _assert_same(_snapshot(checked, pa), _snapshot(unchecked, pb))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("where", ["first", "mid2", "last", "tail"])
@pytest.mark.parametrize("name", list(OPTS))
def test_a_nonfinite_gradient_anywhere_writes_nothing(backend, rng, name, where, layout, dtype):
    """A good step (state to protect, and the usual step's plan armed), then a bad one: it
    raises naming the parameter and writes nothing; with ``skip_nonfinite`` it is skipped and
    counted; later steps go on as if the bad one had never come (against an optimizer that
    never saw it)."""
    init = [rng.standard_normal(s) for s in SHAPES]
    pa, raising = _make(name, backend, dtype, init, layout)
    pb, skipping = _make(name, backend, dtype, init, layout, skip_nonfinite=True)
    pc, ref = _make(name, backend, dtype, init, layout)
    for step in range(4):
        gs = [rng.standard_normal(s) for s in SHAPES]
        if layout == "two runs":
            gs[1] = None
        for ps in (pa, pb, pc):
            _set_grads(ps, gs)
        assert raising.step() is True and skipping.step() is True and ref.step() is True
        i = 2 if where == "tail" else NAMES.index(where)
        bad = [g.copy() if g is not None else None for g in gs]
        k = -1 if where in ("tail", "last") else int(rng.integers(bad[i].size))
        bad[i].reshape(-1)[k] = rng.choice([np.nan, np.inf, -np.inf])
        before = _snapshot(ref, pc)
        _set_grads(pa, bad)
        with pytest.raises(NonFiniteGradientError, match=f"'{NAMES[i]}'") as e:
            raising.step()
        assert e.value.name.startswith(f"'{NAMES[i]}'")
        _set_grads(pb, bad)
        assert skipping.step() is False
        assert skipping.skipped_steps == step + 1
        _assert_same(_snapshot(raising, pa), before)
        _assert_same(_snapshot(skipping, pb), before)


@pytest.mark.parametrize("name", ["SGD", "SGD momentum", "Adam", "AdamW"])
def test_the_usual_step_is_bound_where_the_kernels_are(backend, rng, name):
    """On the JIT CPU backend SGD's and Adam's steps bind their kernels, and unchanged
    steps take the usual step (Optimizer._usual_step); elsewhere nothing is bound."""
    init = [rng.standard_normal(s) for s in SHAPES]
    params, opt = _make(name, backend, "float32", init, "one run")
    for _ in range(3):
        _set_grads(params, [rng.standard_normal(s) for s in SHAPES])
        assert opt.step() is not False
    jit = bool(getattr(dp.get_backend(), "jit", False))
    assert (opt.arenas[0].usual is not None) == jit


@pytest.mark.parametrize("name", ["SGD momentum", "Adam"])
def test_a_refused_first_step_creates_no_state(backend, rng, name):
    init = [rng.standard_normal(s) for s in SHAPES]
    params, opt = _make(name, backend, "float32", init, "one run", skip_nonfinite=True)
    gs = [rng.standard_normal(s) for s in SHAPES]
    gs[3][-1, -1] = np.nan
    _set_grads(params, gs)
    assert opt.step() is False
    assert opt.arenas[0].state == {} and not opt.arenas[0].counts.any()
    assert opt.state == {} and opt.state_dict()["state"] == {}
    gs[3][-1, -1] = 0.0
    _set_grads(params, gs)
    assert opt.step() is True
    assert set(opt.arenas[0].state) == set(opt._state_names(opt.param_groups[0]))


def test_with_the_jit_off_the_checked_step_is_the_numpy_path(rng, monkeypatch):
    """DLPRIMER_JIT=0 (a fresh process: the backend is chosen once): the same trajectory,
    bit for bit, as the checked and unchecked steps of the NumPy backend, and a NaN refused."""
    import subprocess
    import sys
    code = (
        "import numpy as np, dlprimer as dp\n"
        "from dlprimer.nn.parameter import Parameter\n"
        "assert not getattr(dp.get_backend(), 'jit', False)\n"
        "rng = np.random.default_rng(0)\n"
        "w = rng.standard_normal(1000).astype(np.float32)\n"
        "ps = [Parameter(dp.tensor(w.copy())) for _ in range(2)]\n"
        "a = dp.optim.Adam([ps[0]], lr=0.01)\n"
        "b = dp.optim.Adam([ps[1]], lr=0.01, check_finite=False)\n"
        "for _ in range(3):\n"
        "    g = rng.standard_normal(1000).astype(np.float32)\n"
        "    ps[0].grad, ps[1].grad = dp.tensor(g.copy()), dp.tensor(g.copy())\n"
        "    a.step(); b.step()\n"
        "    assert np.array_equal(ps[0].numpy(), ps[1].numpy())\n"
        "g[999] = np.nan\n"
        "ps[0].grad = dp.tensor(g)\n"
        "before = ps[0].numpy().copy()\n"
        "try:\n"
        "    a.step()\n"
        "except dp.optim.NonFiniteGradientError:\n"
        "    assert np.array_equal(ps[0].numpy(), before)\n"
        "    print('ok')\n")
    env = dict(__import__("os").environ, DLPRIMER_JIT="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_a_refusal_that_the_search_cannot_place_raises_and_writes_nothing(monkeypatch):
    """The update refused the step (a NaN or inf) but the per-parameter search finds none
    (it cannot, unless the two disagree): the step raises rather than pass as applied, and
    nothing was written."""
    rng = np.random.default_rng()
    init = [rng.standard_normal(s) for s in SHAPES]
    params, opt = _make("Adam", dp.get_backend(), "float32", init, "one run")
    gs = [rng.standard_normal(s) for s in SHAPES]
    gs[1][0] = np.nan
    _set_grads(params, gs)
    before = _snapshot(opt, params)
    monkeypatch.setattr(type(opt), "_first_nonfinite", staticmethod(lambda arena, runs: None))
    with pytest.raises(RuntimeError, match="a second look did not find; the step was not applied"):
        opt.step()
    _assert_same(before, _snapshot(opt, params))
