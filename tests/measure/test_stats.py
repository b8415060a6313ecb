"""dlprimer.measure.stats: intervals that cover, paired ratios, interleaving, verdicts."""
import math

import numpy as np
import pytest

from dlprimer.measure import stats
from dlprimer.measure.stats import measure, median_ci, ratio, summarize, verdict


@pytest.mark.parametrize("n", [7, 20, 60])
@pytest.mark.parametrize("dist", ["exponential", "lognormal"])
def test_median_interval_covers_the_true_median(rng, n, dist):
    """Skewed distributions of known median: the 95% interval covers it in >= ~95% of
    trials (the order-statistic interval is exact, so at least the nominal level)."""
    trials = 1000
    if dist == "exponential":
        draws, true = rng.exponential(2.0, (trials, n)), 2.0 * math.log(2)
    else:
        draws, true = rng.lognormal(0.3, 0.8, (trials, n)), math.exp(0.3)
    hits = 0
    for xs in draws:
        t = summarize(xs)
        assert t.ci95[0] <= t.median <= t.ci95[1]
        hits += t.ci95[0] <= true <= t.ci95[1]
    cover = hits / trials
    assert t.confidence >= 0.95
    assert 0.93 <= cover <= 1.0, f"coverage {cover:.3f} for {dist}, n={n}"


def test_paired_ratio_interval_covers_the_true_ratio(rng):
    """A and B share each round's load (a common factor); their ratio's median is 2.
    The paired interval covers it and is far tighter than the unpaired samples' spread."""
    trials, n, hits, widths = 500, 15, 0, []
    for _ in range(trials):
        load = rng.lognormal(0, 0.5, n)                    # common to both members of a pair
        b = 1e-3 * load * rng.lognormal(0, 0.03, n)
        a = 2e-3 * load * rng.lognormal(0, 0.03, n)
        r = ratio(list(a), list(b))
        hits += r.ci95[0] <= 2.0 <= r.ci95[1]
        widths.append(r.rel_halfwidth)
        assert r.unit == "x" and r.n == n
    assert hits / trials >= 0.93
    assert np.median(widths) < 0.05 < summarize(a).spread


def test_small_samples_say_their_coverage():
    t = summarize([3.0, 1.0, 2.0])
    assert t.ci95 == (1.0, 3.0) and t.median == 2.0 and t.n == 3
    assert t.confidence == pytest.approx(0.75)
    assert any("covers the median with 75%" in w for w in t.warnings)
    lo, hi, cov = median_ci(list(range(100)))
    assert (lo, hi) == (39, 60) and cov >= 0.95


def test_record_fields_and_spread_warning(rng):
    xs = list(rng.uniform(1.0, 3.0, 40))
    d = summarize(xs, name="wide").to_dict()
    for key in ("median", "ci95", "n", "q1", "q3", "min", "max", "spread", "confidence", "unit"):
        assert key in d
    assert d["n"] == 40 and len(d["ci95"]) == 2 and d["ci95"][0] <= d["median"] <= d["ci95"][1]
    assert any("wide: high spread" in w for w in d["warnings"])


@pytest.mark.parametrize("bad,match", [([], "no samples"), ([1.0, float("nan")], "non-finite")])
def test_summarize_rejects_bad_samples(bad, match):
    with pytest.raises(ValueError, match=match):
        summarize(bad)


