"""Vectorisable exp, normal tail and sigmoid for the JIT kernels (scalar numba functions
that LLVM inlines and vectorises: no libm call, no branch other than selects).

numba's ``math.exp``/``math.erf`` are scalar libm calls (no SVML here: erf ran at 48 ns an
element), so the kernels use these instead. The float64 functions below serve float64
arrays and, with shorter polynomials (error well below float32's half-ulp, 2^-24 = 6e-8),
the float32 sigmoid and softmax paths, rounded once on the store. The exact GELU
and SiLU of float32 arrays compute in float32 arithmetic instead (the section at the end:
``expf_parts``, ``normal_tailf``, ``siluf``, ``silu_gradf``): twice the lanes per vector,
within 2 ulp of float64 (issue 18).

``exp64``   Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2, degree-12 Taylor polynomial
            (truncation < 2e-16 relative) and 2^k built from its bits. 0 below -708.39
            (float64's subnormal range is flushed), inf above 709.78, NaN kept.
``exp32``   the same reduction with a degree-7 polynomial: relative error < 8e-9, the exp
            of the float32 paths (same range and NaN handling).
``q_tail``  Q(a) = Phi(-a) = 0.5 erfc(a / sqrt 2) for a >= 0, the normal tail that the exact
            GELU needs (chapter eq. for GELU: x Phi(x)), as phi(a) H(t) / (a + K),
            t = (a - K)/(a + K) with H a fitted polynomial (``fit_phi.py``) of degree 22
            on a >= 0 (relative error 3.1e-15; phi from ``normal_pdf``, a^2/2 formed
            exactly by a Veltkamp split): float64 GELU within 1e-14 relative for a <= 10.
            Q is accurate in the far tail where 1 + erf(-a) cancels to 0. The float32
            path, ``normal_tailf``, is the same form in float32 arithmetic (degree 9 on
            a <= 15): float32 GELU within 2 ulp of the float64 reference rounded to
            float32 (every float32 in [-10, 10] checked; tests/backend/test_cpu_jit.py
            checks a dense grid of [-15, 10] and the extremes).
``sigmoid`` 1 / (1 + e^-x) from e = exp(-|x|): never overflows, no cancellation;
            ``sigmoid32`` is the same with ``exp32`` (float32 sigmoid within 1 ulp).
            ``siluf`` is SiLU in float32 arithmetic (within 2 ulp; 1 measured on every
            float32 in [-10, 10]), ``silu_gradf`` its derivative.
``sigmoid_of(v)``, ``silu_of(v)``, ``silu_grad_of(v)``, ``exp_as(like, x)``: pick the float32 or
            the float64 form from the type of an array element when numba compiles the
            kernel (overloads), so one kernel source serves both dtypes at the speed each
            needs; ``wide_vectors_for(x)`` asks for 512-bit vectors in a float32 kernel.
"""

import numba
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

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
def _exp_reduce(x):
    """(k, r) with x = k ln2 + r, |r| <= ln2/2 (Cody-Waite: k ln2_hi is exact)."""
    k = numba.float64(int(x * _LOG2E + 0.5 if x >= 0 else x * _LOG2E - 0.5))
    return k, (x - k * _LN2_HI) - k * _LN2_LO


@jit
def _exp_scale(p, k, x):
    """p 2^k (k clamped to float64's exponent range), 0 below -708.39, inf above 709.78,
    NaN kept: the end of :func:`exp64` and :func:`exp32`."""
    kk = k if k > -1022.0 else -1022.0
    kk = kk if kk < 1023.0 else 1023.0
    v = p * _f64_from_bits((numba.int64(kk) + 1023) << 52)
    v = v if x > -708.39 else 0.0
    v = v if x < 709.78 else numba.float64(numba.float64(1e308) * 10.0)
    return v if x == x else x


@jit
def exp64(x, dx):
    """e^(x + dx) for a small correction dx (|dx| << ulp(x)), in float64."""
    k, r = _exp_reduce(x)
    r = r + dx
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
    return _exp_scale(p, k, x)


