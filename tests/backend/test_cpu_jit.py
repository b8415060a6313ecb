"""The JIT CPU backend (numba kernels) against the NumPy ufunc-chain backend it falls back
to, the vectorisable erf against a float64 reference, and the fallbacks: DLPRIMER_JIT=0,
dtypes the kernels do not cover, a kernel that fails to compile, a read-only package dir."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.special

import dlprimer as dp
from dlprimer.backend import backend_for, jit
from dlprimer.backend.cpu import CPUBackend

pytest.importorskip("numba", reason="numba is not installed")
from dlprimer.backend.jit.backend import JitCPUBackend  # noqa: E402

ref = CPUBackend()
fast = JitCPUBackend()
EDGES = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e4, -1e4, 1e-30, -1e-30, 40.0, -40.0]
# The NumPy path cancels in 1 + erf(x) and 1 + tanh(u) for x << 0 (absolute error ~ ulp(1));
# the kernels do not, so the comparison allows that much absolute difference.
TOL = {"float32": dict(rtol=2e-5, atol=1e-5), "float64": dict(rtol=1e-12, atol=1e-13)}


def _x(rng, n, dtype):
    x = (rng.standard_normal(n) * 4).astype(dtype)
    x[:len(EDGES)] = EDGES
    return x


def _same(a, b, dtype):
    assert a.dtype == b.dtype == np.dtype(dtype) and a.shape == b.shape
    np.testing.assert_allclose(a, b, equal_nan=True, **TOL[dtype])


# name: (args after x for forward, backward from "x" or "y")
ACTS = {
    "relu": ((), "y"), "leaky_relu": ((0.1,), "x"), "elu": ((1.5,), "x"),
    "gelu": (("none",), "x"), "gelu_tanh": (("tanh",), "x"), "silu": ((), "x"),
    "sigmoid": ((), "y"), "tanh": ((), "y"),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(ACTS))
def test_activation_kernels_match_numpy_path(name, dtype, rng):
    consts, diff_from = ACTS[name]
    op = name.replace("_tanh", "")
    x = _x(rng, 3001, dtype)
    gy = rng.standard_normal(x.size).astype(dtype)
    with np.errstate(all="ignore"):
        y, y_ref = (getattr(b, op + "_forward")(x, *consts) for b in (fast, ref))
        _same(y, y_ref, dtype)
        a = x if diff_from == "x" else y_ref
        gx, gx_ref = (getattr(b, op + "_backward")(a, gy, *consts) for b in (fast, ref))
    _same(gx, gx_ref, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_bias_gelu_kernels_match_numpy_path(approximate, dtype, rng):
    x = rng.standard_normal((37, 29)).astype(dtype) * 3
    b = rng.standard_normal(29).astype(dtype)
    gy = rng.standard_normal(x.shape).astype(dtype)
    _same(fast.bias_gelu_forward(x, b, approximate), ref.bias_gelu_forward(x, b, approximate),
          dtype)
    for a, r in zip(fast.bias_gelu_backward(x, b, gy, approximate),
                    ref.bias_gelu_backward(x, b, gy, approximate)):
        np.testing.assert_allclose(a, r, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * 40)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dropout_kernel_draws_the_numpy_mask(dtype, rng):
    x = _x(rng, 70001, dtype)
    key = (int(rng.integers(2**62)), int(rng.integers(1000)))
    for p in (0.0, 0.3, 0.9):
        with np.errstate(invalid="ignore"):
            np.testing.assert_array_equal(fast.dropout_forward(x, p, key),
                                          ref.dropout_forward(x, p, key))
            np.testing.assert_array_equal(fast.dropout_backward(x, p, key),
                                          ref.dropout_backward(x, p, key))
    np.testing.assert_array_equal(fast.dropout_forward(x, 1.0, key), 0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_softmax_cross_entropy_kernels_match_numpy_path(eps, dtype, rng):
    logits = (rng.standard_normal((50, 13)) * 5).astype(dtype)
    logits[0, :3] = [1e4, -1e4, 0.0]
    logits[1, :] = -1e4
    # the kernel shifts by the row's first value and redoes a row whose sum does not fit:
    logits[2, 0] = -1e4                 # e^z overflows float64
    logits[3, :2] = [0.0, 100.0]        # e^100 overflows float32 only
    logits[4, :2] = [-0.0, 1e-30]
    logits[5, 5], logits[6, 2], logits[7, 0], logits[8, 0] = np.nan, np.inf, -np.inf, np.nan
    logits[9, :] = -np.inf
    logits[10, 7] = -np.inf
    target = rng.integers(0, 13, 50)
    with np.errstate(invalid="ignore"):
        (loss, probs), (loss_r, probs_r) = (b.softmax_cross_entropy_forward(logits, target, eps)
                                            for b in (fast, ref))
    nan_rows = [5, 6, 8, 9]
    assert np.isnan(loss_r[nan_rows]).all() and not np.isnan(np.delete(loss_r, nan_rows)).any()
    np.testing.assert_array_equal(np.isnan(loss), np.isnan(loss_r))
    _same(probs, probs_r, dtype)
    np.testing.assert_allclose(loss, loss_r, rtol=TOL[dtype]["rtol"], atol=1e-4 if dtype == "float32" else 1e-10)
    gy = rng.standard_normal(50).astype(dtype)
    for g in (gy, np.broadcast_to(np.asarray(0.5, dtype), (50,))):
        _same(fast.softmax_cross_entropy_backward(probs, target, g, eps),
              ref.softmax_cross_entropy_backward(probs, target, g, eps), dtype)


def test_check_class_targets_passes_and_raises_as_the_numpy_path(rng):
    t = rng.integers(0, 7, 40)
    for ok in (t, t.astype(np.uint8), t.astype(np.int32)[::2], t[:0]):
        assert fast.check_class_targets(ok, 7, "f") is None
        assert ref.check_class_targets(ok, 7, "f") is None
    for bad, first in ((np.r_[t, -3], -3), (np.r_[t, 7], 7), (np.r_[t, 9, -1], -1)):
        msgs = []
        for b in (fast, ref):
            with pytest.raises(ValueError, match="out of range for 7 classes") as e:
                b.check_class_targets(bad, 7, "cross_entropy")
            msgs.append(str(e.value))
        assert msgs[0] == msgs[1] and f"class {first} " in msgs[0]


def test_class_range_is_min_and_max(rng):
    t = rng.integers(-5, 50, 999)
    assert fast.class_range(t) == ref.class_range(t) == (int(t.min()), int(t.max()))
    assert fast.class_range(t.astype(np.uint8) % 7) == (int((t.astype(np.uint8) % 7).min()),
                                                       int((t.astype(np.uint8) % 7).max()))


OPTS = {
    "sgd": lambda b, p, g, s1, s2, off: b.sgd_update(p, g, None, 0.1),
    "sgd_momentum": lambda b, p, g, s1, s2, off: b.sgd_update(p, g, s1, 0.1, 0.9, 0.1, False, 0.01),
    "sgd_nesterov_first": lambda b, p, g, s1, s2, off: b.sgd_update(p, g, s1, 0.1, 0.9, 0.0, True,
                                                                   0.01, True),
    "adam": lambda b, p, g, s1, s2, off: b.adam_update(p, g, s1, s2, 1e-3, 0.9, 0.999, 1e-8, 0.01, 3),
    "adamw": lambda b, p, g, s1, s2, off: b.adam_update(p, g, s1, s2, 1e-3, 0.9, 0.999, 1e-8, 0.01,
                                                        3, True),
    "lamb": lambda b, p, g, s1, s2, off: b.lamb_update(p, g, s1, s2, off, 1e-3, 0.9, 0.999, 1e-6,
                                                       0.01, 3),
    "lars": lambda b, p, g, s1, s2, off: b.lars_update(p, g, s1, off, 0.1, 0.9, 1e-4, 0.001),
    "lars_no_momentum": lambda b, p, g, s1, s2, off: b.lars_update(p, g, None, off, 0.1, 0.0,
                                                                   1e-4, 0.001),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(OPTS))
def test_optimizer_kernels_match_numpy_path(name, dtype, rng):
    n = 70001
    arrays = [rng.standard_normal(n).astype(dtype) for _ in range(2)] + [
        rng.random(n).astype(dtype) for _ in range(2)]
    off = np.array([0, 5, 40000, n])
    runs = []
    for b in (fast, ref):
        p, g, s1, s2 = (a.copy() for a in arrays)
        OPTS[name](b, p, g, s1, s2, off)
        runs.append((p, s1, s2))
    for a, r in zip(*runs):
        np.testing.assert_allclose(a, r, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
def test_grad_norm_kernel_matches_numpy_path(norm_type, dtype, rng):
    arrays = [rng.standard_normal(s).astype(dtype) for s in ((70001,), (3, 4), (0,))]
    flat = np.concatenate([a.reshape(-1) for a in arrays]).astype(np.float64)
    exact = np.linalg.norm(flat, norm_type)
    assert fast.grad_norm(arrays, norm_type) == pytest.approx(exact, rel=1e-12)
    rel = 1e-12 if dtype == "float64" else 1e-6   # the NumPy path sums float32 blocks
    assert ref.grad_norm(arrays, norm_type) == pytest.approx(exact, rel=rel)
    arrays[1][1, 1] = np.nan
    assert math.isnan(fast.grad_norm(arrays, norm_type))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("n", [7, 70001])
def test_all_finite_kernel_finds_one_nonfinite_element(n, where, bad, dtype, rng):
    g = rng.standard_normal(n).astype(dtype) * 1e3
    assert fast.all_finite(g) and ref.all_finite(g)
    g[{"first": 0, "middle": n // 2, "last": n - 1}[where]] = bad
    assert not fast.all_finite(g)
    assert not ref.all_finite(g)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 16, 23, 8 * 1250 + 5])
def test_all_finite_kernel_reads_every_stream_and_the_tail(n, dtype, rng):
    """The kernel reads ``a`` as 8 side-by-side streams (its eighths) and then the tail: a
    NaN or inf at each stream's first and last element and at every tail element is found,
    through the backend and by the kernel itself (below, at and above the 8-element split)."""
    from dlprimer.backend.jit import kernels
    q = n // 8
    spots = {k * q + j for k in range(8) for j in ((0, q - 1) if q else ())} | set(range(8 * q, n))
    for i in sorted(spots):
        g = (rng.standard_normal(n) * 1e3).astype(dtype)
        assert kernels.all_finite(g) and fast.all_finite(g)
        g[i] = rng.choice([np.nan, np.inf, -np.inf])
        assert not kernels.all_finite(g), i
        assert not fast.all_finite(g), i
        assert not ref.all_finite(g), i


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_all_finite_kernel_edges(dtype):
    big = np.finfo(dtype).max
    assert fast.all_finite(np.empty(0, dtype))
    assert fast.all_finite(np.array([big, -big, big, 0.0, -0.0], dtype))  # sum would overflow
    assert ref.all_finite(np.full(20000, big, dtype))                     # dot overflows
    assert fast.all_finite(np.full(20000, big, dtype))
    assert not fast.all_finite(np.array([np.inf, -np.inf], dtype))


# -- the vectorisable erf (normal tail) of the exact GELU ---------------------------------------
def _gelu64(x):
    return x * scipy.special.ndtr(x)


def _ulps(got, want64):
    """|got - want64| in float32 ulps of want64 rounded to float32 (subnormal ulps below)."""
    want = want64.astype(np.float32)
    ulp = np.maximum(np.spacing(np.abs(want)), np.spacing(np.float32(0))).astype(np.float64)
    err = np.abs(got.astype(np.float64) - want) / ulp
    return np.where(np.isnan(want) & np.isnan(got), 0.0, err)


def test_exact_gelu_float32_within_2_ulp_of_float64_reference(rng):
    """Issue 18's bound: the float32 GELU computes in float32 (mathfn.normal_tailf) and lands
    within 2 ulp of the float64 reference (every float32 in [-10, 10] was checked once: 2 at
    most); here a dense grid of [-15, 10], random points, subnormal results (x < -13.2) and
    the extremes."""
    x = np.concatenate([np.linspace(-15, 10, 2_500_001, dtype=np.float32),
                        rng.uniform(-10, 10, 200_000).astype(np.float32),
                        np.float32([-13.5, -12.0, 3e38, -3e38, 1e-40, -1e-40, 1e-45, -1e-45,
                                    1e-8, -1e-8, 0.0, -0.0, 1e4, -1e4, -14.99, 14.99])])
    got = fast.gelu_forward(x)
    err = _ulps(got, _gelu64(x.astype(np.float64)))
    assert err.max() <= 2, (x[err.argmax()], got[err.argmax()], err.max())
    assert np.mean(err) < 0.2          # a bound met by a wide margin, not at its edge


def test_float32_silu_within_2_ulp_of_float64_reference(rng):
    """SiLU of float32 arrays in float32 arithmetic (mathfn.siluf): 2 ulp at most (1 measured
    on every float32 in [-10, 10] and on this grid, subnormal results included)."""
    x = np.concatenate([np.linspace(-110, 90, 1_000_001, dtype=np.float32),
                        rng.standard_normal(100_000).astype(np.float32) * 5,
                        np.float32([0.0, -0.0, 1e-30, -1e-30, 1e-45, -1e-45, 1e4, -1e4, 3e38,
                                    -3e38, 125.9, -125.9, 126.0, -126.0])])
    x64 = x.astype(np.float64)
    err = _ulps(fast.silu_forward(x), scipy.special.expit(x64) * x64)
    assert err.max() <= 2, (x[err.argmax()], err.max())
    assert np.mean(err) < 0.2


def test_float32_sigmoid_within_1_ulp_of_float64_reference(rng):
    x = np.concatenate([np.linspace(-110, 90, 1_000_001, dtype=np.float32),
                        rng.standard_normal(100_000).astype(np.float32) * 5,
                        np.float32([0.0, -0.0, 1e-30, -1e-30, 1e4, -1e4, 3e38, -3e38])])
    err = _ulps(fast.sigmoid_forward(x), scipy.special.expit(x.astype(np.float64)))
    assert err.max() <= 1, (x[err.argmax()], err.max())


def test_float32_gelu_and_silu_gradients_near_float64_reference(rng):
    """The float32 backward kernels: GELU' within 8 ulp and SiLU' within 4 ulp of the float64
    reference, except around the derivative's zero (GELU's minimum at x = -0.75, SiLU's at
    -1.28), where they are within 4e-8 and 2e-8 absolute."""
    x = np.concatenate([np.linspace(-15, 10, 1_000_001, dtype=np.float32),
                        rng.uniform(-10, 10, 100_000).astype(np.float32)])
    x64 = x.astype(np.float64)
    gy = np.ones_like(x)
    pdf = np.exp(-0.5 * x64 * x64) / math.sqrt(2 * math.pi)
    want = scipy.special.ndtr(x64) + x64 * pdf
    got = fast.gelu_backward(x, gy)
    ok = (_ulps(got, want) <= 8) | (np.abs(got - want) <= 4e-8)
    assert ok.all(), x[~ok][:5]
    x = np.concatenate([np.linspace(-110, 90, 1_000_001, dtype=np.float32), x])
    x64 = x.astype(np.float64)
    s = scipy.special.expit(x64)
    want = s * (1 + x64 * (1 - s))
    got = fast.silu_backward(x, np.ones_like(x))
    ok = (_ulps(got, want) <= 4) | (np.abs(got - want) <= 2e-8)
    assert ok.all(), x[~ok][:5]


def test_float32_kernels_use_512_bit_vectors_where_the_cpu_has_them(tmp_path):
    """mathfn.wide_vectors_for: the float32 GELU/SiLU loops run 16 lanes (zmm registers) on
    an AVX-512 CPU; the float64 SiLU kernel keeps the vectors it had (no zmm). Compiled in a
    fresh cache directory: code loaded from numba's cache has no assembly to inspect."""
    import llvmlite.binding as ll
    if "+avx512f" not in ll.get_host_cpu_features().flatten():
        pytest.skip("no AVX-512 on this CPU")
    code = ("import numpy as np; from dlprimer.backend.jit import kernels as k\n"
            "for f, dt in ((k.silu_forward, 'float32'), (k.gelu_erf_forward, 'float32'),"
            " (k.silu_forward, 'float64')):\n"
            "    x = np.ones(64, dt); f(x, np.empty_like(x))\n"
            "    sig = [s for s in f.signatures if str(s[0].dtype) == dt][0]\n"
            "    print(dt, 'zmm' in f.inspect_asm(sig))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}, check=True)
    assert out.stdout.split() == ["float32", "True", "float32", "True", "float64", "False"]


def test_exp32_relative_error_below_8e_9(rng):
    """mathfn.exp32, the float32 paths' exp, over its whole range (and its edges)."""
    import numba
    from dlprimer.backend.jit import mathfn

    @numba.njit
    def run(x, out):
        for i in range(x.size):
            out[i] = mathfn.exp32(x[i])
    x = np.concatenate([np.linspace(-708, 709, 400_001), rng.uniform(-20, 20, 100_000),
                        [0.0, -0.0, 1e-300, -1e-300, 0.5 * math.log(2), -0.5 * math.log(2)]])
    out = np.empty_like(x)
    run(x, out)
    assert np.max(np.abs(out / np.exp(x) - 1)) < 8e-9
    edges = np.array([-708.5, -1e4, -np.inf, 709.8, 1e4, np.inf, np.nan])
    out = np.empty_like(edges)
    run(edges, out)
    np.testing.assert_array_equal(out, [0, 0, 0, np.inf, np.inf, np.inf, np.nan])


def test_exact_gelu_float64_within_1e_14_relative(rng):
    """Against mpmath at 30 digits: SciPy's ndtr(x) rounds x / sqrt 2 first, which alone is
    ~1e-14 relative at |x| = 10, too coarse a reference here."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 30
    x = np.concatenate([np.linspace(-10, 10, 1001), rng.uniform(-10, 10, 1000), [-9.99, 9.99]])
    got = fast.gelu_forward(x)
    want = np.array([float(mpmath.mpf(v) * mpmath.ncdf(mpmath.mpf(v))) for v in x])
    nz = want != 0
    assert np.max(np.abs(got[nz] / want[nz] - 1)) <= 1e-14
    assert np.all(got[~nz] == 0)


def test_exact_gelu_extremes():
    for dt in (np.float32, np.float64):
        x = np.array([np.inf, -np.inf, np.nan, 1e4, -1e4, 0.0, -0.0], dtype=dt)
        with np.errstate(invalid="ignore"):
            y, y_ref = fast.gelu_forward(x), ref.gelu_forward(x)
        np.testing.assert_array_equal(y, y_ref)   # inf, NaN (as the NumPy path), NaN, 1e4, -0...
        assert np.signbit(y[4])


# -- fallbacks ----------------------------------------------------------------------------
def test_default_cpu_backend_is_the_jit_one():
    assert isinstance(backend_for("cpu"), JitCPUBackend) == jit.enabled()


def test_jit_off_by_environment_gives_the_numpy_backend():
    code = ("import dlprimer as dp; from dlprimer.backend import backend_for; "
            "b = backend_for('cpu'); print(type(b).__name__, getattr(b, 'jit', False))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "DLPRIMER_JIT": "0"}, check=True).stdout
    assert out.split() == ["CPUBackend", "False"]


@pytest.mark.parametrize("dtype", ["int64"])
def test_dtypes_without_kernels_take_the_numpy_path(dtype, rng):
    x = (rng.standard_normal(100) * 3).astype(dtype)
    gy = np.ones(100, dtype=dtype)
    for op in ("relu", "silu", "gelu", "sigmoid"):
        y = getattr(fast, op + "_forward")(x)
        np.testing.assert_array_equal(y, getattr(ref, op + "_forward")(x))
    np.testing.assert_array_equal(fast.relu_backward(x, gy), ref.relu_backward(x, gy))


def test_float16_runs_the_float32_kernel_on_blocks(rng):
    """Half inputs run the JIT's float32 kernel on float32 blocks (backend/half.py) and
    round once: the float32 kernel's result rounded, within a half ulp of NumPy's."""
    x = (rng.standard_normal(40_000) * 3).astype(np.float16)
    for op in ("silu", "gelu", "sigmoid"):
        y = getattr(fast, op + "_forward")(x)
        assert y.dtype == np.float16
        np.testing.assert_array_equal(y, getattr(fast, op + "_forward")(x.astype(np.float32))
                                      .astype(np.float16))
        np.testing.assert_allclose(y, getattr(ref, op + "_forward")(x), rtol=2 ** -10,
                                   atol=1e-6)


def test_bfloat16_takes_the_numpy_path(rng):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = rng.standard_normal(64).astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(fast.relu_forward(x), ref.relu_forward(x))


def test_a_kernel_that_fails_to_compile_warns_once_and_falls_back(monkeypatch, rng):
    import numba

    @numba.njit
    def broken(x, out):
        out[0] = x.no_such_attribute   # a typing error at first call

    ks = jit._load()
    monkeypatch.setattr(ks, "silu_forward", broken)
    monkeypatch.setattr(jit, "_failed", {})
    monkeypatch.delitem(jit._ready, "silu_forward", raising=False)   # the glue's cache
    x = rng.standard_normal(50)
    with pytest.warns(RuntimeWarning, match=r"kernel 'silu_forward' failed to compile \(Typing"):
        y = fast.silu_forward(x)
    np.testing.assert_allclose(y, ref.silu_forward(x), rtol=1e-15)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(fast.silu_forward(x), ref.silu_forward(x), rtol=1e-15)
    assert "silu_forward" in jit.failed()


@pytest.mark.parametrize("name", ["relu_backward", "int_range", "softmax_xent_forward",
                                  "softmax_xent_backward"])
def test_glue_that_calls_a_kernel_directly_falls_back_once_too(monkeypatch, rng, name):
    """The activation and cross-entropy glue calls the kernels' dispatchers itself
    (jit.kernel); a compile error there warns once and takes the NumPy path, as jit.call."""
    import warnings

    import numba

    @numba.njit
    def broken(*args):
        return args[0].no_such_attribute

    ks = jit._load()
    monkeypatch.setattr(ks, name, broken)
    monkeypatch.setattr(jit, "_failed", {})
    monkeypatch.delitem(jit._ready, name, raising=False)
    y = np.maximum(rng.standard_normal((6, 5)), 0)
    gy = rng.standard_normal((6, 5))
    t = rng.integers(0, 5, 6)
    probs = ref.softmax_cross_entropy_forward(gy, t)[1]
    run = {"relu_backward": lambda b: b.relu_backward(y, gy),
           "int_range": lambda b: np.array(b.class_range(t)),
           "softmax_xent_forward": lambda b: b.softmax_cross_entropy_forward(gy, t, 0.1)[0],
           "softmax_xent_backward": lambda b: b.softmax_cross_entropy_backward(
               probs, t, np.asarray(0.5), 0.1)}[name]
    with pytest.warns(RuntimeWarning, match=rf"kernel '{name}' failed to compile"):
        got = run(fast)
    np.testing.assert_allclose(got, run(ref), rtol=1e-15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(run(fast), run(ref), rtol=1e-15)
        if name == "int_range":
            fast.check_class_targets(t, 5, "f")
            with pytest.raises(ValueError, match="class 5 is out of range"):
                fast.check_class_targets(np.r_[t, 5], 5, "f")
    assert name in jit.failed() and name not in jit._ready


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kw", [dict(), dict(momentum=0.9, first_step=True),
                                dict(momentum=0.9, dampening=0.1, nesterov=False, weight_decay=0.01),
                                dict(momentum=0.8, nesterov=True, weight_decay=0.1)])
def test_a_bound_sgd_update_repeats_sgd_update(dtype, kw, rng):
    """bind_sgd_update: the kernel's entry point with the arguments converted once; calling
    it again and again is the same as calling sgd_update with them again and again."""
    p = rng.standard_normal(1000).astype(dtype)
    g = rng.standard_normal(1000).astype(dtype)
    buf = rng.standard_normal(1000).astype(dtype) if kw.get("momentum") else None
    p2, buf2 = p.copy(), None if buf is None else buf.copy()
    fn = fast.bind_sgd_update(p, g, buf, 0.05, **kw)
    assert callable(fn)
    for _ in range(3):
        fn()
        ref.sgd_update(p2, g, buf2, 0.05, **kw)
        g += 0.5                         # new values in the same array reach the bound call
    _same(p, p2, dtype)
    if buf is not None:
        _same(buf, buf2, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_a_bound_checked_sgd_update_writes_nothing_on_a_nonfinite_gradient(dtype, momentum,
                                                                           rng):
    """bind_sgd_update(check=True): True and bit for bit sgd_update's result on finite
    gradients; False with nothing written (weights, momentum buffer) on a NaN or inf."""
    p, g = rng.standard_normal(1003).astype(dtype), rng.standard_normal(1003).astype(dtype)
    buf = rng.standard_normal(1003).astype(dtype) if momentum else None
    kw = dict(momentum=momentum, weight_decay=0.01)
    fn = fast.bind_sgd_update(p, g, buf, 0.05, check=True, **kw)
    want_p, want_b = p.copy(), None if buf is None else buf.copy()
    fast.sgd_update(want_p, g, want_b, 0.05, **kw)
    assert fn() is True
    np.testing.assert_array_equal(p, want_p)
    if momentum:
        np.testing.assert_array_equal(buf, want_b)
    for where in (0, 500, 1002):
        g[where] = rng.choice([np.nan, np.inf, -np.inf])
        before = (p.copy(), None if buf is None else buf.copy())
        assert fn() is False
        np.testing.assert_array_equal(p, before[0])
        if momentum:
            np.testing.assert_array_equal(buf, before[1])
        g[where] = 1.0
    assert fast.bind_sgd_update(p, g, buf, 0.05, **kw)() is True   # unchecked: always runs


def test_bind_declines_what_it_cannot_bind(rng, monkeypatch):
    p16 = rng.standard_normal(10).astype(np.float16)
    p32 = rng.standard_normal(10).astype(np.float32)
    assert fast.bind_sgd_update(p16, p16.copy(), None, 0.1) is None     # no kernel for half
    assert fast.bind_sgd_update(p32, p32.astype(np.float64), None, 0.1) is None
    assert ref.bind_sgd_update(p32, p32.copy(), None, 0.1) is None      # the NumPy path
    with dp.fusion(False):                                              # shadowed method
        assert backend_for("cpu").bind_sgd_update(p32, p32.copy(), None, 0.1) is None
    monkeypatch.setattr(jit, "_failed", {"sgd": "a test's failure"})
    assert jit.bind("sgd", p32, p32.copy()) is jit.NO


def test_cache_dir_falls_back_when_the_package_dir_is_read_only(tmp_path, monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    assert jit.cache_dir_for(str(pkg)) is None     # writable: numba's default
    real_access = os.access
    read_only = (str(pkg), str(pkg / "__pycache__"))    # as a system-wide install (root can
    monkeypatch.setattr(os, "access",                   # write anywhere, so no chmod here)
                        lambda p, mode: False if str(p) in read_only else real_access(p, mode))
    assert jit.cache_dir_for(str(pkg)) == str(tmp_path / "cache" / "dlprimer" / "numba")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert jit.cache_dir_for(str(pkg)) is None


# A few float32 training steps that vary what callers vary (batch size, integer type of the
# targets, a read-only input batch, a dropout seed past 2^63, per-sample loss gradients):
# each must reuse the kernel's one signature, since every further one costs a compile.
_STEPS = """
import json, sys, numpy as np, dlprimer as dp
from dlprimer.backend import jit
meter, imported = dp.get_backend().memory, ["numba" in sys.modules]
meter.start()           # the JIT's meter imports numba first, so tracemalloc never sees it
imported.append("numba" in sys.modules)
meter.stop()
dp.manual_seed(2**64 - 5)
m = dp.nn.Sequential(dp.nn.Linear(8, 16), dp.nn.GELU(), dp.nn.Dropout(0.25), dp.nn.ReLU(),
                     dp.nn.Linear(16, 3))
opt = dp.optim.Adam(m.parameters(), lr=1e-2)
rng = np.random.default_rng()
for n, tdt, red in ((32, np.int64, "mean"), (17, np.int32, "none"), (5, np.uint8, "sum")):
    x = rng.standard_normal((n, 8)).astype(np.float32)
    x.flags.writeable = False
    opt.zero_grad()
    loss = dp.nn.functional.cross_entropy(m(dp.tensor(x)), rng.integers(0, 3, n).astype(tdt),
                                          reduction=red)
    (loss * 0.5).sum().backward()
    opt.step()
print(json.dumps({**jit.compile_stats(), "summary": jit.summary(), "imported": imported,
                  "sees_warm_up": meter.sees_warm_up}))
"""


def _steps_in_a_process(cache):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    env.pop("DLPRIMER_JIT", None)
    out = subprocess.run([sys.executable, "-c", _STEPS], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    import json
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kernels_compile_once_per_signature_into_an_empty_cache_then_load_from_it(tmp_path):
    """No test depends on a warm cache: a fresh NUMBA_CACHE_DIR compiles, runs and fills;
    each kernel compiles one signature (a second one would double its first-run cost); the
    next process compiles nothing and loads them all; both runs say so in jit.summary()."""
    first = _steps_in_a_process(tmp_path / "nc")
    names = [c[0] for c in first["compiled"]]
    assert not first["failed"] and first["loaded"] == 0
    assert first["imported"] == [False, True] and first["sees_warm_up"]
    assert len(names) == len(set(names)), sorted(names)     # one signature per kernel
    assert {"gelu_erf_forward", "gelu_erf_backward", "dropout", "relu_forward",
            "softmax_xent_forward", "softmax_xent_backward", "adam"} <= set(names)
    assert all("float64" not in c[1] or c[0] == "softmax_xent_forward"   # eps, by design
               for c in first["compiled"]), first["compiled"]
    assert first["compile_s"] == pytest.approx(sum(c[2] for c in first["compiled"]))
    assert first["summary"].startswith(f"JIT compile: {first['compile_s']:.1f} s for "
                                       f"{len(names)} kernel signatures (first run")
    assert any(f.endswith(".nbi") for _, _, fs in os.walk(tmp_path / "nc") for f in fs)
    second = _steps_in_a_process(tmp_path / "nc")
    assert second["compiled"] == [] and second["loaded"] == len(names)
    assert second["summary"].startswith(f"JIT compile: none, {len(names)} kernel signatures "
                                        "loaded from the cache")


def test_the_garbage_collector_pauses_for_the_outermost_compile_only():
    """A compile's many short-lived objects would set off collections of the whole heap: gc
    is off from the outermost numba compile's start to its end (a nested helper compile
    changes nothing), then back as the caller had it, also when the compile fails."""
    import gc

    from numba.core import event
    assert jit._load() and not jit._untimed
    was = gc.isenabled()
    try:
        for before in (True, False):
            (gc.enable if before else gc.disable)()
            with pytest.raises(ZeroDivisionError):
                with event.trigger_event("numba:compile", data={"dispatcher": None}):
                    assert not gc.isenabled()
                    with event.trigger_event("numba:compile", data={"dispatcher": None}):
                        assert not gc.isenabled()
                    assert not gc.isenabled()
                    1 / 0
            assert gc.isenabled() is before
    finally:
        (gc.enable if was else gc.disable)()


def test_summary_names_the_jit_switch_and_kernels_that_fell_back(monkeypatch):
    monkeypatch.setenv("DLPRIMER_JIT", "0")
    assert jit.summary().startswith("JIT off (DLPRIMER_JIT=0)")
    monkeypatch.setenv("DLPRIMER_JIT", "1")
    monkeypatch.setattr(jit, "_failed", {"silu_forward": "TypingError: no attribute"})
    assert jit.summary().endswith("; fell back to NumPy: silu_forward")
    assert jit.compile_stats()["failed"] == {"silu_forward": "TypingError: no attribute"}
    monkeypatch.setattr(jit, "_untimed", ["AttributeError: no numba.core.event"])
    assert jit.summary().startswith("JIT compile: not measured (AttributeError: no numba")


def test_training_trajectory_is_the_same_with_the_jit_off(rng):
    """A few Adam steps of a small MLP: the JIT backend and the NumPy backend agree."""
    x = rng.standard_normal((32, 8))
    y = rng.integers(0, 3, 32)
    finals = []
    for b in (fast, ref):
        b.manual_seed(0)
        with dp.use_backend(b):
            model = dp.nn.Sequential(dp.nn.Linear(8, 16), dp.nn.GELU(), dp.nn.Linear(16, 3))
            opt = dp.optim.Adam(model.parameters(), lr=1e-2)
            for _ in range(5):
                opt.zero_grad()
                loss = dp.nn.functional.cross_entropy(model(dp.tensor(x)), y)
                loss.backward()
                opt.step()
            finals.append([p.numpy().copy() for p in model.parameters()])
    for a, r in zip(*finals):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6)   # float32 parameters
