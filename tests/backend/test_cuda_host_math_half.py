"""The CUDA kernels' half-precision variants (kernels/half.cuh), compiled for the host.

The device loads a half value as float (``__half2float`` / ``__bfloat162float``), runs
the float math of the other headers and rounds once on the store (``__float2half_rn``
/ ``__float2bfloat16_rn``). The host compilation has no CUDA headers, so half.cuh
writes those conversions out on the bits; here they must equal NumPy's float16 and
ml_dtypes' bfloat16 casts bit for bit (every half value; a million floats of every
magnitude and random bit patterns), and each kernel's result must equal the host's own
float math rounded once (bit for bit), the CPU backend's half op (float32 NumPy math,
rounded once) within one half ulp, and the float64 formula rounded to half within one
half ulp plus float32's absolute error where the formula cancels. No GPU is needed.
"""
import numpy as np
import pytest

import dlprimer as dp
from . import kernel_host
from ._activation_ref import FROM_OUTPUT, PARAM, reference
from .test_cpu_half import EDGES, F32_ATOL, assert_half_close, ce_reference, draw, from_output_grad
from dlprimer.backend.cpu import CPUBackend

HALVES = (np.dtype(np.float16), dp.bfloat16)
# the edge values (NaN, inf, +-1e4) make NumPy warn inside the ops and the references
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:overflow encountered:RuntimeWarning")
IDS = ["float16", "bfloat16"]


@pytest.fixture
def rng():
    return np.random.default_rng()


def bits(a):
    return np.ascontiguousarray(a).view(np.uint16)


@pytest.mark.parametrize("dtype", HALVES, ids=IDS)
def test_loads_are_exact_for_every_half_value(host, dtype):
    v = np.arange(1 << 16, dtype=np.uint16).view(dtype)
    got, want = host.to_float(v), v.astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))  # -0.0 too


@pytest.mark.parametrize("dtype", HALVES, ids=IDS)
def test_stores_round_to_nearest_even_as_numpy(host, rng, dtype):
    x = np.concatenate([rng.standard_normal(200_000).astype(np.float32) * s
                        for s in (1e-8, 1e-6, 1e-3, 1.0, 1e3, 6e4, 1e6)])
    patterns = rng.integers(0, 2**32, 400_000, dtype=np.uint64).astype(np.uint32)
    ties = np.arange(1 << 16, dtype=np.uint16).view(dtype).astype(np.float32)
    with np.errstate(over="ignore"):
        ties = ties * np.float32(1 + 2.0 ** -11)    # halfway and near-halfway points
    x = np.concatenate([x, patterns.view(np.float32), ties, EDGES.astype(np.float32),
                        np.float32([65504, 65519.99, 65520, 2.0 ** -25, -2.0 ** -25])])
    with np.errstate(over="ignore", invalid="ignore"):
        want = x.astype(dtype)
    got = host.from_float(x, dtype)
    nan = np.isnan(x)
    assert np.isnan(got[nan].astype(np.float32)).all(), "NaN must stay NaN"
    bad = np.flatnonzero(bits(got)[~nan] != bits(want)[~nan])
    assert bad.size == 0, f"{x[~nan][bad[:5]]} -> {bits(got)[~nan][bad[:5]]}, " \
                          f"NumPy {bits(want)[~nan][bad[:5]]}"