@jit
def exp32(x):
    """e^x to float32 accuracy (relative error < 8e-9, 0.13 of float32's half-ulp), in
    float64: the reduction of :func:`exp64` and a degree-7 Taylor polynomial. 0 below
    -708.39, inf above 709.78, NaN kept."""
    k, r = _exp_reduce(x)
    p = 0.0001984126984126984
    p = p * r + 0.001388888888888889
    p = p * r + 0.008333333333333333
    p = p * r + 0.041666666666666664
    p = p * r + 0.16666666666666666
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    return _exp_scale(p, k, x)



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
def q_tail(a, pdf):
    """Phi(-a) for a = |x| given pdf = phi(a), degree-22 fit (float64)."""
    r = 1.0 / (a + _K)
    q = pdf * _h22((a - _K) * r) * r
    return q if a < 40.0 else (0.0 if a == a else a)



@jit
def sigmoid(x):
    e = exp64(-abs(x), 0.0)
    r = 1.0 / (1.0 + e)
    return r if x >= 0 else (e * r if x == x else x)


@jit
def sigmoid32(x):
    """:func:`sigmoid` to float32 accuracy (:func:`exp32`), for float32 values held in float64."""
    e = exp32(-abs(x))
    r = 1.0 / (1.0 + e)
    return r if x >= 0 else (e * r if x == x else x)


def sigmoid_of(v):
    """sigmoid(v) in float64 at the accuracy that v's own type needs: :func:`sigmoid32` for a
    float32 element, :func:`sigmoid` otherwise (chosen when numba types the call)."""
    raise NotImplementedError("only callable from numba-compiled code")


@overload(sigmoid_of, jit_options=dict(error_model="numpy", fastmath={"contract"}))
def _sigmoid_of(v):
    if v == types.float32:
        return lambda v: sigmoid32(numba.float64(v))
    return lambda v: sigmoid(numba.float64(v))


def exp_as(like, x):
    """e^x (x a float64) at the accuracy that the type of ``like`` needs: :func:`exp32` for a
    float32 ``like``, :func:`exp64` otherwise (chosen when numba types the call)."""
    raise NotImplementedError("only callable from numba-compiled code")


@overload(exp_as, jit_options=dict(error_model="numpy", fastmath={"contract"}))
def _exp_as(like, x):
    if like == types.float32:
        return lambda like, x: exp32(x)
    return lambda like, x: exp64(x, 0.0)


# -- float32 arithmetic (issue 18): 16 lanes per 512-bit register instead of 8 -------------
# The float32 GELU and SiLU kernels compute in float32 itself. Where float32's rounding would
# cost more than the 2 ulp allowed, a step carries its rounding error in a second float32
# (exact products by FMA, Fast2Sum): x^2 as hi + lo, t of the tail fit as th + tl, H's last
# two Horner steps and 1/d as pairs; a result below float32's normal range is formed scaled
# by 2^64 and rounded once by the last multiply. Coefficients: ``fit_phi.fit_f32``/``fit_exp``.
_F = numba.float32
F32 = types.float32
_MAGIC = _F(12582912.0)             # 1.5 2^23: y log2e + _MAGIC holds rint(y log2e) in its low bits
_LOG2E_F = _F(_LOG2E)
_LN2_HI_F = _F(0.6931471824645996)  # float32(ln 2): k _LN2_HI_F - y is exact under an FMA
_LN2_LO_F = _F(-1.904654323148236e-09)
_EF = tuple(_F(c) for c in (0.49999988079071045, 0.166665181517601, 0.04166964814066887,
                            0.008368945680558681, 0.0013745316537097096))
_HF = tuple(_F(c) for c in (
    0.7444160580635071, -0.5655617117881775, 0.31542545557022095, -0.11605354398488998,
    0.017403339967131615, 0.006494693923741579, -0.003165976144373417,
    -0.0004941141814924777, 0.0004115180636290461, 0.0001050592545652762))
_E0, _E1, _E2, _E3, _E4 = _EF
_G0, _G1, _P2, _P3, _P4, _P5, _P6, _P7, _P8, _P9 = _HF
_INV_SQRT_2PI_F = _F(_INV_SQRT_2PI)
_K_F = _F(_K)
_A_MAX_F = _F(15.0)
TWO_M64 = _F(2.0 ** -64)
_ONE_F = _F(1.0)
_HALF_F = _F(0.5)


