"""Timed figures as records: median, 95% interval, sample count, spread.

Every timed figure dlprimer prints comes from here:

* :func:`summarize` turns samples into a :class:`Timing` record. Its ``ci95`` is the
  distribution-free interval of the median from order statistics: with ``n``
  samples, ``[x_(k), x_(n-k+1)]`` covers the true median with probability
  ``1 - 2 P(B <= k-1)``, ``B ~ Binomial(n, 1/2)``; ``k`` is the largest giving at
  least 95% (with fewer than 6 samples no ``k`` does: the interval is then
  ``[min, max]`` and ``confidence`` says how much less than 95% it covers).
* :func:`ratio` compares two things measured in turn: the record of the per-pair
  ratios ``a_i / b_i`` (the same exact interval, now of the median ratio), so load that
  hits one pair hits both of its members.
* :func:`measure` times callables interleaved (round ``r`` starts at the ``r``-th
  callable: A B, B A, A B, ...) after untimed warm-up calls, and repeats until every
  interval (and every paired ratio's) is within ``target`` relative half-width or a
  time budget is spent, as pyperf and Criterion.rs do; it warns when the spread is
  high, the interval stayed wide, or the load changed during the measurement.
* :func:`verdict` compares an interval with a claim's band: ``holds`` only when the
  interval lies inside, ``differs`` only when it lies outside, else ``inconclusive``.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field

from .threads import load_average

LEVEL = 0.95
TARGET = 0.05          # relative half-width at which repeats stop
HIGH_SPREAD = 0.25     # interquartile range / median above which a warning is raised
LOAD_CHANGE = 0.75     # change of the load average that makes a measurement suspect


def _binom_cdf(k: int, n: int) -> float:
    """P(B <= k) for B ~ Binomial(n, 1/2)."""
    if k < 0:
        return 0.0
    return sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n


def median_ci(xs, level: float = LEVEL) -> tuple[float, float, float]:
    """(lo, hi, coverage): the order-statistic interval of the median of ``xs``."""
    xs = sorted(xs)
    n = len(xs)
    if n == 0:
        raise ValueError("median_ci: no samples")
    k = 1
    while k + 1 <= n - k and 1 - 2 * _binom_cdf(k, n) >= level:
        k += 1
    return xs[k - 1], xs[n - k], 1 - 2 * _binom_cdf(k - 1, n)


@dataclass
class Timing:
    """One timed figure: ``median``, ``ci95 = (lo, hi)``, ``n`` samples and the spread
    (quartiles, min, max); ``unit`` is "s" for times and "x" for ratios."""
    median: float
    ci95: tuple
    n: int
    q1: float
    q3: float
    min: float
    max: float
    unit: str = "s"
    confidence: float = LEVEL
    warnings: list = field(default_factory=list)

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median."""
        return (self.q3 - self.q1) / abs(self.median) if self.median else math.inf

    @property
    def rel_halfwidth(self) -> float:
        """Half the interval's width relative to the median."""
        return (self.ci95[1] - self.ci95[0]) / 2 / abs(self.median) if self.median else math.inf

    def to_dict(self) -> dict:
        return {"median": self.median, "ci95": [self.ci95[0], self.ci95[1]], "n": self.n,
                "q1": self.q1, "q3": self.q3, "min": self.min, "max": self.max,
                "spread": self.spread if math.isfinite(self.spread) else None,
                "confidence": self.confidence, "unit": self.unit, "warnings": list(self.warnings)}

    def scaled(self, factor: float, unit: str | None = None) -> "Timing":
        """The same record with every figure multiplied by ``factor`` (> 0)."""
        f = float(factor)
        return Timing(self.median * f, (self.ci95[0] * f, self.ci95[1] * f), self.n, self.q1 * f,
                      self.q3 * f, self.min * f, self.max * f, unit or self.unit, self.confidence,
                      list(self.warnings))

    def __str__(self):
        lo, hi = self.ci95
        if self.unit == "x":
            return f"{self.median:#.3g}x [{lo:#.3g}-{hi:#.3g}]"
        return f"{_fmt(self.median)} [{_fmt(lo)}-{_fmt(hi)}]"


