"""claims: verdicts follow the interval against the band; records and warnings reach
the JSON and the text."""
import json

import pytest

import dlprimer as dp
from dlprimer import claims as C
from dlprimer.profiler.report import Report


def _fake_report(ratio, ci, warnings=()):
    rec = {"median": 1e-3, "ci95": [0.9e-3, 1.1e-3], "n": 12, "warnings": list(warnings)}
    total = {"forward": rec, "backward": dict(rec, median=ratio * 1e-3), "fwd_flops": 100,
             "bwd_flops": 190, "flop_ratio": 1.9, "time_ratio": ratio, "time_ratio_ci95": ci}
    return Report([], total, [], None, {"fingerprint": {"load_start": [0.1], "load_end": [2.0]}})


@pytest.mark.parametrize("ci,expected", [([1.8, 2.2], "holds"), ([2.5, 3.0], "differs"),
                                         ([1.2, 1.5], "differs"), ([1.5, 1.9], "inconclusive"),
                                         ([2.2, 2.6], "inconclusive")])
def test_backward_claim_verdict_follows_the_interval(monkeypatch, ci, expected):
    monkeypatch.setattr(dp.profiler, "profile", lambda *a, **k: _fake_report(sum(ci) / 2, ci, ["high spread"]))
    c = C.claim_backward(dp.get_backend(), C.SIZES["tiny"])
    assert c.verdict == expected
    assert c.figures["time_ratio"]["ci95"] == ci and c.band["time_ratio"] == [1.6, 2.4]
    assert ("straddles" in c.reason) == (expected == "inconclusive")
    assert any("high spread" in w for w in c.warnings)
    assert any("load average changed from 0.10 to 2.00" in w for w in c.warnings)
    text = C.format_claims([c])
    assert f"[{expected}]" in text and "warning:" in text and "verdict:" in text


def test_claims_json_has_verdicts_records_and_fingerprint():
    cs = C.check_claims("cpu", size="tiny", only=["adam_bytes"])
    got = json.loads(C.claims_json(cs, fingerprint={"cpu": "x"}))
    assert got["fingerprint"] == {"cpu": "x"}
    c = got["claims"][0]
    assert c["verdict"] == "differs" and "exact count" in c["reason"]
    assert c["figures"]["bytes_per_param"]["ci95"][0] == c["figures"]["bytes_per_param"]["median"]
    assert C.load_claims(got)[0] == got["claims"] and C.load_claims([c]) == ([c], None)
