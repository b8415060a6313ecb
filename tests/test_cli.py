"""The ``dlprimer`` command, run in a subprocess the way a new user runs it."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dlprimer.cli import main
from dlprimer.logs import read_jsonl
from dlprimer.train import EPOCH_METRICS, STEP_METRICS
from _cli import jit_line_start

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ["primer", "train", "profile", "estimate", "claims", "bench", "report"]


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("DLPRIMER_DEBUG", None)
    env.pop("MPLBACKEND", None)
    return env


def dlprimer(*args, cwd, timeout=300, check=True):
    p = subprocess.run([sys.executable, "-m", "dlprimer", *args], cwd=cwd, env=_env(),
                       capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"dlprimer {' '.join(args)} exited {p.returncode}:\n{p.stderr[-3000:]}")
    return p


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_for_every_command(cmd, capsys):
    with pytest.raises(SystemExit) as ei:
        main([cmd, "--help"])
    assert ei.value.code == 0
    assert "--backend" in capsys.readouterr().out


@pytest.mark.parametrize("args, words", [
    (["train", "--hidden", "a,b"], "--hidden: 'a,b' is not a comma-separated list"),
    (["train", "--epochs", "0"], "--epochs: '0' must be >= 1"),
    (["train", "--dataset", "mnist"], "invalid choice: 'mnist'"),
    (["train", "--backend", "tpu"], "invalid choice: 'tpu'"),
    (["train", "--epochs", "2", "--steps", "5"], "not allowed with argument"),
    (["train", "--lr", "-1"], "must be a positive finite number"),
    (["train", "--dropout", "1.5"], "must be in [0, 1)"),
    (["estimate"], "one of the arguments --params --sizes is required"),
    (["estimate", "--sizes", "10"], "--sizes needs at least two sizes"),
    (["claims", "--only", "nope"], "unknown claim(s) ['nope']"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: COMMAND"),
])
def test_bad_arguments_one_line_exit_2(args, words, capsys):
    try:
        rc = main(args)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("dlprimer") and "error: " in err
    assert words in err


@pytest.mark.parametrize("args, words", [
    (["train", "--seed", "-1"], "--seed: '-1' must be >= 0"),
    (["train", "--resume"], "--resume needs --checkpoint-dir"),
    (["train", "--checkpoint-every", "5"], "--checkpoint-every needs --checkpoint-dir"),
    (["train", "--log-dir", "{file}"], "--log-dir {file}: exists and is not a directory"),
    (["train", "--checkpoint-dir", "{file}/sub"], "cannot create the directory"),
    (["primer", "--out", "{file}"], "--out {file}: exists and is not a directory"),
    (["report", "--run", "{file}"], "--run {file}: is not a directory"),
    (["report", "--run", "{dir}", "--no-measure", "--out", "{file}"], "exists and is not a"),
    (["profile", "--json", "{dir}/missing/p.json"], "missing does not exist"),
    (["profile", "--json", "{dir}"], "is a directory, not a file"),
    (["claims", "--json", "{dir}/missing/c.json"], "missing does not exist"),
    (["claims", "--only", ","], "--only: name at least one claim"),
    (["estimate", "--params", "0.5"], "--params 0.5: a model needs at least one parameter"),
])
def test_bad_values_and_paths_one_line_exit_2_before_any_work(args, words, tmp_path, capsys):
    """Bad seeds, a --resume with nowhere to resume from, and output paths that cannot be
    written are usage errors (status 2) found before training or measuring starts."""
    f = tmp_path / "a_file"
    f.write_text("x")
    fill = {"file": str(f), "dir": str(tmp_path)}
    try:
        rc = main([x.format(**fill) for x in args])
    except SystemExit as e:
        rc = e.code
    captured = capsys.readouterr()
    assert rc == 2, captured.err
    assert captured.err.count("\n") == 1 and words.format(**fill) in captured.err
    assert captured.out == ""  # nothing ran (no "dlprimer train: ..." banner, no measuring)


def test_cuda_without_a_gpu_is_a_usage_error(tmp_path):
    import dlprimer as dp
    if dp.cuda_available():
        pytest.skip("a GPU is usable here")
    p = dlprimer("train", "--backend", "cuda", cwd=tmp_path, check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "--backend cuda: backend 'cuda' is not usable" in p.stderr


def _png_ok(path):
    import matplotlib.image as mpimg
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, path
    rgb = img[..., :3].reshape(-1, 3)
    assert rgb.std() > 0.05, f"{path} looks blank"
    assert len(np.unique(np.round(rgb, 2), axis=0)) > 20, f"{path} has too few colours"


def test_primer_writes_report_logs_and_checkpoints(tmp_path):
    out = tmp_path / "run"
    p = dlprimer("primer", "--out", str(out), "--epochs", "2", "--backend", "cpu", "--size", "tiny",
                 cwd=tmp_path)
    assert "1/4 training" in p.stdout and "report:" in p.stdout
    assert "bwd/fwd" in p.stdout  # the profile table
    assert "\n" + jit_line_start() in p.stdout  # the JIT's first-run compile cost
    from dlprimer.claims import CHECKS
    n = len(CHECKS)  # every claim, the architecture ones included
    assert p.stdout.count("claimed:") == n and p.stdout.count("why:") == n
    (out / "report" / "index.html").unlink()
    dlprimer("report", "--run", str(out), "--no-measure", "--backend", "cpu", cwd=tmp_path)
    rep = out / "report"
    html = (rep / "index.html").read_text()
    pngs = ["loss_accuracy.png", "diagnostics.png", "activations.png", "layer_times.png",
            "memory_split.png", "checkpoint_tradeoff.png", "batch_throughput.png"]
    for name in pngs:
        assert (rep / name).is_file(), name
        assert f'src="{name}"' in html
        _png_ok(rep / name)
    assert "bytes/param" in html and "why they differ" in html
    recs = read_jsonl(out / "logs" / "metrics.jsonl")
    steps = [r for r in recs if r["event"] == "step"]
    epochs = [r for r in recs if r["event"] == "epoch"]
    assert len(epochs) == 2
    for k in STEP_METRICS:
        assert all(k in r for r in steps), k
    for k in EPOCH_METRICS:
        assert all(k in r for r in epochs), k
    assert any(k.startswith("grad_norm/") for k in steps[0])
    assert any(k.startswith("update_ratio/") for k in steps[0])
    assert "mem_peak" in steps[0] or "mem_peak" in steps[1]   # the JIT's warm-up: step 2
    assert any(n.startswith("ckpt-") for n in os.listdir(out / "checkpoints"))
    assert json.loads((out / "profile.json").read_text())["total"]["flop_ratio"] > 1


def test_claims_prints_claimed_measured_why(tmp_path):
    p = dlprimer("claims", "--only", "adam_bytes,gelu_cost", "--size", "tiny", "--backend", "cpu",
                 "--json", "c.json", cwd=tmp_path)
    got = json.loads((tmp_path / "c.json").read_text())
    assert [c["key"] for c in got["claims"]] == ["adam_bytes", "gelu_cost"]
    assert {"cpu", "cores", "load_start", "load_end", "thread_pools"} <= set(got["fingerprint"])
    for c in got["claims"]:
        assert c["verdict"] in ("holds", "differs", "inconclusive") and c["reason"]
        assert c["figures"] and all("median" in f and len(f["ci95"]) == 2 for f in c["figures"].values())
    assert "claimed:  12 bytes/param" in p.stdout
    assert p.stdout.count("measured:") == 2 and p.stdout.count("why:") == 2
    assert "GELU" in p.stdout


def test_estimate_and_profile(tmp_path):
    p = dlprimer("estimate", "--params", "1e9", "--optimizer", "adam", cwd=tmp_path)
    assert "16 bytes/param" in p.stdout and "12 bytes/param" in p.stdout
    p = dlprimer("estimate", "--sizes", "784,256,10", "--batch", "64", "--json", cwd=tmp_path)
    assert json.loads(p.stdout)["params"] == 784 * 256 + 256 + 256 * 10 + 10
    p = dlprimer("profile", "--dataset", "iris", "--hidden", "16", "--repeats", "2",
                 "--warmup", "1", "--json", "p.json", cwd=tmp_path)
    assert "bwd/fwd" in p.stdout and (tmp_path / "p.json").is_file()


def _train(tmp_path, tag, *extra, **kw):
    return dlprimer("train", "--dataset", "iris", "--hidden", "16,16", "--batch-size", "8",
                    "--steps", "40", "--dropout", "0.1", "--schedule", "cosine", "--backend", "cpu",
                    "--checkpoint-dir", str(tmp_path / tag / "ck"), "--log-dir",
                    str(tmp_path / tag / "log"), "--json", *extra, cwd=tmp_path, **kw)


def test_train_killed_with_sigkill_then_resumed_equals_uninterrupted(tmp_path):
    want = json.loads(_train(tmp_path, "a").stdout.strip().splitlines()[-1])
    ck = tmp_path / "b" / "ck"
    args = ["train", "--dataset", "iris", "--hidden", "16,16", "--batch-size", "8", "--steps", "40",
            "--dropout", "0.1", "--schedule", "cosine", "--backend", "cpu", "--checkpoint-dir",
            str(ck), "--checkpoint-every", "1", "--log-dir", str(tmp_path / "b" / "log"), "--json"]
    proc = subprocess.Popen([sys.executable, "-m", "dlprimer", *args], cwd=tmp_path, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (ck.is_dir() and any(n.startswith("ckpt-") for n in os.listdir(ck))):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(float(np.random.default_rng().uniform(0, 0.05)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    got = json.loads(_train(tmp_path, "b", "--resume").stdout.strip().splitlines()[-1])
    measured = ("time_epoch", "time_train", "mem_peak")  # timings and meters, not results
    assert {k: v for k, v in got.items() if k not in measured} == \
        {k: v for k, v in want.items() if k not in measured}
    steps = [r["step"] for r in read_jsonl(tmp_path / "b" / "log" / "metrics.jsonl")
             if r["event"] == "step"]
    assert steps == list(range(1, 41))
