"""The CPU backend's fused ops on float16 / bfloat16 inputs (backend/half.py).

Each op must equal the backend's own float32 op rounded once to the half type, bit for
bit, and its float64 formula rounded to the half type within one unit in the last place
of that type (plus float32's absolute error where the formula cancels, e.g. GELU's
tail), on fresh random inputs plus +-1e4 (past float16's range: inf), 0, -0.0, NaN and
+-inf, with NaN and inf exactly where the reference has them. Both the NumPy path and
the JIT path (numba kernels on the float32 blocks) are checked, on arrays longer than
a block and not a multiple of it.
"""
import tracemalloc

import numpy as np
import pytest

import dlprimer as dp
import dlprimer.nn.functional as F
from dlprimer.backend import half
from dlprimer.backend.cpu import CPUBackend

from ._activation_ref import reference

HALVES = (np.dtype(np.float16), dp.bfloat16)
# the edge values (NaN, inf, +-1e4) make NumPy warn inside the ops and the references
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:overflow encountered:RuntimeWarning")
EDGES = np.array([1e4, -1e4, 0.0, -0.0, np.nan, np.inf, -np.inf, 3.0, -3.0], np.float64)


def _backends():
    out = [pytest.param(CPUBackend(), id="numpy")]
    try:
        from dlprimer.backend.jit.backend import JitCPUBackend
        out.append(pytest.param(JitCPUBackend(), id="jit"))
    except ImportError:  # the JIT package is optional
        pass
    return out


BACKENDS = _backends()


def ulp(v, dtype):
    """The spacing of the half grid at |v| (subnormal spacing near 0)."""
    a = np.abs(np.asarray(v, np.float64))
    if np.dtype(dtype) == np.float16:
        mant, emin = 10, -14
    else:
        mant, emin = 7, -126
    e = np.floor(np.log2(np.where(a > 0, a, 1.0)))
    return 2.0 ** (np.maximum(e, emin) - mant)


def assert_half_close(got, ref64, dtype, what="", atol=0.0):
    """``got`` (half) within one half ulp (plus ``atol``) of ``ref64`` rounded to
    ``dtype``; NaN and inf exactly where the rounded reference has them."""
    assert got.dtype == np.dtype(dtype), (what, got.dtype)
    with np.errstate(all="ignore"):
        want = ref64.astype(np.float32).astype(dtype).astype(np.float64)
    g = got.astype(np.float64)
    bad_nan = np.isnan(g) != np.isnan(want)
    assert not bad_nan.any(), f"{what}: NaN differs at {np.flatnonzero(bad_nan)[:5]}"
    inf = np.isinf(want) | np.isinf(g)
    assert np.array_equal(g[inf], want[inf]), f"{what}: inf differs: {g[inf]} vs {want[inf]}"
    fin = ~np.isnan(want) & ~inf
    err = np.abs(g[fin] - want[fin])
    tol = ulp(want[fin], dtype) + np.broadcast_to(atol, g.shape)[fin]
    worst = np.argmax(err - tol) if err.size else 0
    assert np.all(err <= tol), (f"{what}: {g[fin][worst]} vs {want[fin][worst]} "
                                f"({err[worst] / tol[worst]:.1f} ulp)")


def from_output_grad(name, y, gy):
    """Backward of sigmoid / tanh from the (half) output y, in float64."""
    y, gy = y.astype(np.float64), gy.astype(np.float64)
    return gy * y * (1 - y) if name == "sigmoid" else gy * (1 - y * y)


def draw(rng, dtype, n=half.BLOCK * 2 + 123, scale=3.0):
    x = (rng.standard_normal(n) * scale)
    x[:EDGES.size] = EDGES
    with np.errstate(over="ignore"):
        return x.astype(np.float32).astype(dtype)


CASES = [("gelu", {}), ("gelu_tanh", {}), ("silu", {}), ("sigmoid", {}), ("tanh", {}),
         ("elu", {"alpha": 1.0}), ("leaky_relu", {"negative_slope": 0.01}), ("relu", {})]


#: float32's absolute error near 0 where a formula cancels (GELU's 0.5 (1 + erf) tail)
F32_ATOL = 2e-6


def assert_rounded_once(be, name, kind, got, *arrays, **kw):
    """``got`` is the backend's float32 op on the arrays in float32, rounded once."""
    with np.errstate(all="ignore"):
        want = _call(be, name, kind, *(a.astype(np.float32) for a in arrays), **kw)
        want = want.astype(got.dtype)
    g32, w32 = got.astype(np.float32), want.astype(np.float32)
    same = (g32 == w32) | (np.isnan(g32) & np.isnan(w32))      # -0.0 == 0.0 (np.maximum)
    assert same.all(), f"{name} {kind}: {got[~same][:4]} vs {want[~same][:4]}"


