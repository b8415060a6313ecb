"""``dlprimer train --distributed`` under ``mpiexec -n 2``: one log, written by rank 0."""
import json
import sys


def test_cli_train_distributed_on_two_ranks(tmp_path, rank_env, launcher):
    argv = [sys.executable, "-m", "dlprimer", "train", "--backend", "cpu", "--dataset", "iris",
            "--hidden", "16", "--epochs", "2", "--batch-size", "16", "--distributed",
            "--scale-lr", "--warmup-steps", "3", "--no-progress", "--json",
            "--log-dir", str(tmp_path / "logs")]
    proc = launcher.run(2, argv, timeout=90, env=rank_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, proc.stdout  # only rank 0 reports
    final = json.loads(lines[0])
    assert final["steps"] > 0 and 0.0 <= final["val_acc"] <= 1.0
    assert proc.stdout.count("dlprimer train:") == 1
    records = [json.loads(ln) for ln in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert records and all(r.get("step", 0) >= 0 for r in records)
    steps = [r["step"] for r in records if r.get("event") == "step"]
    assert len(steps) == len(set(steps)), "each step logged once (rank 0 only)"


def test_cli_distributed_resume_on_two_ranks(tmp_path, rank_env, launcher):
    base = [sys.executable, "-m", "dlprimer", "train", "--backend", "cpu", "--dataset", "iris",
            "--hidden", "16", "--batch-size", "16", "--distributed", "--no-progress", "--json",
            "--checkpoint-dir", str(tmp_path / "ckpt")]
    first = launcher.run(2, base + ["--epochs", "1"], timeout=90, env=rank_env)
    assert first.returncode == 0, first.stdout + first.stderr
    steps1 = json.loads([ln for ln in first.stdout.splitlines() if ln.startswith("{")][0])["steps"]
    second = launcher.run(2, base + ["--epochs", "2", "--resume"], timeout=90, env=rank_env)
    assert second.returncode == 0, second.stdout + second.stderr
    steps2 = json.loads([ln for ln in second.stdout.splitlines() if ln.startswith("{")][0])["steps"]
    assert steps2 == 2 * steps1
