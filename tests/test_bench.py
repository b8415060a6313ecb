"""dlprimer.bench: the ratio table from pytest-benchmark entries, and the command's
argument errors (the suite itself runs in CI's quick-mode benchmark step)."""
import json

import numpy as np
import pytest

from dlprimer import bench


def _entry(group, peer, best, **info):
    return {"group": group, "name": f"test[{peer}]", "params": {"peer": peer},
            "stats": {"min": best}, "extra_info": dict(info, workload=group, peer=peer)}


def test_ratio_rows_and_targets():
    entries = [_entry("mlp 784-256-10 b128 sgd", "dlprimer", 1.2e-3),
               _entry("mlp 784-256-10 b128 sgd", "numpy", 1.0e-3),
               _entry("mlp 784-256-10 b128 sgd", "torch", 1.0e-3, rr_best_s=2.0e-3),
               _entry("mlp 784-256-10 b128 sgd", "copy", 1.0e-4)]
    rows = {r["peer"]: r for r in bench.rows_from_benchmarks(entries)}
    assert set(rows) == {"numpy", "torch", "copy"}
    assert rows["numpy"]["value"] == pytest.approx(1.2)
    assert rows["numpy"]["target"] == 1.1 and bench._status(rows["numpy"]) == "NOT met"
    assert rows["torch"]["value"] == pytest.approx(0.6)  # the round-robin best wins
    assert bench._status(rows["torch"]) == "met"
    assert rows["copy"]["target"] is None and bench._status(rows["copy"]) == ""


def test_figures_metric_and_legacy_entries():
    entries = [
        _entry("chain", "dlprimer", 4e-3, figures=[["autograd us/op", 4.0, "us"]]),
        _entry("mem", "dlprimer", 1.0, metric="rss", rss=3 * 2 ** 20),
        _entry("mem", "torch", 1.0, metric="rss", rss=6 * 2 ** 20),
        {"group": "adam", "name": "test_adam", "stats": {"min": 1.0},
         "extra_info": {"arena_adam_ns_per_param": 3.0, "optimizer_step_ns_per_param": 3.1,
                        "naive_numpy_adam_ns_per_param": 9.0, "copy_same_bytes_ns_per_param": 1.0}},
        {"group": "act", "name": "t[fused]", "params": {"peer": "fused"}, "stats": {"min": 2.0},
         "extra_info": {}},
        {"group": "act", "name": "t[naive]", "params": {"peer": "naive"}, "stats": {"min": 4.0},
         "extra_info": {}},
    ]
    rows = bench.rows_from_benchmarks(entries)
    figs = {r["workload"]: r for r in rows if r["kind"] == "figure"}
    assert figs["autograd us/op"]["target"] == 10.0 and bench._status(figs["autograd us/op"]) == "met"
    assert bench._status(figs["adam ns/param"]) == "NOT met"
    ratios = {(r["workload"], r["peer"]): r for r in rows if r["kind"] == "ratio"}
    assert ratios[("mem", "torch")]["value"] == pytest.approx(0.5)
    assert ratios[("mem", "torch")]["unit"] == "B"
    assert ratios[("act", "numpy")]["value"] == pytest.approx(0.5)  # fused is dlprimer's
    text = bench.format_table(rows, machine="test box")
    assert "test box" in text and "3.0 MiB" in text and "NOT met" in text


