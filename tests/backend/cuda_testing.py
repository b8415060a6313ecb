"""Shared helpers of the CUDA tests (not a test module): inputs with the special
values every kernel must handle, and the float-rounding comparison."""
import numpy as np

SPECIAL = np.array([1e4, -1e4, 0.0, -0.0, np.nan, 1.0, -1.0, 8.0, -8.0])


class SeededRng:
    """A fresh Generator that remembers its seed, for the failure message."""

    def __init__(self, seed):
        self.seed_used = seed
        self._gen = np.random.default_rng(seed)

    def __getattr__(self, name):
        return getattr(self._gen, name)


def sample(rng, dtype, n=600):
    """Specials first, then random values across scales."""
    x = np.concatenate([SPECIAL, rng.normal(0, 3, n // 2), rng.uniform(-30, 30, n // 4),
                        rng.normal(0, 1e-3, n // 8), rng.normal(0, 1, n // 8) * 1e3])
    return x.astype(dtype)


def grads(rng, x):
    gy = rng.normal(0, 1, x.shape).astype(x.dtype)
    gy[:4] = [1.0, -2.0, 0.5, np.nan]  # one NaN gradient too (at x = 0)
    return gy


def assert_close(got, want, x=None, gy=None, what="", factor=1.0):
    """Equal up to the rounding of the got dtype: NaN exactly where ``want`` has NaN,
    infinities equal, else |got - want| <= 8 eps |want| + 4 eps (1 + min(|x|, 8)^2)
    (1 + |gy|) (the absolute part covers cancellation near zeros of the function,
    e.g. 1 + erf(x) for x << 0; saturated |x| > 8 gets the relative bound)."""
    got = np.asarray(got)
    want = np.asarray(want, dtype=np.float64)
    eps = np.finfo(got.dtype).eps
    gn, wn = np.isnan(got), np.isnan(want)
    np.testing.assert_array_equal(gn, wn, err_msg=f"{what}: NaN positions differ")
    ok = ~wn
    g64 = got.astype(np.float64)[ok]
    w = want[ok]
    inf = np.isinf(w)
    np.testing.assert_array_equal(g64[inf], w[inf], err_msg=f"{what}: infinities differ")
    mag = (np.ones_like(want) if x is None
           else 1 + np.minimum(np.nan_to_num(np.abs(np.asarray(x, float))), 8) ** 2)
    scale = np.ones_like(want) if gy is None else 1 + np.nan_to_num(np.abs(np.asarray(gy, float)))
    tol = factor * (8 * eps * np.abs(w) + 4 * eps * (mag * scale)[ok])
    err = np.abs(g64 - w)
    bad = ~inf & ~(err <= tol)
    if bad.any():
        i = np.argmax(np.where(bad, err / np.where(tol > 0, tol, 1), 0))
        xs = "" if x is None else f" at x={np.asarray(x)[ok][i]!r}"
        raise AssertionError(f"{what}: {bad.sum()} of {bad.size} values off{xs}: got {g64[i]!r}, "
                             f"want {w[i]!r} (tolerance {tol[i]:.3g})")


_compiled = {}


def nvrtc_compiled(family, arch):
    """``_kernels.nvrtc_compile`` memoised for the test session (NVRTC takes seconds)."""
    from dlprimer.backend import _kernels
    key = (family, arch)
    if key not in _compiled:
        _compiled[key] = _kernels.nvrtc_compile(family, arch)
    return _compiled[key]
