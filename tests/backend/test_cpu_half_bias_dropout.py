"""bias+GELU and dropout on float16 / bfloat16 inputs (backend/half.py), CPU backends.

As for the other fused ops in test_cpu_half.py: the half result equals the backend's own
float32 op on the inputs in float32, rounded once (bit for bit), and the float64 formula
rounded to the half type within one half ulp (plus float32's absolute error where the
formula cancels), on fresh random inputs plus +-1e4, 0, -0.0, NaN and +-inf, on arrays
longer than a block, with both the NumPy and the JIT path. bias+GELU takes a float32
bias (a float32 parameter under autocast) and gives its gradient in float32, summed in
float32; dropout drops exactly the elements the float32 path drops for the same key.
"""
import numpy as np
import pytest

import dlprimer as dp
import dlprimer.nn.functional as F
from dlprimer.backend import half
from dlprimer.backend.cpu import key_at

from .test_cpu_half import (
    BACKENDS,
    EDGES,
    F32_ATOL,
    HALVES,
    assert_half_close,
    draw,
    reference,
)

IDS = ["float16", "bfloat16"]
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:overflow encountered:RuntimeWarning")


@pytest.fixture
def rng():
    return np.random.default_rng()


def assert_same(got, want):
    """Equal values (NaN where NaN), ``want`` a float32 result rounded to got's dtype."""
    assert got.dtype == want.dtype and got.shape == want.shape
    g, w = got.astype(np.float32), want.astype(np.float32)
    same = (g == w) | (np.isnan(g) & np.isnan(w))
    assert same.all(), f"{g[~same][:4]} vs {w[~same][:4]}"


