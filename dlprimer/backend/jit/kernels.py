"""numba kernels of the JIT CPU backend: one pass over memory per op, single thread.

Every kernel takes flat, C-contiguous 1-D arrays (rows for softmax-cross-entropy) and
writes its result into ``out``; float scalars arrive already cast to the arrays' dtype,
so float32 arrays are updated in float32 arithmetic (as the NumPy path does). The
activation math runs through :mod:`.mathfn`: the exact GELU and SiLU of float32 arrays in
float32 arithmetic (16 lanes per 512-bit register, errors carried in float32 pairs where
rounding would cost accuracy), the rest in float64, rounded on the store.
``error_model="numpy"`` lets a division by zero give inf/NaN instead of raising, which is
what lets LLVM vectorise loops with a division in them.
"""
import math

import numba
import numpy as np

from . import mathfn as M

# Compile cost (issue 18): each kernel signature compiles once (0.1-0.7 s) and is cached;
# the cfunc wrapper is skipped (only first-class function values need it). ``helper``s are
# inlined by numba (they are few and their loops must vectorise in each kernel); mathfn's
# are compiled once and inlined by LLVM.
_OPTS = dict(cache=True, no_cfunc_wrapper=True, error_model="numpy")
jit = numba.njit(**_OPTS, fastmath={"contract"})
jit_sum = numba.njit(**_OPTS, fastmath={"contract", "reassoc"})
helper = numba.njit(**_OPTS, inline="always", fastmath={"contract"})


# -- activations ----------------------------------------------------------------------
@jit
def relu_forward(x, out):
    for i in range(x.size):
        v = x[i]
        out[i] = v if (v > 0 or v != v) else 0.0


@jit
def relu_backward(y, gy, out):
    for i in range(y.size):
        out[i] = gy[i] * (1.0 if y[i] > 0 else 0.0)


@jit
def leaky_relu_forward(x, out, slope):
    for i in range(x.size):
        v = x[i]
        out[i] = v if v > 0 else v * slope


@jit
def leaky_relu_backward(x, gy, out, slope):
    for i in range(x.size):
        out[i] = gy[i] if x[i] > 0 else gy[i] * slope


@jit
def elu_forward(x, out, alpha):
    for i in range(x.size):
        v = x[i]
        out[i] = v if v > 0 else alpha * math.expm1(min(v, 0.0))


@jit
def elu_backward(x, gy, out, alpha):
    for i in range(x.size):
        v = x[i]
        out[i] = gy[i] if v > 0 else gy[i] * (alpha * math.exp(min(v, 0.0)))


@helper
def _phi(v):
    """(Phi(v), phi(v)) of the normal distribution, vectorisable (float64)."""
    a = abs(v)
    pdf = M.normal_pdf(a)
    q = M.q_tail(a, pdf)
    return (q if v < 0 else 1.0 - q), pdf


_A_MAX32 = np.float32(15.0)     # Q(15) 15 < 2^-150: float32 GELU is 0 or v beyond
_INV_SQRT_2PI32 = np.float32(M._INV_SQRT_2PI)


@helper
def _gelu32(v):
    """GELU(v) = v Phi(v) for a float32 v in float32 arithmetic (mathfn.normal_tailf): v Q(|v|)
    for v < 0, formed scaled by 2^64 and rounded once; v (1 - Q) with 1 - Q as a pair above."""
    a = abs(v)
    mh, ql, s, sc = M.normal_tailf(a)
    neg = (M.fmaf(v, mh, v * ql) * sc) * M.TWO_M64
    qh = (mh * sc) * M.TWO_M64
    p1 = np.float32(1.0) - qh
    pl = ((np.float32(1.0) - p1) - qh) - (ql * sc) * M.TWO_M64
    pos = M.fmaf(v, p1, v * pl)
    big = v if not v < 0 else v * np.float32(0.0)     # 0 or v beyond 15; NaN, -inf: NaN
    return (neg if v < 0 else pos) if a < _A_MAX32 else big