def _call(be, name, kind, *arrays, **kw):
    op = "gelu" if name == "gelu_tanh" else name
    if name == "gelu_tanh":
        kw = {"approximate": "tanh"}
    return getattr(be, f"{op}_{kind}")(*arrays, *kw.values())


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", HALVES, ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
def test_half_activation_equals_float32_math_rounded_once(be, dtype, name, kw, rng):
    x = draw(rng, dtype)
    gy = draw(rng, dtype, scale=1.0)
    a = next(iter(kw.values()), None)
    fwd64, bwd64 = reference(name, x, gy, a)
    y = _call(be, name, "forward", x, **kw)
    assert_rounded_once(be, name, "forward", y, x, **kw)
    # float32's error where the formula cancels grows with |x| (GELU-tanh's x^3 term)
    atol = F32_ATOL * (1 + np.minimum(np.abs(x.astype(np.float64)), 10)) ** 3
    assert_half_close(y, fwd64, dtype, f"{name} forward", atol=atol)
    saved = y if name in ("sigmoid", "tanh", "relu") else x   # these differentiate from y
    gx = _call(be, name, "backward", saved, gy, **kw)
    assert_rounded_once(be, name, "backward", gx, saved, gy, **kw)
    if name in ("sigmoid", "tanh"):
        bwd64 = from_output_grad(name, y, gy)
    assert_half_close(gx, bwd64, dtype, f"{name} backward", atol=atol)


@pytest.mark.parametrize("be", BACKENDS)
def test_half_activation_takes_any_layout_and_a_float32_gradient(be, rng):
    x = draw(rng, dp.bfloat16, n=300 * 70).reshape(300, 70).T        # not contiguous
    gy = rng.standard_normal(x.shape).astype(np.float32)              # float32 gy, half x
    gx = be.gelu_backward(x, gy)
    assert gx.dtype == dp.bfloat16 and gx.shape == x.shape
    assert_half_close(gx, reference("gelu", x, gy)[1], dp.bfloat16, "gelu backward",
                      atol=F32_ATOL)
    empty = be.silu_forward(np.empty((0, 3), np.float16))
    assert empty.shape == (0, 3) and empty.dtype == np.float16


@pytest.mark.parametrize("be", BACKENDS)
def test_half_activation_never_makes_a_float32_copy_of_the_tensor(be, rng):
    x = rng.standard_normal(1 << 20).astype(np.float16)    # 2 MiB; a float32 copy: 4 MiB
    be.gelu_forward(x[:100])                                  # compile / warm up
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        y = be.gelu_forward(x)
        extra = tracemalloc.get_traced_memory()[1] - before - y.nbytes
    finally:
        tracemalloc.stop()
    assert extra < 1 << 20, f"{extra} bytes beyond the half output"


# -- softmax cross-entropy on half logits ----------------------------------------------------
def ce_reference(x, t, eps):
    """float64 row losses and the gradient of their sum, from the half logits' values."""
    x = x.astype(np.float64)
    n, c = x.shape
    with np.errstate(all="ignore"):
        m = x.max(axis=1, keepdims=True)
        z = x - m
        lse = np.log(np.exp(z).sum(axis=1, keepdims=True))
        logp = z - lse
        q = np.full_like(x, eps / c)
        q[np.arange(n), t] += 1 - eps
        return -(q * logp).sum(axis=1), np.exp(logp) - q


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", HALVES, ids=["float16", "bfloat16"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_half_cross_entropy_float32_loss_half_gradient(be, dtype, eps, rng):
    n, c = 700, 37                                    # more rows than one block holds
    x = (rng.standard_normal((n, c)) * 4).astype(np.float32)
    x[0, :3] = [6e4, -6e4, 0.0]                        # finite extremes of float16
    x[1, :2] = [-0.0, 0.0]
    x = x.astype(dtype)
    t = rng.integers(0, c, n)
    loss, stats = be.fused_classifier_forward(x, t, eps)
    assert loss.dtype == stats.dtype == np.float32
    ref_loss, ref_g = ce_reference(x, t, eps)
    scale = np.abs(x.astype(np.float32)).max(axis=1)     # float32 rounds z = x - max at it
    assert np.all(np.abs(loss - ref_loss) <= 1e-5 * np.abs(ref_loss) + 2e-7 * scale)
    gy = rng.standard_normal(n).astype(np.float32)
    g = be.fused_classifier_backward(x, stats, t, gy, eps)
    # float32's error in p - q (p, q <= 1) where they cancel: ~1 float32 ulp of 1, times gy
    atol = 3e-7 * np.abs(gy)[:, None]
    assert_half_close(g, ref_g * gy[:, None].astype(np.float64), dtype, "ce backward", atol)
    inplace = x.copy()
    out = be.fused_classifier_backward(inplace, stats, t, gy, eps, inplace=True)
    assert out is inplace and np.array_equal(out.view(np.uint16), g.view(np.uint16))


