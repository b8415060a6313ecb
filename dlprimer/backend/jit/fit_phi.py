"""Regenerates the coefficients of :mod:`dlprimer.backend.jit.mathfn` (not imported at run time).

The normal tail Q(a) = Phi(-a) = 0.5 erfc(a / sqrt 2), a >= 0, is written as
Q(a) = phi(a) H(t) / (a + K) with phi the normal density, t = (a - K) / (a + K) in [-1, 1)
and H(t) = (a + K) Q(a) / phi(a), the Mills ratio times (a + K): a smooth function of t that
tends to 1 as a -> inf. H is fitted by a polynomial in t, over the whole tail for float64 or
up to a = 15 for float32 (beyond it float32's GELU is 0 or x whatever Q is); least squares
on relative error over Chebyshev nodes, SciPy's erfcx as the reference. Q then costs one
division, one exp and one Horner chain, all of which vectorise.

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


if __name__ == "__main__":
    for deg, a_max in ((9, 15.0), (22, None)):
        coef, err = fit(deg, a_max=a_max)
        print(f"# degree {deg}, a <= {a_max or 'inf'}: max relative error of H {err:.2e}")
        print(f"H{deg} = {coef!r}")
