"""Backend.checked_update: an optimizer update that runs only when its gradient holds no
NaN or inf (one kernel call on the JIT CPU backend for SGD and Adam/AdamW, a check and then
the update elsewhere). When it runs it is bit for bit the unchecked update of the same
backend; when it does not, nothing is written (weights and state)."""
import numpy as np
import pytest

import dlprimer as dp
from dlprimer.backend import backend_for
from dlprimer.backend.cpu import CPUBackend

pytest.importorskip("numba", reason="numba is not installed")
from dlprimer.backend.jit.backend import JitCPUBackend  # noqa: E402

N = 8 * 130 + 5            # eight streams of 130 elements and a tail of 5


def _case(kind, rng, dtype, n=N):
    """(update name, positional arguments, keyword arguments) over fresh random arrays."""
    def a(scale=1.0):
        return (rng.standard_normal(n) * scale).astype(dtype)
    p, g = a(), a()
    offsets = np.array([0, 7, n // 2, n], dtype=np.int64)
    if kind.startswith("sgd"):
        mom = kind != "sgd"
        kw = dict(momentum=0.9 if mom else 0.0, weight_decay=0.01 if mom else 0.0,
                  nesterov=kind == "sgd nesterov", dampening=0.2 if kind == "sgd damped" else 0.0,
                  first_step=kind == "sgd first")
        return "sgd", (p, g, a() if mom else None, 0.05), kw
    m, v = a(0.1), np.abs(a(0.01))
    if kind in ("adam", "adamw"):
        return "adam", (p, g, m, v, 1e-2, 0.9, 0.999, 1e-8, 0.01, 3), dict(
            decoupled=kind == "adamw")
    if kind == "lamb":
        return "lamb", (p, g, m, v, offsets, 1e-2, 0.9, 0.999, 1e-6, 0.01, 2), {}
    return "lars", (p, g, a(), offsets, 0.1, 0.9, 1e-4, 0.001), {}


KINDS = ["sgd", "sgd momentum", "sgd first", "sgd nesterov", "sgd damped", "adam", "adamw",
         "lamb", "lars"]


def _arrays(args):
    return [x for x in args if isinstance(x, np.ndarray) and x.dtype.kind == "f"]


def _copy(args):
    return tuple(x.copy() if isinstance(x, np.ndarray) else x for x in args)


BACKENDS = {"jit": JitCPUBackend(), "numpy": CPUBackend()}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("be", list(BACKENDS))
def test_checked_update_is_the_update_when_finite(be, kind, dtype, rng):
    be = BACKENDS[be]
    name, args, kw = _case(kind, rng, dtype)
    other = _copy(args)
    assert be.checked_update(name, *args, **kw) is True
    getattr(be, f"{name}_update")(*other, **kw)
    for got, want in zip(_arrays(args), _arrays(other)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("be", list(BACKENDS))
def test_checked_update_writes_nothing_on_a_nonfinite_gradient(be, kind, dtype, rng):
    """A NaN or inf in the first, a middle, the last stream, or the tail: False, and every
    array (weights, moments, momentum buffer; the gradient too) as it was."""
    be = BACKENDS[be]
    q = N // 8
    for where in (0, 3 * q + 1, 8 * q - 1, N - 1):
        name, args, kw = _case(kind, rng, dtype)
        args[1][where] = rng.choice([np.nan, np.inf, -np.inf])
        before = [x.copy() for x in _arrays(args)]
        with np.errstate(all="raise"):       # not even a NumPy warning from a skipped update
            assert be.checked_update(name, *args, **kw) is False
        for got, want in zip(_arrays(args), before):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kind", ["sgd momentum", "adam"])
def test_checked_update_with_fusion_off_runs_the_unfused_update(kind, rng):
    """Under dp.fusion(False) the JIT backend's update methods are the unfused chains: the
    checked update checks, then runs those (not the kernel)."""
    be = backend_for("cpu")
    name, args, kw = _case(kind, rng, "float64")
    other = _copy(args)
    with dp.fusion(False):
        assert f"{name}_update" in vars(be)
        assert be.checked_update(name, *args, **kw) is True
        getattr(be, f"{name}_update")(*other, **kw)
        for got, want in zip(_arrays(args), _arrays(other)):
            np.testing.assert_array_equal(got, want)
        args[1][-1] = np.nan
        before = [x.copy() for x in _arrays(args)]
        assert be.checked_update(name, *args, **kw) is False
        for got, want in zip(_arrays(args), before):
            np.testing.assert_array_equal(got, want)


def test_checked_update_on_a_dtype_without_kernels_takes_the_numpy_path(rng):
    be = BACKENDS["jit"]
    name, args, kw = _case("adam", rng, "float16")
    other = _copy(args)
    assert be.checked_update(name, *args, **kw) is True
    BACKENDS["numpy"].adam_update(*other, **kw)
    for got, want in zip(_arrays(args), _arrays(other)):
        np.testing.assert_array_equal(got, want)
    args[1][0] = np.inf
    before = [x.copy() for x in _arrays(args)]
    assert be.checked_update(name, *args, **kw) is False
    for got, want in zip(_arrays(args), before):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("decoupled", [False, True])
def test_a_bound_adam_update_is_adam_update_and_checks(dtype, decoupled, rng):
    """bind_adam_update: the kernel bound to its arrays, the scalars passed at each call (the
    bias corrections change every step); bit for bit adam_update, and with ``check`` False
    and nothing written on a NaN or inf."""
    be = BACKENDS["jit"]
    name, args, kw = _case("adamw" if decoupled else "adam", rng, dtype)
    p, g, m, v = args[:4]
    hyper = (1e-2, 0.9, 0.999, 1e-8, 0.01)
    fn = be.bind_adam_update(p, g, m, v, decoupled=decoupled)
    other = _copy(args[:4])
    for step, check in ((1, False), (2, True), (3, False)):
        be.adam_update(*other, *hyper, step, decoupled=decoupled)
        assert fn(*hyper, step, check) is True
        for got, want in zip((p, g, m, v), other):
            np.testing.assert_array_equal(got, want)
    g[N - 1] = np.nan
    before = [x.copy() for x in (p, m, v)]
    assert fn(*hyper, 4, True) is False
    for got, want in zip((p, m, v), before):
        np.testing.assert_array_equal(got, want)


def test_bind_adam_update_declines_what_it_cannot_bind(rng):
    name, args, kw = _case("adam", rng, "float32")
    assert BACKENDS["numpy"].bind_adam_update(*args[:4]) is None
    half = _case("adam", rng, "float16")[1]
    assert BACKENDS["jit"].bind_adam_update(*half[:4]) is None
    with dp.fusion(False):
        assert backend_for("cpu").bind_adam_update(*args[:4]) is None