def test_ratio_rejects_unpaired_or_zero():
    with pytest.raises(ValueError, match="same length, got 2 and 3"):
        ratio([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="positive"):
        ratio([1, 2], [1, 0])


@pytest.mark.parametrize("ci,band,expected", [
    ((1.8, 2.1), (1.7, 2.3), "holds"),
    ((2.4, 2.9), (1.7, 2.3), "differs"),
    ((1.2, 1.5), (1.7, 2.3), "differs"),
    ((2.2, 2.5), (1.7, 2.3), "inconclusive"),     # straddles the upper edge
    ((1.5, 1.8), (1.7, 2.3), "inconclusive"),     # straddles the lower edge
    ((1.5, 2.5), (1.7, 2.3), "inconclusive"),     # wider than the band
    ((1.1, 1.4), (1.0, math.inf), "holds"),
    ((0.9, 1.4), (1.0, math.inf), "inconclusive"),
])
def test_verdict_against_a_band(ci, band, expected):
    v, why = verdict(ci, *band)
    assert v == expected
    if expected == "inconclusive":
        assert "straddles" in why and "cannot tell" in why


def test_combine_verdicts():
    h, d, i = ("holds", "a"), ("differs", "b"), ("inconclusive", "c")
    assert stats.combine_verdicts([h, h])[0] == "holds"
    assert stats.combine_verdicts([h, i])[0] == "inconclusive"
    assert stats.combine_verdicts([i, d]) == ("differs", "c; b")


class _FakeTimer:
    """Elapsed times drawn from a per-callable table; records which one ran."""

    def __init__(self, log, times):
        self.log, self.times = log, times

    def __call__(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        name = self.log[-1]
        self.elapsed = self.times[name]()


def test_measure_interleaves_and_never_times_warmup(rng):
    log = []
    fns = {k: (lambda k=k: log.append(k)) for k in "ABC"}
    times = {"A": lambda: 1.0, "B": lambda: 2.0, "C": lambda: 3.0}
    m = measure(fns, timer=_FakeTimer(log, times), warmup=2, min_rounds=4, max_rounds=4)
    assert log[:6] == ["A", "A", "B", "B", "C", "C"]          # warm-up, untimed
    assert log[6:] == list("ABC" "BCA" "CAB" "ABC")          # rotation: none always first
    assert m.order == [list("ABC"), list("BCA"), list("CAB"), list("ABC")]
    assert {k: len(v) for k, v in m.samples.items()} == {"A": 4, "B": 4, "C": 4}
    assert m["B"].median == 2.0 and m.ratio("C", "A").median == 3.0 and m.converged


def test_measure_two_callables_alternate():
    log = []
    fns = {"A": lambda: log.append("A"), "B": lambda: log.append("B")}
    measure(fns, timer=_FakeTimer(log, {"A": lambda: 1.0, "B": lambda: 1.0}), warmup=0,
            min_rounds=4, max_rounds=4)
    assert "".join(log) == "ABBAABBA"


def test_measure_adapts_until_tight_or_budget(rng):
    log = []
    fns = {"A": lambda: log.append("A"), "B": lambda: log.append("B")}
    steady = {"A": lambda: 1.0 + rng.normal(0, 0.001), "B": lambda: 2.0 + rng.normal(0, 0.001)}
    m = measure(fns, timer=_FakeTimer(log, steady), warmup=0, min_rounds=6, max_rounds=200)
    assert m.converged and len(m.order) == 6 and not m.warnings
    log.clear()
    noisy = {"A": lambda: rng.lognormal(0, 1.0), "B": lambda: rng.lognormal(0, 1.0)}
    m = measure(fns, timer=_FakeTimer(log, noisy), warmup=0, min_rounds=6, max_rounds=30)
    assert not m.converged and len(m.order) == 30
    assert any("budget ran out" in w for w in m.warnings)
    assert any("high spread" in w for w in m.warnings)


def test_measure_warns_when_the_load_changed(monkeypatch):
    loads = iter([0.1, 2.5])
    monkeypatch.setattr(stats, "load_average", lambda: next(loads))
    m = measure({"A": lambda: None}, warmup=0, min_rounds=2, max_rounds=2)
    assert (m.load_start, m.load_end) == (0.1, 2.5)
    assert any("load average changed from 0.10 to 2.50" in w for w in m.warnings)
    assert m.to_dict()["load_end"] == 2.5


@pytest.mark.parametrize("kw,match", [({"warmup": -1}, "warmup"), ({"min_rounds": 0}, "min_rounds"),
                                      ({"max_rounds": 1.5}, "max_rounds")])
def test_measure_rejects_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        measure({"A": lambda: None}, **kw)
    with pytest.raises(ValueError, match="no callables"):
        measure({})
