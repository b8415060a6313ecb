"""The report reads measurement records only, and says why two figures differ."""
import json
from html import escape as html_escape

import dlprimer as dp
from dlprimer.claims import check_claims, claims_json
from dlprimer.measure import finish, fingerprint
from dlprimer.measure.records import to_json
from dlprimer.report import build_report
from dlprimer.workloads import profile_mlp


def test_report_from_records_names_models_verdicts_and_environment(tmp_path):
    rep, *_ = profile_mlp("iris", [16], "relu", 32, "adam", None, 0, 1, 6)
    prof = to_json(rep.to_dict())
    (tmp_path / "profile.json").write_text(json.dumps(prof))
    fp = fingerprint(dp.get_backend())
    claims = check_claims("cpu", size="tiny", only=["backward_2x", "adam_bytes"])
    (tmp_path / "claims.json").write_text(claims_json(claims, fingerprint=finish(fp)))
    html = (tmp_path / "report" / "index.html")
    assert build_report(str(tmp_path), measure=False, backend="cpu") == str(html)
    page = html.read_text()
    assert "MLP 4-16-3, batch 32, adam" in page              # the profile's own workload
    assert "another model" in page and "MLP 64-256-256-10, batch 128" in page
    assert f"{prof['total']['time_ratio']:.4g}x" in page      # the profile record's number
    assert "Environment" in page and fp["cpu"] in page
    for c in claims:
        assert f"<tr class='{c.verdict}'>" in page and html_escape(c.reason) in page
    assert "cli" not in {m.split(".")[-1] for m in dp.report.__dict__ if isinstance(m, str)}


def test_report_reads_an_old_bare_list_of_claims(tmp_path):
    old = [{"key": "adam_bytes", "statement": "s", "claimed": "c", "measured": "m", "why": "w",
            "verdict": "differs", "data": {}}]
    (tmp_path / "claims.json").write_text(json.dumps(old))
    page = (tmp_path / "report" / "index.html")
    build_report(str(tmp_path), measure=False, backend="cpu")
    assert "<tr class='differs'>" in page.read_text()


def test_report_and_claims_do_not_import_the_command_line():
    import subprocess
    import sys
    code = ("import sys, dlprimer.report, dlprimer.claims, dlprimer.profiler, dlprimer.workloads;"
            "print('dlprimer.cli' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