@helper
def _gelu32_grad(v):
    """GELU'(v) = Phi(v) + v phi(v) for a float32 v in float32 arithmetic: Q - |v| phi for v < 0
    (scaled by 2^64 until the last multiply), 1 - Q + v phi above."""
    a = abs(v)
    mh, ql, s, sc = M.normal_tailf(a)
    ok = a < _A_MAX32
    pdf = M.fmaf(_INV_SQRT_2PI32, s, _INV_SQRT_2PI32) * sc
    pdf = pdf if ok else (np.float32(0.0) if a == a else a)
    neg = (M.fmaf(-a, pdf, mh * sc) + ql * sc) * M.TWO_M64
    q = ((mh + ql) * sc) * M.TWO_M64
    pos = M.fmaf(v, pdf * M.TWO_M64, np.float32(1.0) - (q if ok else np.float32(0.0)))
    return (neg if ok else -a * pdf) if v < 0 else pos


_GK = 0.7978845608028654    # sqrt(2 / pi)
_GA = 0.044715


@helper
def _gelu_tanh(v):
    """0.5 v (1 + tanh u) = v sigmoid(2u), u = sqrt(2/pi) (v + 0.044715 v^3)."""
    return v * M.sigmoid(2.0 * _GK * (v + _GA * v * v * v))


@helper
def _gelu_tanh_grad(v):
    """(1 + t)(0.5 + s (1 - t)), t = tanh u, s = 0.5 k v (1 + 3a v^2), with
    1 + t = 2 sig(2u) and 1 - t = 2 (1 - sig(2u))."""
    sg = M.sigmoid(2.0 * _GK * (v + _GA * v * v * v))
    s = 0.5 * _GK * v * (1.0 + 3.0 * _GA * v * v)
    return 2.0 * sg * (0.5 + 2.0 * s * (1.0 - sg))


# GELU(x) = x Phi(x) (the chapter's exact GELU), GELU'(x) = Phi(x) + x phi(x).
# One kernel per variant, each a flat loop: a loop vectorises only when no branch is left in
# it, and a run compiles only the variants it uses (each costs a compile on the first
# run). "erf" is the float32 one (float32 arithmetic, degree-9 fit of the normal tail),
# "erf64" the float64 one (degree 22), "tanh" the tanh form.
@jit
def gelu_erf_forward(x, out):
    M.wide_vectors_for(x)
    for i in range(x.size):
        out[i] = _gelu32(x[i])


@jit
def gelu_erf64_forward(x, out):
    for i in range(x.size):
        v = x[i]
        out[i] = v * _phi(v)[0]


@jit
def gelu_tanh_forward(x, out):
    for i in range(x.size):
        out[i] = _gelu_tanh(np.float64(x[i]))


@jit
def gelu_erf_backward(x, gy, out):
    M.wide_vectors_for(x)
    for i in range(x.size):
        out[i] = gy[i] * _gelu32_grad(x[i])


@jit
def gelu_erf64_backward(x, gy, out):
    for i in range(x.size):
        v = x[i]
        cdf, pdf = _phi(v)
        out[i] = gy[i] * (cdf + v * pdf)


@jit
def gelu_tanh_backward(x, gy, out):
    for i in range(x.size):
        out[i] = gy[i] * _gelu_tanh_grad(np.float64(x[i]))


@jit
def silu_forward(x, out):
    """x sigmoid(x): float32 arithmetic for float32 x (mathfn.siluf), float64 otherwise."""
    M.wide_vectors_for(x)
    for i in range(x.size):
        out[i] = M.silu_of(x[i])


@jit
def silu_backward(x, gy, out):
    """gy s (1 + x (1 - s)), s = sigmoid(x)."""
    M.wide_vectors_for(x)
    for i in range(x.size):
        out[i] = gy[i] * M.silu_grad_of(x[i])


@jit
def sigmoid_forward(x, out):
    for i in range(x.size):
        out[i] = M.sigmoid_of(x[i])


@jit
def sigmoid_backward(y, gy, out):
    for i in range(y.size):
        v = np.float64(y[i])
        out[i] = gy[i] * (v * (1.0 - v))