def _fmt(s):
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def summarize(xs, unit: str = "s", name: str | None = None) -> Timing:
    """The :class:`Timing` record of samples ``xs`` (at least one, all finite)."""
    xs = sorted(float(x) for x in xs)
    if not xs:
        raise ValueError(f"summarize: no samples{f' for {name}' if name else ''}")
    if not all(math.isfinite(x) for x in xs):
        raise ValueError(f"summarize: non-finite sample in {xs[:5]}{f' ({name})' if name else ''}")
    lo, hi, cov = median_ci(xs)
    q1, q3 = (statistics.quantiles(xs, n=4, method="inclusive")[::2] if len(xs) >= 2
              else (xs[0], xs[0]))
    t = Timing(statistics.median(xs), (lo, hi), len(xs), q1, q3, xs[0], xs[-1], unit, cov)
    label = f"{name}: " if name else ""
    if len(xs) >= 4 and t.spread > HIGH_SPREAD:
        t.warnings.append(f"{label}high spread (interquartile range {t.spread:.0%} of the median)")
    if cov < LEVEL:
        t.warnings.append(f"{label}only {len(xs)} samples: the interval [min, max] covers the "
                          f"median with {cov:.0%}, not 95%")
    return t


def ratio(a, b, name: str | None = None) -> Timing:
    """The record of per-pair ratios ``a[i] / b[i]`` of two sample lists measured in
    turn (same length); its median and interval are those of the median ratio."""
    if len(a) != len(b):
        raise ValueError(f"ratio: paired samples must have the same length, got {len(a)} and {len(b)}")
    if any(y <= 0 for y in b):
        raise ValueError(f"ratio: the denominator's samples must be positive{f' ({name})' if name else ''}")
    return summarize([x / y for x, y in zip(a, b)], unit="x", name=name)


def verdict(ci, lo: float = -math.inf, hi: float = math.inf) -> tuple[str, str]:
    """(verdict, reason) for an interval ``ci = (a, b)`` against the band [lo, hi]:
    ``holds`` when a >= lo and b <= hi, ``differs`` when b < lo or a > hi, else
    ``inconclusive`` (the interval straddles an edge of the band)."""
    a, b = float(ci[0]), float(ci[1])
    if a > b:
        raise ValueError(f"verdict: interval ({a}, {b}) has lo > hi")
    if a >= lo and b <= hi:
        return "holds", f"the 95% interval [{a:.3g}, {b:.3g}] lies inside [{lo:.3g}, {hi:.3g}]"
    if b < lo or a > hi:
        return "differs", f"the 95% interval [{a:.3g}, {b:.3g}] lies outside [{lo:.3g}, {hi:.3g}]"
    edge = lo if a < lo <= b else hi
    return "inconclusive", (f"the 95% interval [{a:.3g}, {b:.3g}] straddles the band's edge "
                            f"{edge:.3g}: this run cannot tell")


def combine_verdicts(parts) -> tuple[str, str]:
    """One verdict from several (verdict, reason) pairs: ``differs`` if any part
    differs, ``holds`` if all hold, else ``inconclusive``; the reasons joined."""
    parts = list(parts)
    vs = [v for v, _ in parts]
    v = "differs" if "differs" in vs else ("holds" if all(x == "holds" for x in vs) else "inconclusive")
    return v, "; ".join(r for _, r in parts)


# -- interleaved, adaptive measurement -------------------------------------------------------
class _PerfTimer:
    def __enter__(self):
        self._t0 = time.perf_counter()
        self.elapsed = None
        return self

    def __exit__(self, *exc):
        self.elapsed = time.perf_counter() - self._t0