@pytest.mark.parametrize("dtype", HALVES, ids=["float16", "bfloat16"])
def test_half_cross_entropy_nan_and_inf_logits(dtype, rng):
    be = CPUBackend()
    x = rng.standard_normal((3, 5)).astype(np.float32)
    x[0, 2] = np.nan
    x[1, 1] = np.inf
    x = x.astype(dtype)
    loss, stats = be.fused_classifier_forward(x, np.array([0, 1, 4]), 0.0)
    ref, _ = ce_reference(x, np.array([0, 1, 4]), 0.0)
    assert np.isnan(loss[0]) and np.isnan(ref[0])
    assert np.isnan(loss[1]) == np.isnan(ref[1])       # inf - inf at the row max
    np.testing.assert_allclose(loss[2], ref[2], rtol=1e-5, atol=1e-6)


# -- through autograd and autocast -------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_autocast_cross_entropy_saves_half_logits_and_returns_half_gradient(dtype, rng):
    low = dp._dtype.as_dtype(dtype)
    logits = dp.tensor((rng.standard_normal((64, 9)) * 3).astype(np.float32).astype(low),
                       requires_grad=True)
    t = rng.integers(0, 9, 64)
    with dp.autocast(dtype):
        loss = F.cross_entropy(logits, t, label_smoothing=0.05)
    assert logits.dtype == dp._dtype.as_dtype(dtype) and loss.dtype == dp.float32
    loss.backward()
    assert logits.grad.dtype == logits.dtype
    _, ref = ce_reference(logits.numpy(), t, 0.05)
    assert_half_close(logits.grad.numpy(), ref / 64, logits.dtype, "grad", atol=3e-7 / 64)


@pytest.mark.parametrize("name", ["gelu", "silu", "relu", "leaky_relu", "elu", "sigmoid", "tanh"])
def test_autocast_activation_keeps_half_and_its_gradient_is_half(name, rng):
    x = dp.tensor(rng.standard_normal((33, 17)).astype(np.float32)).astype(dp.bfloat16)
    x.requires_grad = True
    with dp.autocast("bfloat16"):
        y = getattr(F, name)(x)
    assert y.dtype == dp.bfloat16
    gy = rng.standard_normal(y.shape).astype(np.float32).astype(dp.bfloat16)
    y.backward(dp.tensor(gy))
    assert x.grad.dtype == dp.bfloat16
    xa = x.numpy()
    if name in ("sigmoid", "tanh"):
        ref = from_output_grad(name, y.numpy(), gy)
    else:
        a = {"leaky_relu": 0.01, "elu": 1.0}.get(name)
        ref = reference(name, xa, gy, a)[1]
    assert_half_close(x.grad.numpy(), ref, dp.bfloat16, name, atol=F32_ATOL)


def test_fusion_off_runs_half_activations_in_float32(rng):
    h = dp.tensor(rng.standard_normal((4, 6)).astype(np.float32)).astype(dp.float16)
    with dp.fusion(False), dp.autocast("float16"):
        assert F.gelu(h).dtype == dp.float32
    with dp.autocast("float16"):
        assert F.gelu(h).dtype == dp.float16


# -- against PyTorch's CPU ops on bfloat16 -----------------------------------------------------
TORCH_OPS = {"gelu": ("gelu", {}), "gelu_tanh": ("gelu", {"approximate": "tanh"}),
             "silu": ("silu", {}), "sigmoid": ("sigmoid", {}), "tanh": ("tanh", {}),
             "elu": ("elu", {}), "leaky_relu": ("leaky_relu", {}), "relu": ("relu", {})}


@pytest.mark.parametrize("name", list(TORCH_OPS))
def test_bfloat16_activations_match_torch_within_one_bf16_ulp(name, rng):
    torch = pytest.importorskip("torch")
    x = draw(rng, dp.bfloat16, n=5000)
    x[~np.isfinite(x.astype(np.float32))] = 0     # NaN / inf edges: each library its own way
    xt = torch.from_numpy(x.view(np.uint16).astype(np.int16)).view(torch.bfloat16)
    op, kw = TORCH_OPS[name]
    mine = F.gelu(dp.tensor(x), approximate="tanh") if name == "gelu_tanh" else getattr(F, op)(
        dp.tensor(x))
    theirs = getattr(torch.nn.functional, op)(xt, **kw).float().numpy()
    assert_half_close(mine.numpy(), theirs.astype(np.float64), dp.bfloat16, name, atol=F32_ATOL)


def test_bfloat16_cross_entropy_matches_torch_autocast(rng):
    torch = pytest.importorskip("torch")
    x = (rng.standard_normal((50, 11)) * 3).astype(np.float32).astype(dp.bfloat16)
    t = rng.integers(0, 11, 50)
    xt = torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lt = torch.nn.functional.cross_entropy(xt, torch.from_numpy(t))
    assert lt.dtype == torch.float32
    lt.backward()
    mine = dp.tensor(x, requires_grad=True)
    with dp.autocast("bfloat16"):
        loss = F.cross_entropy(mine, t)
    loss.backward()
    np.testing.assert_allclose(float(loss.item()), float(lt.item()), rtol=1e-5)
    assert_half_close(mine.grad.numpy(), xt.grad.float().numpy().astype(np.float64),
                      dp.bfloat16, "grad", atol=3e-7 / 50)