@jit
def tanh_forward(x, out):
    for i in range(x.size):
        out[i] = math.tanh(x[i])


@jit
def tanh_backward(y, gy, out):
    for i in range(y.size):
        v = np.float64(y[i])
        out[i] = gy[i] * (1.0 - v * v)


# bias + GELU: gelu(x + b) over the rows of a C-contiguous (rows, C) x, b of the last axis.
@jit
def bias_gelu_erf_forward(x, b, out):
    M.wide_vectors_for(x)
    for r in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[r, j] = _gelu32(x[r, j] + b[j])


@jit
def bias_gelu_erf64_forward(x, b, out):
    for r in range(x.shape[0]):
        for j in range(x.shape[1]):
            v = x[r, j] + b[j]
            out[r, j] = v * _phi(v)[0]


@jit
def bias_gelu_tanh_forward(x, b, out):
    for r in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[r, j] = _gelu_tanh(np.float64(x[r, j] + b[j]))


@jit_sum
def _column_sums(g, gb):
    """gb = g summed over rows (accumulated in float64)."""
    acc = np.zeros(g.shape[1])
    for r in range(g.shape[0]):
        for j in range(g.shape[1]):
            acc[j] += g[r, j]
    for j in range(g.shape[1]):
        gb[j] = acc[j]


@jit
def bias_gelu_erf_backward(x, b, gy, out, gb):
    """gx = gy gelu'(x + b) and gb = gx summed over rows."""
    M.wide_vectors_for(x)
    for r in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[r, j] = gy[r, j] * _gelu32_grad(x[r, j] + b[j])
    _column_sums(out, gb)


@jit
def bias_gelu_erf64_backward(x, b, gy, out, gb):
    for r in range(x.shape[0]):
        for j in range(x.shape[1]):
            v = x[r, j] + b[j]
            cdf, pdf = _phi(v)
            out[r, j] = gy[r, j] * (cdf + v * pdf)
    _column_sums(out, gb)


@jit
def bias_gelu_tanh_backward(x, b, gy, out, gb):
    for r in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[r, j] = gy[r, j] * _gelu_tanh_grad(np.float64(x[r, j] + b[j]))
    _column_sums(out, gb)


# -- dropout: the splitmix64 hash of kernels/random.cuh, in the kernel ---------------------
@jit
def dropout(x, out, scale, one, threshold, seed, counter):
    """out = x * scale * keep, keep iff the hash's top 24 bits / 2^24 >= p
    (threshold = ceil(p 2^24)), the mask of CPUBackend.counter_uniform."""
    z0 = (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
          + np.uint64(counter) * np.uint64(0xD1B54A32D192ED03))
    zero = one - one
    for i in range(x.size):
        z = np.uint64(i) * np.uint64(0x94D049BB133111EB) + z0
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
        keep = (z >> np.uint64(40)) >= np.uint64(threshold)
        out[i] = x[i] * scale * (one if keep else zero)


# -- softmax cross-entropy ------------------------------------------------------------------
@jit_sum
def softmax_xent_forward(logits, shift, target, probs, loss, eps):
    """Per row, with m = shift[r] (any value of the row), or the row's first value when
    ``shift`` is empty (what the backend passes first):
    z = logits - m, s = sum e^z (the stored values, summed in float64),
    loss = (1-eps)(log s - z_t) + eps (log s - mean z), probs = e^z / s (what backward
    needs). log-sum-exp does not depend on m, and terms that underflow are below the
    dtype's resolution of the largest (>= 1). A row whose s is not finite (an e^z that
    overflowed the dtype: a float32 z above 88, a float64 one above 709; NaN or inf in the
    row) gets loss NaN and is counted: the caller redoes those rows with m = the row's max,
    as the NumPy path computes it. Returns that count. Per row (in L1): a pass for e^z, one
    for s, one for the scaling; no pass over memory for the max."""
    n, c = logits.shape
    redo = 0
    for r in range(n):
        row = logits[r]
        pr = probs[r]
        m = np.float64(shift[r]) if shift.size else np.float64(row[0])
        for j in range(c):      # a map loop: vectorises wider than with the sum in it
            pr[j] = M.exp_as(row[j], np.float64(row[j]) - m)
        s = 0.0
        for j in range(c):
            s += np.float64(pr[j])
        log_s = math.log(s)
        z_t = np.float64(row[target[r]]) - m
        lr = log_s - z_t
        if eps != 0.0:
            zs = 0.0
            for j in range(c):
                zs += np.float64(row[j])
            lr = (1.0 - eps) * lr + eps * (log_s - (zs / c - m))
        ok = s > 0.0 and s < math.inf     # an e^z that overflowed its dtype is inf in s
        loss[r] = lr if ok else math.nan
        redo += 0 if ok else 1
        inv = 1.0 / s
        for j in range(c):
            pr[j] = pr[j] * inv
    return redo


