"""Vectorisable exp, normal tail and sigmoid for the JIT kernels (scalar numba functions
that LLVM inlines and vectorises: no libm call, no branch other than selects).

numba's ``math.exp``/``math.erf`` are scalar libm calls (no SVML here: erf ran at 48 ns an
element), so the kernels use these instead. All of them compute in float64, also for
float32 arrays, and the kernels round once on the store.

``exp64``   Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2, degree-12 Taylor polynomial
            (truncation < 2e-16 relative) and 2^k built from its bits. 0 below -708.39
            (float64's subnormal range is flushed), inf above 709.78, NaN kept.
``q_tail``  Q(a) = Phi(-a) = 0.5 erfc(a / sqrt 2) for a >= 0, the normal tail that the exact
            GELU needs (chapter eq. for GELU: x Phi(x)), as phi(a) H(t) / (a + K),
            t = (a - K)/(a + K) with H a fitted polynomial (``fit_phi.py``): degree 13
            (relative error of H 2.4e-10, used for float32) or 22 (3.1e-15, float64).
            Relative error of Q: float32 path < 3e-10; float64 path < 1e-14 for a <= 10
            (H's error plus exp's, a^2/2 formed exactly by a Veltkamp split). Q is
            accurate in the far tail where 1 + erf(-a) cancels to 0.
``sigmoid`` 1 / (1 + e^-x) from e = exp(-|x|): never overflows, no cancellation.
"""
import numba
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931467056274414        # 20 significant bits: k * _LN2_HI is exact
_LN2_LO = 4.7493250390316726e-07    # ln 2 - _LN2_HI
_INV_SQRT_2PI = 0.3989422804014327
_K = 3.5
_SPLIT = 134217729.0                # 2^27 + 1, Veltkamp split of a float64

# Not inline="always": numba would deep-copy and re-type these into every kernel (seconds
# each); compiled once, they are small enough for LLVM to inline, and the loops vectorise.
jit = numba.njit(cache=True, no_cfunc_wrapper=True, error_model="numpy", fastmath={"contract"})


@intrinsic
def _f64_from_bits(typingctx, bits):
    """The float64 whose bit pattern is the int64 ``bits`` (an LLVM bitcast)."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


@jit
def exp64(x, dx):
    """e^(x + dx) for a small correction dx (|dx| << ulp(x)), in float64."""
    k = numba.float64(int(x * _LOG2E + 0.5 if x >= 0 else x * _LOG2E - 0.5))
    r = (x - k * _LN2_HI) - k * _LN2_LO + dx
    p = 2.08767569878681e-09
    p = p * r + 2.505210838544172e-08
    p = p * r + 2.755731922398589e-07
    p = p * r + 2.7557319223985893e-06
    p = p * r + 2.48015873015873e-05
    p = p * r + 0.0001984126984126984
    p = p * r + 0.001388888888888889
    p = p * r + 0.008333333333333333
    p = p * r + 0.041666666666666664
    p = p * r + 0.16666666666666666
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    kk = k if k > -1022.0 else -1022.0
    kk = kk if kk < 1023.0 else 1023.0
    v = p * _f64_from_bits((numba.int64(kk) + 1023) << 52)
    v = v if x > -708.39 else 0.0
    v = v if x < 709.78 else numba.float64(numba.float64(1e308) * 10.0)
    return v if x == x else x


@jit
def _h13(t):
    h = 4.226378613502452e-06
    h = h * t + 1.8730710986966606e-05
    h = h * t + -3.2562898281048704e-05
    h = h * t + -0.00017631370229785273
    h = h * t + 0.00015609233139074556
    h = h * t + 0.0011863462928329222
    h = h * t + -0.0011100160739759464
    h = h * t + -0.007991113232184101
    h = h * t + 0.01623216212413009
    h = h * t + 0.04363453562187746
    h = h * t + -0.2908963988207202
    h = h * t + 0.7906531725038214
    h = h * t + -1.4176532435556655
    return h * t + 1.8659743825578192


@jit
def _h22(t):
    h = 7.369228620881682e-09
    h = h * t + 8.66077123416915e-09
    h = h * t + -6.709780081321238e-08
    h = h * t + -1.155839543650448e-07
    h = h * t + 2.595850234597122e-07
    h = h * t + 7.892009224907759e-07
    h = h * t + -2.9684697034156305e-07
    h = h * t + -3.7498957701406117e-06
    h = h * t + -2.9678453883974847e-06
    h = h * t + 1.4190453324350671e-05
    h = h * t + 2.8866528650085107e-05
    h = h * t + -4.710534539988472e-05
    h = h * t + -0.0001894703190379373
    h = h * t + 0.0001680294618005537
    h = h * t + 0.0011948037435349057
    h = h * t + -0.0011154823518448877
    h = h * t + -0.007993891050950535
    h = h * t + 0.016233473482963907
    h = h * t + 0.0436349654128102
    h = h * t + -0.29089653921288555
    h = h * t + 0.7906531480454556
    h = h * t + -1.4176532391720498
    return h * t + 1.8659743827775677


@jit
def normal_pdf(a):
    """phi(a) = e^(-a^2/2) / sqrt(2 pi), with a^2 formed exactly (hi + lo)."""
    c = a * _SPLIT
    ah = c - (c - a)
    al = a - ah
    hi = a * a
    lo = ((ah * ah - hi) + 2.0 * ah * al) + al * al
    return exp64(-0.5 * hi, -0.5 * lo) * _INV_SQRT_2PI


@jit
def q_tail(a, pdf, precise):
    """Phi(-a) for a = |x| given pdf = phi(a); ``precise`` picks the degree-22 fit."""
    r = 1.0 / (a + _K)
    t = (a - _K) * r
    q = pdf * (_h22(t) if precise else _h13(t)) * r
    return q if a < 40.0 else (0.0 if a == a else a)


@jit
def sigmoid(x):
    e = exp64(-abs(x), 0.0)
    r = 1.0 / (1.0 + e)
    return r if x >= 0 else (e * r if x == x else x)
