"""Inputs ``dlprimer train``/``profile`` and ``python -m dlprimer.distributed`` used to
accept silently, resume/force from the command line, and one-line warnings (issue 15,
points 9, 11 and 12)."""
import os
import subprocess
import sys

import pytest

from dlprimer.cli import main
from _cli import exit_code

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ["train", "--dataset", "iris", "--hidden", "8", "--no-progress", "--backend", "cpu"]


def _run(*args, cwd, module="dlprimer"):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("DLPRIMER_DEBUG", None)
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, words", [
    (["train", "--hidden", "128,,64"], "'128,,64': empty entry"),
    (["train", "--hidden", "128,"], "'128,': empty entry"),
    (TRAIN + ["--checkpoint-segments", "100"], "--checkpoint-segments 100: the model has only 3"),
    (TRAIN + ["--resume", "--checkpoint-dir", "no/such/dir"], "nothing to resume"),
])
def test_bad_train_inputs_one_line_exit_2(args, words, capsys):
    assert exit_code(args) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_profile_json_unwritable_fails_before_profiling(capsys):
    assert exit_code(["profile", "--json", "/proc/dlprimer-x.json", "--dataset", "iris"]) == 2
    out = capsys.readouterr()
    assert "cannot be written" in out.err and out.out == ""  # nothing was profiled


def test_profile_help_and_header_tell_the_batch(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["profile", "--help"])
    assert "batch size [default: 256]" in " ".join(capsys.readouterr().out.split())
    p = _run("profile", "--dataset", "iris", "--hidden", "8", "--batch-size", "32", "--repeats",
             "1", "--warmup", "1", "--backend", "cpu", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    head = p.stdout.splitlines()[0]
    assert head.startswith("dlprimer profile: iris") and "batch 32," in head


def test_resume_force_and_already_complete(tmp_path):
    ck = tmp_path / "ck"
    base = TRAIN + ["--steps", "4", "--checkpoint-dir", ck, "--log-dir", tmp_path / "log"]
    assert _run(*base, cwd=tmp_path).returncode == 0
    again = _run(*base, cwd=tmp_path)  # a new run over the old one's checkpoints
    assert again.returncode == 2 and "already holds checkpoints of another run" in again.stderr
    done = _run(*base, "--resume", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "run already complete" in done.stdout and "nan" not in done.stdout
    assert _run(*base, "--force", cwd=tmp_path).returncode == 0
    for name in os.listdir(ck):
        with open(ck / name, "r+b") as f:
            f.seek(-4, os.SEEK_END)
            f.write(b"XXXX")
    bad = _run(*base, "--resume", cwd=tmp_path)
    assert bad.returncode == 2 and "nothing usable to resume" in bad.stderr
    warns = [ln for ln in bad.stderr.splitlines() if "warning" in ln]
    assert warns and all(ln.startswith("dlprimer: warning: checkpoint ") for ln in warns)
    assert "RuntimeWarning" not in bad.stderr and "warnings.warn" not in bad.stderr


def test_divergence_names_the_learning_rate(tmp_path):
    p = _run("train", "--dataset", "digits", "--hidden", "32,32", "--lr", "1e9", "--optimizer",
             "sgd", "--epochs", "1", "--no-progress", "--backend", "cpu", cwd=tmp_path)
    assert p.returncode == 1
    assert "Likely cause" in p.stderr and "learning rate 1e+09" in p.stderr
    assert "gradient norm" in p.stderr and "non-deterministic op?" not in p.stderr


def test_distributed_module_help_and_dataset_check(tmp_path):
    h = _run("--help", cwd=tmp_path, module="dlprimer.distributed")
    assert h.returncode == 0 and "all-reduce" in h.stdout and "per-rank batch" in h.stdout
    bad = _run("--dataset", "nope", cwd=tmp_path, module="dlprimer.distributed")
    assert bad.returncode == 2 and "invalid choice: 'nope'" in bad.stderr
