"""Regenerates the coefficients of :mod:`dlprimer.backend.jit.mathfn` (not imported at run time).

The normal tail Q(a) = Phi(-a) = 0.5 erfc(a / sqrt 2), a >= 0, is written as
Q(a) = phi(a) H(t) / (a + K) with phi the normal density, t = (a - K) / (a + K) in [-1, 1)
and H(t) = (a + K) Q(a) / phi(a), the Mills ratio times (a + K): a smooth function of t that
tends to 1 as a -> inf. H is fitted by a polynomial in t, over the whole tail for float64 or
up to a = 15 for float32 (beyond it float32's GELU is 0 or x whatever Q is); least squares
on relative error over Chebyshev nodes, SciPy's erfcx as the reference. Q then costs one
division, one exp and one Horner chain, all of which vectorise.

The float32-arithmetic path (``mathfn.normal_tailf``, ``mathfn.expf_parts``) takes H times
1/sqrt(2 pi) with float32 coefficients (``fit_f32``: each coefficient rounded to float32 in
turn, lowest first, and the higher ones refitted to absorb its rounding) and e^r = 1 + r +
r^2 P(r) on |r| <= ln2/2 with P of degree 4 (``fit_exp``).

    python -m dlprimer.backend.jit.fit_phi     # prints the coefficient tuples and their error
"""
import numpy as np

K = 3.5


def fit(degree, k=K, nodes=20001, a_max=None):
    """Monomial coefficients (lowest first) of H and their max relative error on [-1, t_max),
    t_max the t of ``a_max`` (None: the whole tail, t up to 1)."""
    import scipy.special as sp
    from numpy.polynomial import chebyshev as C
    from numpy.polynomial import polynomial as P

    def h(a):
        return sp.erfcx(a / np.sqrt(2)) * 0.5 * np.sqrt(2 * np.pi) * (a + k)

    if a_max is None:                                   # Chebyshev nodes of [-1, 1)
        t_max = 0.99999
        t = np.cos(np.linspace(0, np.pi, nodes))[1:]
        t = t[t < t_max]
        y = h(k * (1 + t) / (1 - t))
        p = C.cheb2poly(C.chebfit(t, y, degree, w=1 / y))
    else:                                               # ... mapped onto [-1, t_max]
        t_max = (a_max - k) / (a_max + k)
        u = np.cos(np.linspace(0, np.pi, nodes))[1:]
        t = -1 + (u + 1) * (t_max + 1) / 2
        y = h(k * (1 + t) / (1 - t))
        pu = C.cheb2poly(C.chebfit(u, y, degree, w=1 / y))
        p = np.zeros(1)                                 # p(u(t)), u = (2t + 1 - t_max)/(t_max + 1)
        for c in pu[::-1]:
            p = P.polyadd(P.polymul(p, [(1 - t_max) / (t_max + 1), 2 / (t_max + 1)]), [c])
    tt = np.linspace(-1, t_max, 400001)
    v = np.zeros_like(tt)
    for c in p[::-1]:
        v = v * tt + c
    return tuple(float(c) for c in p), float(np.max(np.abs(v / h(k * (1 + tt) / (1 - tt)) - 1)))


def _h_nodes(k, a_max, nodes):
    """(t, (a + K) Q(a) / phi(a)) on Chebyshev nodes of [-1, t_max], t_max the t of a_max."""
    import scipy.special as sp
    t_max = (a_max - k) / (a_max + k)
    t = -1 + (np.cos(np.linspace(0, np.pi, nodes)) + 1) * (t_max + 1) / 2
    a = k * (1 + t) / (1 - t)
    return t, sp.erfcx(a / np.sqrt(2)) * 0.5 * np.sqrt(2 * np.pi) * (a + k)


def fit_f32(degree=9, k=K, a_max=15.0, nodes=20001, scale=1 / np.sqrt(2 * np.pi)):
    """float32 coefficients (lowest first) of scale * H on a <= a_max and their max relative
    error (evaluated in float64): least squares on relative error, each coefficient rounded
    to float32 in turn and the higher ones refitted."""
    t, y = _h_nodes(k, a_max, nodes)
    y = y * scale
    coef = []
    for i in range(degree + 1):
        resid = y - sum(c * t ** j for j, c in enumerate(coef))
        a = np.vander(t, degree + 1, increasing=True)[:, i:]
        c = np.linalg.lstsq(a / y[:, None], resid / y, rcond=None)[0]
        coef.append(float(np.float32(c[0])))
    v = sum(c * t ** j for j, c in enumerate(coef))
    return tuple(coef), float(np.max(np.abs(v / y - 1)))


def fit_exp(degree=4, nodes=4001):
    """float32 coefficients (lowest first) of P in e^r = 1 + r + r^2 P(r), |r| <= ln2/2, and
    the max relative error of 1 + r + r^2 P(r) (float64 evaluation)."""
    h = np.log(2) / 2
    r = h * np.cos(np.linspace(0, np.pi, nodes))
    r = r[r != 0]
    y = (np.expm1(r) - r) / r ** 2
    w = r ** 2 / np.exp(r)                      # weights: relative error of e^r
    coef = []
    for i in range(degree + 1):
        resid = y - sum(c * r ** j for j, c in enumerate(coef))
        a = np.vander(r, degree + 1, increasing=True)[:, i:]
        c = np.linalg.lstsq(a * w[:, None], resid * w, rcond=None)[0]
        coef.append(float(np.float32(c[0])))
    v = 1 + r + r ** 2 * sum(c * r ** j for j, c in enumerate(coef))
    return tuple(coef), float(np.max(np.abs(v / np.exp(r) - 1)))


if __name__ == "__main__":
    for deg, a_max in ((9, 15.0), (22, None)):
        coef, err = fit(deg, a_max=a_max)
        print(f"# degree {deg}, a <= {a_max or 'inf'}: max relative error of H {err:.2e}")
        print(f"H{deg} = {coef!r}")
    coef, err = fit_f32()
    print(f"# float32, H / sqrt(2 pi), degree 9, a <= 15: max relative error {err:.2e}")
    print(f"HF = {coef!r}")
    coef, err = fit_exp()
    print(f"# float32, e^r = 1 + r + r^2 P(r), P of degree 4: max relative error {err:.2e}")
    print(f"EF = {coef!r}")