def _bias_inputs(rng, dtype, c=37):
    rows = 2 * (half.BLOCK // c) + 5              # more rows than two row blocks
    x = draw(rng, dtype, n=rows * c).reshape(rows, c)
    gy = draw(rng, dtype, n=rows * c, scale=1.0).reshape(rows, c)
    b = rng.standard_normal(c).astype(np.float32)
    b[:3] = [0.0, -0.0, 1e4]
    return x, b, gy


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", HALVES, ids=IDS)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_half_bias_gelu_equals_float32_math_rounded_once(be, dtype, approximate, rng):
    x, b, gy = _bias_inputs(rng, dtype)
    x32, gy32 = x.astype(np.float32), gy.astype(np.float32)
    y = be.bias_gelu_forward(x, b, approximate)
    with np.errstate(all="ignore"):
        assert_same(y, be.bias_gelu_forward(x32, b, approximate).astype(dtype))
    z = (x32 + b).astype(np.float64)              # the float32 sum the op adds
    name = "gelu_tanh" if approximate == "tanh" else "gelu"
    fwd64, bwd64 = reference(name, z, gy)
    atol = F32_ATOL * (1 + np.minimum(np.abs(z), 10)) ** 3
    assert_half_close(y, fwd64, dtype, "bias_gelu forward", atol=atol)
    gx, gb = be.bias_gelu_backward(x, b, gy, approximate)
    gx32, gb32 = be.bias_gelu_backward(x32, b, gy32, approximate)
    assert gx.dtype == dtype and gb.dtype == np.float32 and gb.shape == b.shape
    assert_same(gx, gx32.astype(dtype))
    assert_half_close(gx, bwd64, dtype, "bias_gelu backward", atol=atol)
    # gb sums the unrounded float32 gx in float32: only the order of the sum differs
    mag = np.abs(gx32).sum(axis=0, dtype=np.float64)
    fin = np.isfinite(gb32)
    assert np.array_equal(np.isnan(gb), np.isnan(gb32))                     # the NaN columns
    assert np.all(np.abs(gb[fin] - gb32[fin]) <= 2e-6 * mag[fin])
    assert np.all(np.abs(gb[fin] - bwd64.sum(axis=0)[fin]) <= 1e-5 * mag[fin] + 1e-6)
    assert not fin[:EDGES.size].all()             # the NaN / inf edges reach the sum


@pytest.mark.parametrize("be", BACKENDS)
def test_half_bias_gelu_half_bias_any_layout_and_empty(be, rng):
    x = draw(rng, dp.bfloat16, n=300 * 70).reshape(70, 300).T     # not contiguous, (300, 70)
    b = rng.standard_normal(70).astype(dp.bfloat16)               # a half bias: half gb
    gy = rng.standard_normal(x.shape).astype(np.float32)          # a float32 gy
    y = be.bias_gelu_forward(x, b)
    assert_same(y, be.bias_gelu_forward(x.astype(np.float32), b.astype(np.float32))
                .astype(dp.bfloat16))
    gx, gb = be.bias_gelu_backward(x, b, gy)
    gx32, gb32 = be.bias_gelu_backward(x.astype(np.float32), b.astype(np.float32), gy)
    assert gx.dtype == gb.dtype == dp.bfloat16
    assert_same(gx, gx32.astype(dp.bfloat16))
    np.testing.assert_allclose(gb.astype(np.float32), gb32, rtol=2 ** -8, atol=1e-5,
                               equal_nan=True)
    e = np.empty((0, 4), np.float16)
    y = be.bias_gelu_forward(e, np.zeros(4, np.float32))
    gx, gb = be.bias_gelu_backward(e, np.zeros(4, np.float32), e)
    assert y.shape == gx.shape == (0, 4) and y.dtype == gx.dtype == np.float16
    assert gb.dtype == np.float32 and np.array_equal(gb, np.zeros(4))
    with pytest.raises(ValueError, match="bias of shape"):
        be.bias_gelu_forward(x, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="gy of shape"):
        be.bias_gelu_backward(x, b, gy[:5])


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", HALVES, ids=IDS)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_half_dropout_drops_what_float32_drops_scaled_and_rounded_once(be, dtype, p, rng):
    x = draw(rng, dtype)                         # two blocks and a bit, with the edges
    key = (int(rng.integers(2**63)), int(rng.integers(2**32)))
    keep = be.dropout_keep(x.shape, p, key)
    scale = float(np.float32(1.0 / (1.0 - p)))
    x64 = x.astype(np.float64)
    for op in (be.dropout_forward, be.dropout_backward):
        y = op(x, p, key)
        with np.errstate(all="ignore"):
            assert_same(y, op(x.astype(np.float32), p, key).astype(dtype))
            want = np.where(keep, x64 * scale, x64 * scale * 0.0)     # dropped NaN / inf: NaN
        assert_half_close(y, want, dtype, f"dropout p={p}")
        assert np.all((y.astype(np.float32) == 0) | np.isnan(y.astype(np.float32)) | keep)
    assert 0.5 * p < 1 - keep.mean() < 1.5 * p
    z = be.dropout_forward(x, 1.0, key)
    assert z.dtype == dtype and not z.astype(np.float32).any()


@pytest.mark.parametrize("be", BACKENDS)
def test_half_dropout_mask_blocks_are_the_whole_calls(be, rng):
    """Each block draws the mask of its own elements (the counter hash at their index in
    the whole call, through ``key_at``): the half mask of a long call equals the float32
    mask of the whole call."""
    n = 3 * half.BLOCK + 7
    x = np.ones(n, np.float16)
    key = (12345, 678)
    y = be.dropout_forward(x, 0.3, key)
    np.testing.assert_array_equal(y != 0, be.dropout_keep((n,), 0.3, key))
    whole = be.counter_uniform(key, n)
    for start in (1, half.BLOCK - 3, 2 * half.BLOCK):
        np.testing.assert_array_equal(be.counter_uniform(key_at(key, start), 10),
                                      whole[start:start + 10])
    big = (2**63 - 1, 2**64 - 1)                  # the shifted seed wraps mod 2^64
    np.testing.assert_array_equal(be.counter_uniform(key_at(big, 5), 3),
                                  be.counter_uniform(big, 8)[5:])
    # a shifted seed of 2^63 or more still runs the JIT kernel (numba takes it as uint64)
    y = be.dropout_forward(np.ones(50, np.float32), 0.3, key_at(big, 2**40))
    np.testing.assert_array_equal(y != 0, be.counter_uniform(key_at(big, 2**40), 50) >= 0.3)
    if getattr(be, "jit", False):
        from dlprimer.backend import jit
        assert "dropout" not in jit.failed()


# -- through autograd and autocast -------------------------------------------------------------
@pytest.mark.parametrize("dtype", IDS)
def test_autocast_bias_gelu_keeps_half_and_a_float32_bias_gradient(dtype, rng):
    low = dp._dtype.as_dtype(dtype)
    x = dp.tensor(rng.standard_normal((33, 17)).astype(np.float32)).astype(low)
    x.requires_grad = True
    b = dp.tensor(rng.standard_normal(17).astype(np.float32), requires_grad=True)
    with dp.autocast(dtype):
        y = F.bias_gelu(x, b)
    assert y.dtype == low
    gy = rng.standard_normal(y.shape).astype(np.float32).astype(low)
    y.backward(dp.tensor(gy))
    assert x.grad.dtype == low and b.grad.dtype == dp.float32
    z = (x.numpy().astype(np.float32) + b.numpy()).astype(np.float64)
    ref = reference("gelu", z, gy)[1]
    assert_half_close(x.grad.numpy(), ref, low, "bias_gelu x grad", atol=F32_ATOL)
    np.testing.assert_allclose(b.grad.numpy(), ref.sum(axis=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", IDS)
def test_autocast_dropout_keeps_half_and_drops_what_float32_drops(dtype, rng):
    low = dp._dtype.as_dtype(dtype)
    a = rng.standard_normal((40, 25)).astype(np.float32)
    x = dp.tensor(a).astype(low)
    x.requires_grad = True
    backend = dp.get_backend()
    state = backend.get_rng_state()
    with dp.autocast(dtype):
        y = F.dropout(x, 0.4)
    assert y.dtype == low
    y.backward(dp.ones(*y.shape).astype(low))
    assert x.grad.dtype == low
    backend.set_rng_state(state)
    y32 = F.dropout(dp.tensor(x.numpy().astype(np.float32)), 0.4)
    assert_same(y.numpy(), y32.numpy().astype(low))
    np.testing.assert_array_equal(x.grad.numpy() != 0, y32.numpy() != 0)
    with dp.fusion(False), dp.autocast(dtype):
        assert F.dropout(x, 0.4).dtype == dp.float32           # unfused: float32 as before