@pytest.mark.parametrize("dtype", HALVES, ids=IDS)
@pytest.mark.parametrize("name", kernel_host.ACTS)
def test_half_activation_is_float_math_rounded_once(host, rng, name, dtype):
    x = draw(rng, dtype, n=20_000)
    gy = draw(rng, dtype, n=20_000, scale=1.0)
    a = PARAM.get(name, 0.0)
    y = host.act_forward_half(name, x, a)
    first = y if name in FROM_OUTPUT else x
    gx = host.act_backward_half(name, first, gy, a)
    with np.errstate(all="ignore"):       # the host's float math on the loaded values, rounded
        y32 = host.act_forward(name, x.astype(np.float32), a)
        gx32 = host.act_backward(name, first.astype(np.float32), gy.astype(np.float32), a)
    for got, f32, what in ((y, y32, "forward"), (gx, gx32, "backward")):
        want = host.from_float(f32, dtype)
        same = (bits(got) == bits(want)) | (np.isnan(got.astype(np.float32))
                                            & np.isnan(want.astype(np.float32)))
        assert same.all(), f"{name} {what}: not one rounding of the float math"

    cpu = CPUBackend()
    base = "gelu" if name.startswith("gelu") else name
    kw = {"approximate": "tanh" if name == "gelu_tanh" else "none"} if base == "gelu" else {}
    args = (a,) if name in PARAM else ()
    y_cpu = getattr(cpu, f"{base}_forward")(x, *args, **kw)
    gx_cpu = getattr(cpu, f"{base}_backward")(first, gy, *args, **kw)
    # the two float32 formulas differ where they cancel (GELU-tanh's tail), as in float32
    atol = F32_ATOL * (1 + np.minimum(np.abs(x.astype(np.float64)), 10)) ** 3
    assert_half_close(y, y_cpu.astype(np.float64), dtype, f"{name} forward vs CPU", atol=atol)
    assert_half_close(gx, gx_cpu.astype(np.float64), dtype, f"{name} backward vs CPU",
                      atol=atol)
    ref_name = {"gelu_erf": "gelu"}.get(name, name)
    y64, gx64 = reference(ref_name, x, gy, a if name in PARAM else None)
    assert_half_close(y, y64, dtype, f"{name} forward vs float64", atol=atol)
    if name in ("sigmoid", "tanh"):
        gx64 = from_output_grad(name, y, gy)
    assert_half_close(gx, gx64, dtype, f"{name} backward vs float64", atol=atol)


@pytest.mark.parametrize("dtype", HALVES, ids=IDS)
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_half_fused_classifier(host, rng, dtype, eps):
    """Half logits: the loss and stats are the float kernel's on the loaded logits
    (float32 out), the gradient that float math rounded once into the half type."""
    n, c = 48, int(rng.integers(2, 200))
    x = (rng.normal(0, 3, (n, c))).astype(np.float32)
    x[0, :] = 6e4
    x[1, 1] = -6e4
    x[2, 1] = -0.0
    x[3, 1] = np.nan
    x = x.astype(dtype)
    t = rng.integers(0, c, n)
    loss, stats = host.classifier_forward_half(x, t, eps)
    loss32, stats32 = host.classifier_forward(x.astype(np.float32), t, eps)
    assert loss.dtype == stats.dtype == np.float32
    np.testing.assert_array_equal(loss, loss32)
    np.testing.assert_array_equal(stats, stats32)
    gy = rng.standard_normal(n).astype(np.float32)
    g = host.classifier_backward_half(x, stats, t, gy, eps)
    with np.errstate(all="ignore"):
        g32 = host.classifier_backward(x.astype(np.float32), stats32, t, gy, eps)
    want = host.from_float(g32, dtype)
    same = (bits(g) == bits(want)) | np.isnan(g.astype(np.float32)) & np.isnan(g32)
    assert same.all()
    assert np.isnan(loss[3]) and np.isnan(g[3].astype(np.float32)).all()
    ok = np.arange(n) != 3
    cpu = CPUBackend()
    loss_cpu, stats_cpu = cpu.fused_classifier_forward(x[ok], t[ok], eps)
    scale = np.abs(x[ok].astype(np.float32)).max(axis=1)
    assert np.all(np.abs(loss[ok] - loss_cpu) <= 1e-5 * np.abs(loss_cpu) + 2e-7 * scale)
    g_cpu = cpu.fused_classifier_backward(x[ok], stats_cpu, t[ok], gy[ok], eps)
    atol = 3e-7 * np.abs(gy[ok])[:, None]        # float32's error where p - q cancels
    assert_half_close(g[ok], g_cpu.astype(np.float64), dtype, "grad vs CPU", atol=atol)
    _, g64 = ce_reference(x[ok], t[ok], eps)
    assert_half_close(g[ok], g64 * gy[ok, None], dtype, "grad vs float64", atol=atol)