@jit
def softmax_xent_backward(probs, target, gy, out, eps):
    """out = (probs - (1 - eps) onehot - eps / C) * gy[row]."""
    n, c = probs.shape
    off = eps / c
    for r in range(n):
        g = gy[r]
        for j in range(c):
            out[r, j] = (probs[r, j] - off) * g
        t = target[r]
        out[r, t] = (probs[r, t] - (off + (1.0 - eps))) * g


@jit
def int_range(a):
    """(min, max) of an integer array in one pass."""
    lo = a[0]
    hi = a[0]
    for i in range(a.size):
        lo = min(lo, a[i])
        hi = max(hi, a[i])
    return lo, hi


# -- optimizer updates: one pass over the arena -------------------------------------------------
@jit_sum
def all_finite(a):
    """True when no element of ``a`` is NaN or inf: ``sum(a[i] * 0)`` is 0 for finite
    values and NaN as soon as one is not (inf * 0 is NaN). One read of ``a``, no early
    exit, so that the loop vectorises (reassoc lets LLVM keep several partial sums;
    without nnan/nsz it cannot fold ``x * 0`` to 0). The array is read as 8 streams (its
    eighths side by side, then the tail): a single stream is bound by memory latency
    (10M float32 out of cache: 3.1 ms with one stream, 2.6 with 2, 2.3 with 4, 2.1-2.2 with
    8 or 16; float64 5.7, 4.9, 4.5, 4.2 ms; in cache 1.6-1.9 ms, float64 3.1-3.3, whatever
    the count)."""
    zero = a.dtype.type(0)
    n = a.size
    q = n // 8
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = zero
    for i in range(q):
        s0 += a[i] * zero
        s1 += a[i + q] * zero
        s2 += a[i + 2 * q] * zero
        s3 += a[i + 3 * q] * zero
        s4 += a[i + 4 * q] * zero
        s5 += a[i + 5 * q] * zero
        s6 += a[i + 6 * q] * zero
        s7 += a[i + 7 * q] * zero
    for i in range(8 * q, n):
        s0 += a[i] * zero
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)) == zero


@jit
def sgd(p, g, buf, lr, momentum, undamped, nesterov, wd, first_step, check):
    """PyTorch's SGD: d = g + wd w; b = d (first) or mu b + (1 - damp) d; d = d + mu b
    (Nesterov) or b; w -= lr d. ``undamped`` = 1 - dampening. One branch-free loop per
    case, so each vectorises. With ``check``, every gradient is read first
    (:func:`all_finite`) and a NaN or inf returns False before anything is written: the
    check and the update in one call. Returns True once updated."""
    if check and not all_finite(g):
        return False
    if momentum == 0:
        for i in range(p.size):
            p[i] = p[i] - lr * (g[i] + wd * p[i])
    elif first_step:
        for i in range(p.size):
            d = g[i] + wd * p[i]
            buf[i] = d
            p[i] = p[i] - lr * (d + momentum * d if nesterov else d)
    else:
        for i in range(p.size):
            d = g[i] + wd * p[i]
            b = momentum * buf[i] + undamped * d
            buf[i] = b
            p[i] = p[i] - lr * (d + momentum * b if nesterov else b)
    return True