def test_format_json_and_main(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({
        "machine_info": {"python_version": "3.11", "dlprimer_bench": {
            "cpu_model": "Some CPU", "cpu_count": 2, "blas_threads": 1}},
        "benchmarks": [_entry("mlp x", "dlprimer", 2.0), _entry("mlp x", "numpy", 1.0)]}))
    assert bench.main(["--format", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Some CPU, 2 CPUs, 1 BLAS thread(s)" in out and "2.00x" in out and "NOT met" in out


def test_main_errors(tmp_path, capsys, monkeypatch):
    assert bench.main(["--format", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        bench.main(["--group", "no-such-group"])
    assert e.value.code == 2
    with pytest.raises(FileNotFoundError, match="no benchmarks/ directory"):
        bench.find_benchmarks(roots=[str(tmp_path)])
    capsys.readouterr()

    def nowhere():
        raise FileNotFoundError("no benchmarks/ directory found")
    monkeypatch.setattr(bench, "find_benchmarks", nowhere)
    assert bench.main([]) == 2
    assert "no benchmarks/ directory" in capsys.readouterr().err
    (tmp_path / "benchmarks").mkdir()
    monkeypatch.setattr(bench, "find_benchmarks", lambda: str(tmp_path / "benchmarks"))
    assert bench.main(["--group", "mlp"]) == 2
    assert "not in this checkout" in capsys.readouterr().err


def test_paired_rows_are_medians_of_per_round_ratios(rng):
    """Peers timed in turn: the ratio is the median of per-round ratios with its 95%
    interval, and the target is met / NOT met / unclear from the interval."""
    load = rng.lognormal(0, 0.6, 25)                       # each round's load, shared by both
    dl = list(1.05e-3 * load * rng.lognormal(0, 0.01, 25))
    np_ = list(1.0e-3 * load * rng.lognormal(0, 0.01, 25))
    cpu_dl, cpu_np = list(1.05e-3 * rng.lognormal(0, 0.01, 25)), list(1e-3 * rng.lognormal(0, 0.01, 25))
    g = "mlp 784-256-10 b128 sgd"
    entries = [_entry(g, "dlprimer", min(dl), rr_samples_s=dl, rr_median_s=float(np.median(dl)),
                      rr_cpu_samples_s=cpu_dl),
               _entry(g, "numpy", min(np_), rr_samples_s=np_, rr_median_s=float(np.median(np_)),
                      rr_cpu_samples_s=cpu_np),
               _entry(g, "torch", 1e-3)]                    # no samples: ratio of best times
    rows = {r["peer"]: r for r in bench.rows_from_benchmarks(entries)}
    r = rows["numpy"]
    assert r["method"] == "paired median" and r["n"] == 25
    ratios = np.array(dl) / np.array(np_)
    assert r["value"] == pytest.approx(float(np.median(ratios)))
    assert r["ci95"][0] <= r["value"] <= r["ci95"][1] and r["ci95"][1] - r["ci95"][0] < 0.05
    assert abs(r["value"] - 1.05) < 0.02          # ~6 sd of the median of 25 noisy ratios
    assert r["cpu_value"] == pytest.approx(1.05, rel=0.03)
    assert bench._status(r) == ("met" if r["ci95"][1] <= 1.1 else "unclear")
    assert bench._status(dict(r, ci95=[1.12, 1.3])) == "NOT met"
    assert bench._status(dict(r, ci95=[1.0, 1.2])) == "unclear"
    assert rows["torch"]["method"] == "best" and rows["torch"]["ci95"] is None
    text = bench.format_table(list(rows.values()), machine="m")
    assert "95% interval" in text and "cpu-time ratio" in text and "(best)" in text
@pytest.mark.parametrize("with_torch", [False, True])
def test_a_run_without_pytorch_says_its_column_was_skipped(tmp_path, capsys, with_torch):
    info = {"cpu_model": "Some CPU", "cpu_count": 2}
    entries = [_entry("mlp x", "dlprimer", 2.0), _entry("mlp x", "numpy", 1.0)]
    if with_torch:
        info.update(torch="2.13.0", torch_threads=1)
        entries.append(_entry("mlp x", "torch", 4.0))
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"machine_info": {"dlprimer_bench": info}, "benchmarks": entries}))
    assert bench.main(["--format", str(path)]) == 0
    out = capsys.readouterr().out
    assert ("PyTorch column skipped: torch is not installed" in out) is not with_torch
    assert ("0.50x" in out) is with_torch and "2.00x" in out