class Measured:
    """What :func:`measure` timed: ``samples`` (name -> seconds, one per round, in
    round order), ``timings`` (name -> :class:`Timing`), the load average at start and
    end, ``converged`` and ``warnings``."""

    def __init__(self, samples, load_start, load_end, converged, elapsed_s, order):
        self.samples = samples
        self.timings = {k: summarize(v, name=k) for k, v in samples.items()}
        self.load_start, self.load_end = load_start, load_end
        self.converged = converged
        self.elapsed_s = elapsed_s
        self.order = order
        self.warnings = [w for t in self.timings.values() for w in t.warnings]
        if (load_start is not None and load_end is not None
                and abs(load_end - load_start) >= LOAD_CHANGE):
            self.warnings.append(f"the load average changed from {load_start:.2f} to "
                                 f"{load_end:.2f} during the measurement")
        if not converged:
            self.warnings.append(f"the time budget ran out before every interval was within "
                                 f"+-{TARGET:.0%} ({len(order)} rounds)")

    def __getitem__(self, name) -> Timing:
        return self.timings[name]

    def ratio(self, a, b) -> Timing:
        """The per-round ratio ``a / b`` (paired: both measured in the same round)."""
        return ratio(self.samples[a], self.samples[b], name=f"{a}/{b}")

    def to_dict(self) -> dict:
        return {"timings": {k: t.to_dict() for k, t in self.timings.items()},
                "rounds": len(self.order), "converged": self.converged,
                "elapsed_s": self.elapsed_s, "load_start": self.load_start,
                "load_end": self.load_end, "warnings": list(self.warnings)}


def _tight(samples, pairs, target) -> bool:
    for v in samples.values():
        if summarize(v).rel_halfwidth > target:
            return False
    for a, b in pairs:
        if ratio(samples[a], samples[b]).rel_halfwidth > target:
            return False
    return True


def measure(fns: dict, *, timer=None, warmup: int = 1, min_rounds: int = 6,
            max_rounds: int = 60, budget_s: float = 5.0, target: float = TARGET,
            pairs=None) -> Measured:
    """Time each callable of ``fns`` (name -> no-argument callable) in interleaved
    rounds and return a :class:`Measured`.

    Each callable first runs ``warmup`` times untimed. Then round ``r`` calls every
    callable once, starting at the ``r``-th (rotation, so none always goes first),
    each inside ``timer()`` (a context manager with ``.elapsed`` in seconds; default
    ``perf_counter``; pass ``backend.timer`` for device time). Rounds continue from
    ``min_rounds`` until every median's interval, and every paired ratio's in
    ``pairs`` (list of (a, b); default: each against the first), is within
    ``target`` relative half-width, or ``budget_s`` seconds or ``max_rounds`` rounds
    are spent."""
    if not fns:
        raise ValueError("measure: no callables given")
    for name, v, lo in (("warmup", warmup, 0), ("min_rounds", min_rounds, 1), ("max_rounds", max_rounds, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"measure: {name} must be an int >= {lo}, got {v!r}")
    names = list(fns)
    pairs = [(n, names[0]) for n in names[1:]] if pairs is None else list(pairs)
    timer = timer or _PerfTimer
    for f in fns.values():
        for _ in range(warmup):
            f()
    samples = {k: [] for k in names}
    order = []
    load_start = load_average()
    t0 = time.perf_counter()
    converged = False
    for r in range(max(min_rounds, max_rounds)):
        seq = names[r % len(names):] + names[:r % len(names)]
        order.append(seq)
        for k in seq:
            with timer() as t:
                fns[k]()
            samples[k].append(t.elapsed)
        if r + 1 >= min_rounds:
            if _tight(samples, pairs, target):
                converged = True
                break
            if time.perf_counter() - t0 > budget_s or r + 1 >= max_rounds:
                break
    return Measured(samples, load_start, load_average(), converged, time.perf_counter() - t0, order)