@intrinsic
def fmaf(typingctx, a, b, c):
    """a b + c rounded once (LLVM's fma on float32: one instruction on FMA hardware)."""
    def codegen(context, builder, sig, args):
        return builder.fma(*args)
    return F32(F32, F32, F32), codegen


@intrinsic
def _pow2_64(typingctx, t):
    """2^(k + 64) for t = k + _MAGIC (float32 bits: exponent field k + 64 + 127)."""
    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        bits = builder.bitcast(args[0], i32)
        bits = builder.add(bits, ir.Constant(i32, 127 + 64 - 0x4B400000))
        return builder.bitcast(builder.shl(bits, ir.Constant(i32, 23)), ir.FloatType())
    return F32(F32), codegen


@intrinsic
def wide_vectors_for(typingctx, arr):
    """Asks LLVM for 512-bit vectors in the calling kernel when ``arr`` holds float32.

    LLVM sizes a loop's vectors by its narrowest type at its preferred width (256 bits on
    x86 today): a float32 loop gets 8 lanes, while a float32 loop computed in float64 got 8
    float64 lanes, 512 bits. The function attribute prefer-vector-width=512 (clang's
    -mprefer-vector-width) gives a float32 loop 16 lanes. A float64 kernel is left as it was.
    llvmlite's attribute set takes only flag names, so the string attribute goes in beside
    them; if that ever fails the kernel keeps 256-bit vectors (same results)."""
    wide = isinstance(arr, types.Array) and arr.dtype == types.float32

    def codegen(context, builder, sig, args):
        if wide:
            try:
                set.add(builder.function.attributes, '"prefer-vector-width"="512"')
            except Exception:       # pragma: no cover - llvmlite internals changed
                pass
        return context.get_dummy_value()
    return types.none(arr), codegen


@jit
def expf_parts(y, dy):
    """(s, sc) with e^(y + dy) = (1 + s) sc 2^-64 in float32 arithmetic, for -190 < y <= 0
    and |dy| << ulp(y): k = rint(y / ln2) by the _MAGIC addition, r = y - k ln2 with an exact
    FMA step (ln2 as hi + lo), then s = r + r^2 P(r) (relative error of 1 + s, rounding
    included, < 6e-8) and sc = 2^(k + 64), a normal float32 over the whole range."""
    t = fmaf(y, _LOG2E_F, _MAGIC)
    kf = t - _MAGIC
    r = fmaf(kf, -_LN2_HI_F, y)
    r = fmaf(kf, -_LN2_LO_F, r) + dy
    p = fmaf(fmaf(fmaf(fmaf(_E4, r, _E3), r, _E2), r, _E1), r, _E0)
    return fmaf(r * r, p, r), _pow2_64(t)


@jit
def normal_tailf(a):
    """Q(a) = Phi(-a) (chapter's exact GELU, x Phi(x)) and phi(a) in float32 arithmetic,
    a >= 0 (a is clamped to 15; the caller selects beyond): returns (mh, ql, s, sc) with

        Q(a) ~ (mh + ql) sc 2^-64,   e^(-a^2/2) ~ (1 + s) sc 2^-64,

    mh = H(t) / (sqrt(2 pi) (a + K)) rounded and ql its error plus mh s. d = a + K rounds, so the
    fit is evaluated at a1 = d - K (exact) and moved to a by one Taylor step
    (M' = a M - 1 for the Mills ratio M, a - a1 exact); t = (a1 - K) / d as th + tl; H's
    degree-9 Horner chain in float32 but its last two steps (G0 + G1 t) as a pair. Relative
    error of Q: < 1e-7 (float32 GELU within 2 ulp of the float64 reference)."""
    ac = min(a, _A_MAX_F)
    d = ac + _K_F
    a1 = d - _K_F
    da = ac - a1
    n = a1 - _K_F
    r = _ONE_F / d
    th = n * r
    tl = fmaf(-th, d, n) * r
    p = fmaf(_P9, th, _P8)
    p = fmaf(fmaf(fmaf(fmaf(fmaf(fmaf(p, th, _P7), th, _P6), th, _P5), th, _P4), th, _P3),
             th, _P2)
    tp = (th * th) * p
    gh = _G1 * th
    gl = fmaf(_G1, th, -gh) + _G1 * tl
    s1 = _G0 + gh                     # Fast2Sum: |G1 t| <= |G0|
    hh = s1 + tp                      # Fast2Sum: |t^2 P(t)| <= |G0 + G1 t| on a <= 15
    hl = (gh - (s1 - _G0)) + (tp - (hh - s1)) + gl
    mh = hh * r
    ml = (fmaf(-mh, d, hh) + hl) * r
    ml = fmaf(da, fmaf(ac, mh, -_INV_SQRT_2PI_F), ml)
    hi = ac * ac
    s, sc = expf_parts(-_HALF_F * hi, -_HALF_F * fmaf(ac, ac, -hi))
    return mh, fmaf(ml, s, fmaf(mh, s, ml)), s, sc