@helper
def _adam_elem(w, gi, m, v, neg_alpha, c1, b2, c2, eps_hat):
    """(w, m, v) after one Adam step of one element."""
    mi = m + c1 * (gi - m)
    vi = b2 * v + c2 * (gi * gi)
    return w + neg_alpha * (mi / (np.sqrt(vi) + eps_hat)), mi, vi


@jit
def adam(p, g, m, v, neg_alpha, c1, b2, c2, eps_hat, wd, keep, decoupled, check):
    """Adam / AdamW in the paper's efficient form (see CPUBackend.adam_update):
    m += c1 (g - m); v = b2 v + c2 g^2; w += -a_t m / (sqrt v + eps_hat),
    c1 = 1 - b1, c2 = 1 - b2; AdamW first scales w by keep = 1 - lr wd, Adam adds wd w
    to g. Two loops, so that neither has a branch in it (and both vectorise). With
    ``check``, False and nothing written when a gradient is NaN or inf (as :func:`sgd`)."""
    if check and not all_finite(g):
        return False
    if decoupled:
        for i in range(p.size):
            p[i], m[i], v[i] = _adam_elem(p[i] * keep, g[i], m[i], v[i], neg_alpha, c1, b2,
                                          c2, eps_hat)
    else:
        for i in range(p.size):
            p[i], m[i], v[i] = _adam_elem(p[i], g[i] + wd * p[i], m[i], v[i], neg_alpha, c1,
                                          b2, c2, eps_hat)
    return True


@jit_sum
def lamb_moments(p, g, m, v, c1, b2, c2, inv_bc1, inv_bc2_sqrt, eps, wd):
    """First LAMB pass over one parameter: update m, v; return (||w||^2, ||u||^2),
    u = (m/bc1) / (sqrt(v)/sqrt(bc2) + eps) + wd w."""
    w2 = 0.0
    u2 = 0.0
    for i in range(p.size):
        gi = g[i]
        mi = m[i] + c1 * (gi - m[i])
        vi = b2 * v[i] + c2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        u = np.float64(mi * inv_bc1 / (np.sqrt(vi) * inv_bc2_sqrt + eps) + wd * p[i])
        u2 += u * u
        w2 += np.float64(p[i]) * np.float64(p[i])
    return w2, u2


@jit
def lamb_apply(p, m, v, inv_bc1, inv_bc2_sqrt, eps, wd, scale):
    """Second LAMB pass: w += scale * u (scale = -lr * trust ratio)."""
    for i in range(p.size):
        u = m[i] * inv_bc1 / (np.sqrt(v[i]) * inv_bc2_sqrt + eps) + wd * p[i]
        p[i] = p[i] + scale * u


@jit_sum
def sumsq2(a, b):
    """(sum a^2, sum b^2) in float64, one pass."""
    sa = 0.0
    sb = 0.0
    for i in range(a.size):
        x = np.float64(a[i])
        y = np.float64(b[i])
        sa += x * x
        sb += y * y
    return sa, sb


@jit
def lars_apply(p, g, buf, local, lr, momentum, wd):
    """d = local (g + wd w); b = mu b + d (b = d without momentum); w -= lr b.
    ``buf`` may be empty without momentum."""
    for i in range(p.size):
        d = local * (g[i] + wd * p[i])
        if momentum != 0 and buf.size:
            d = momentum * buf[i] + d
            buf[i] = d
        p[i] = p[i] - lr * d


@jit_sum
def sumsq(a):
    s = 0.0
    for i in range(a.size):
        x = np.float64(a[i])
        s += x * x
    return s


@jit
def maxabs(a):
    """max |a| with NaN winning."""
    m = 0.0
    for i in range(a.size):
        x = abs(np.float64(a[i]))
        if x != x:
            return x
        m = max(m, x)
    return m


@jit_sum
def sum_abs_pow(a, q):
    s = 0.0
    for i in range(a.size):
        s += abs(np.float64(a[i])) ** q
    return s


