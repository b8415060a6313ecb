"""Regenerates the coefficients of :mod:`dlprimer.backend.jit.mathfn` (not imported at run time).

The normal tail Q(a) = Phi(-a) = 0.5 erfc(a / sqrt 2), a >= 0, is written as
Q(a) = phi(a) H(t) / (a + K) with phi the normal density, t = (a - K) / (a + K) in [-1, 1)
and H(t) = (a + K) Q(a) / phi(a), the Mills ratio times (a + K): a smooth function of t that
tends to 1 as a -> inf. H is fitted by a polynomial in t (least squares on relative error over
Chebyshev nodes, SciPy's erfcx as the reference), so Q costs one division, one exp and one
Horner chain, all of which vectorise.

    python -m dlprimer.backend.jit.fit_phi     # prints the coefficient tuples and their error
"""
import numpy as np

K = 3.5


def fit(degree, k=K, nodes=20001):
    """Monomial coefficients (lowest first) of H and their max relative error on [-1, 1)."""
    import scipy.special as sp
    from numpy.polynomial import chebyshev as C

    def h(a):
        return sp.erfcx(a / np.sqrt(2)) * 0.5 * np.sqrt(2 * np.pi) * (a + k)

    t = np.cos(np.linspace(0, np.pi, nodes))[1:]
    t = t[t < 0.99999]
    y = h(k * (1 + t) / (1 - t))
    p = C.cheb2poly(C.chebfit(t, y, degree, w=1 / y))
    tt = np.linspace(-1, 0.99999, 400001)
    v = np.zeros_like(tt)
    for c in p[::-1]:
        v = v * tt + c
    return tuple(float(c) for c in p), float(np.max(np.abs(v / h(k * (1 + tt) / (1 - tt)) - 1)))


if __name__ == "__main__":
    for deg in (11, 22):
        coef, err = fit(deg)
        print(f"# degree {deg}: max relative error of H {err:.2e}")
        print(f"H{deg} = {coef!r}")