_SIG_EDGE = _F(126.0)


@jit
def _sigmoidf_parts(v):
    """(s, sc, e, d, r) for a float32 v: E = e^-|v| = (1 + s) sc 2^-64 (|v| clamped to 126),
    e = E rounded, d = 1 + e rounded, r = 1/d rounded; 1/(1 + E) = sigmoid(|v|)."""
    s, sc = expf_parts(max(-abs(v), -_SIG_EDGE), _F(0.0))
    e = fmaf(sc, s, sc) * TWO_M64
    d = _ONE_F + e
    return s, sc, e, d, _ONE_F / d


@jit
def siluf(v):
    """SiLU v sigmoid(v) = v / (1 + E) (v >= 0) or v E / (1 + E) (v < 0), E = e^-|v|, in
    float32 arithmetic: the quotient q = N r and its error (N - q d - q dl) r, dl the rounding
    error of d = 1 + E, so that only E's own error (< 6e-8 relative) and the last rounding
    remain (float32 SiLU within 2 ulp of the float64 reference; 1 on the test grids). v < 0
    is formed scaled by 2^64 (E's scale) and rounded once by the last multiply."""
    s, sc, e, d, r = _sigmoidf_parts(v)
    dl = e - (d - _ONE_F)                             # Fast2Sum: e <= 1
    neg = v < 0
    n = v * sc if neg else v
    s2 = s if neg else _F(0.0)
    q = n * r
    c = (fmaf(-q, d, n) - q * dl) * r
    y = (q + fmaf(q, s2, fmaf(c, s2, c))) * (TWO_M64 if neg else _ONE_F)
    return y if abs(v) < _SIG_EDGE else (v if v > 0 else v * _F(0.0))


@jit
def silu_gradf(v):
    """SiLU'(v) = sig(v) (1 + v (1 - sig(v))) in float32 arithmetic; 1 - sig(v) is E r
    (v >= 0) or r (v < 0), with r's rounding error carried (1 + v r cancels near v = -1.28,
    SiLU's minimum); sig(v) = E r for v < 0 is taken scaled by 2^64 until the last multiply
    (E is subnormal below v = -87)."""
    s, sc, e, d, r = _sigmoidf_parts(v)
    rl = (fmaf(-r, d, _ONE_F) - r * (e - (d - _ONE_F))) * r
    pos = v >= 0
    sg = r if pos else fmaf(sc, s, sc) * r
    cs = e * r if pos else r
    csl = _F(0.0) if pos else rl
    return (sg * (fmaf(v, cs, _ONE_F) + v * csl)) * (_ONE_F if pos else TWO_M64)


def silu_of(v):
    """SiLU(v) in float32 arithmetic for a float32 v (:func:`siluf`), in float64 otherwise
    (chosen when numba types the call)."""
    raise NotImplementedError("only callable from numba-compiled code")


@overload(silu_of, jit_options=dict(error_model="numpy", fastmath={"contract"}))
def _silu_of(v):
    if v == types.float32:
        return lambda v: siluf(v)
    return lambda v: numba.float64(v) * sigmoid(numba.float64(v))


def silu_grad_of(v):
    """SiLU'(v): :func:`silu_gradf` for a float32 v, float64 otherwise."""
    raise NotImplementedError("only callable from numba-compiled code")


@overload(silu_grad_of, jit_options=dict(error_model="numpy", fastmath={"contract"}))
def _silu_grad_of(v):
    if v == types.float32:
        return lambda v: silu_gradf(v)

    def grad64(v):
        x = numba.float64(v)
        s = sigmoid(x)
        return s * (1.0 + x * (1.0 - s))
    return grad64