@pytest.mark.parametrize("dtype", HALVES, ids=IDS)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_half_bias_gelu_is_float_math_rounded_once(host, rng, dtype, approximate):
    """Half x, float32 bias: y and gx are the kernels' float math on the loaded x (x + b
    in float) rounded once; gb sums the unrounded float gx (float partials), so it is
    the float kernel's gb on the loaded x bit for bit, and the CPU backend's within
    float32 rounding of the sum."""
    rows, c = 300, int(rng.integers(1, 80))
    x = draw(rng, dtype, n=rows * c).reshape(rows, c)
    gy = draw(rng, dtype, n=rows * c, scale=1.0).reshape(rows, c)
    b = rng.standard_normal(c).astype(np.float32)
    y = host.bias_gelu_forward(x, b, approximate)
    gx, gb = host.bias_gelu_backward(x, b, gy, approximate, rows_per_chunk=37, warps=4)
    assert y.dtype == gx.dtype == dtype and gb.dtype == np.float32
    with np.errstate(all="ignore"):
        x32, gy32 = x.astype(np.float32), gy.astype(np.float32)
        y32 = host.bias_gelu_forward(x32, b, approximate)
        gx32, gb32 = host.bias_gelu_backward(x32, b, gy32, approximate, rows_per_chunk=37,
                                             warps=4)
    for got, f32, what in ((y, y32, "forward"), (gx, gx32, "backward")):
        want = host.from_float(f32, dtype)
        same = (bits(got) == bits(want)) | (np.isnan(got.astype(np.float32))
                                            & np.isnan(want.astype(np.float32)))
        assert same.all(), f"bias_gelu {what}: not one rounding of the float math"
    np.testing.assert_array_equal(gb, gb32)
    cpu = CPUBackend()
    name = "gelu_tanh" if approximate == "tanh" else "gelu"
    z = (x32 + b).astype(np.float64)
    atol = F32_ATOL * (1 + np.minimum(np.abs(z), 10)) ** 3
    y64, gx64 = reference(name, z, gy)
    assert_half_close(y, cpu.bias_gelu_forward(x, b, approximate).astype(np.float64), dtype,
                      "bias_gelu forward vs CPU", atol=atol)
    assert_half_close(y, y64, dtype, "bias_gelu forward vs float64", atol=atol)
    gx_cpu, gb_cpu = cpu.bias_gelu_backward(x, b, gy, approximate)
    assert_half_close(gx, gx_cpu.astype(np.float64), dtype, "bias_gelu backward vs CPU",
                      atol=atol)
    assert_half_close(gx, gx64, dtype, "bias_gelu backward vs float64", atol=atol)
    fin = np.isfinite(gb_cpu)
    assert np.array_equal(np.isnan(gb), np.isnan(gb_cpu))
    mag = np.abs(gx32).sum(axis=0, dtype=np.float64)
    assert np.all(np.abs(gb[fin] - gb_cpu[fin]) <= 2e-6 * mag[fin])


@pytest.mark.parametrize("dtype", HALVES, ids=IDS)
@pytest.mark.parametrize("p", [0.2, 0.7])
def test_half_dropout_is_float_math_rounded_once_with_the_float_mask(host, rng, dtype, p):
    """The half kernel keeps what the float kernel keeps for the same key, scales in
    float (scale = float32(1 / (1 - p))) and rounds once: the float kernel's result on
    the loaded x rounded, and the CPU backend's half dropout, bit for bit."""
    x = draw(rng, dtype, n=20_000)
    key = (int(rng.integers(2**63)), int(rng.integers(2**32)))
    y = host.dropout_apply(x, p, key)
    with np.errstate(all="ignore"):
        want = host.from_float(host.dropout_apply(x.astype(np.float32), p, key), dtype)
    y_cpu = CPUBackend().dropout_forward(x, p, key)
    for other in (want, y_cpu):
        same = (bits(y) == bits(other)) | (np.isnan(y.astype(np.float32))
                                           & np.isnan(other.astype(np.float32)))
        assert same.all()
    keep = host.dropout_keep(x.shape, p, key)
    dropped = y.astype(np.float32)[~keep]
    assert np.all((dropped == 0) | np.isnan(dropped))
