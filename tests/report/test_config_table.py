"""The report page: its run-configuration table reads as a person would write it."""
import json

import pytest

pytest.importorskip("matplotlib")
from dlprimer.report import build_report  # noqa: E402


def test_config_table_shows_bytes_in_units_and_epochs_from_one(tmp_path, rng):
    peak, state = int(rng.integers(2 ** 20, 2 ** 24)), int(rng.integers(2 ** 10, 2 ** 19))
    recs = [{"event": "config", "step": 0, "epochs": 3, "lr": 0.002, "activation": "gelu"}]
    for step in range(1, 7):
        recs.append({"event": "step", "step": step, "loss": 1.0 / step, "grad_norm": 0.5,
                     "grad_norm/0": 0.3, "update_ratio/0": 1e-3})
    for e in range(3):
        recs.append({"event": "epoch", "step": 2 * e + 2, "epoch": e, "train_loss": 0.5,
                     "mem_peak": peak, "mem_state": state, "time_epoch": 1.23456})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    page = open(build_report(str(tmp_path), measure=False, backend="cpu")).read()
    assert "final epoch</th><td>3 of 3</td>" in page
    assert f"{peak / 2 ** 20:.1f} MiB" in page and f"{state / 2 ** 10:.1f} KiB" in page
    assert str(peak) not in page and str(state) not in page
    assert "final time_epoch</th><td>1.23 s</td>" in page
