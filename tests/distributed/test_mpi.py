"""Data parallelism over real MPI ranks: ``mpiexec -n 2`` in a subprocess."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

PARAMS = ("arr_0", "arr_1", "arr_2", "arr_3")


def test_collectives_on_two_ranks(mpirun, tmp_path):
    _, (r0, r1) = mpirun(2, "collectives", outdir=tmp_path)
    for r in (r0, r1):
        np.testing.assert_array_equal(r["a"], np.full(5, 1.5, np.float32))       # mean of 1, 2
        np.testing.assert_array_equal(r["s"], np.arange(4) * 3)                   # int sum
        assert r["s"].dtype == np.int64
        np.testing.assert_array_equal(r["t"], np.full((2, 3), 1.0))               # Tensor sum
        np.testing.assert_array_equal(r["b"], np.arange(6.0) + 100)               # root = 1
        assert int(r["obj"]) == 42 and float(r["mn"]) == 21 and float(r["mloss"]) == 1.0
        assert r["ar_bytes"] == 5 * 4 + 4 * 8 + 6 * 8 + 2 * 8                   # metrics: 2 f64
        assert r["bc_bytes"] == 6 * 8
    assert r0["seed"] == r1["seed"]


def test_every_rank_ends_with_identical_parameters(mpirun, tmp_path):
    _, ranks = mpirun(2, "train", 4, 2, outdir=tmp_path)
    for k in PARAMS:
        np.testing.assert_array_equal(ranks[0][k], ranks[1][k])
    # one packed all-reduce per step (6 steps of 24 samples per epoch, 2 epochs)
    assert int(ranks[0]["ar_calls"]) == 12
    n_params = sum(ranks[0][k].size for k in PARAMS)
    assert int(ranks[0]["ar_bytes"]) == 12 * 4 * n_params
    # each epoch the two shards are disjoint and together cover the 48 samples
    for epoch in range(2):
        a, b = (r["seen"][epoch * 24:(epoch + 1) * 24] for r in ranks)
        assert not set(a.tolist()) & set(b.tolist())
        assert len(set(a.tolist()) | set(b.tolist())) == 48


def test_two_ranks_batch_b_equal_one_rank_batch_2b(mpirun, tmp_path):
    (tmp_path / "two").mkdir()
    (tmp_path / "one").mkdir()
    _, two = mpirun(2, "train", 4, 2, outdir=tmp_path / "two")
    _, one = mpirun(0, "train", 8, 2, outdir=tmp_path / "one")
    assert int(one[0]["world"]) == 1 and int(two[0]["world"]) == 2
    for k in PARAMS:
        np.testing.assert_allclose(two[0][k], one[0][k], rtol=1e-5, atol=1e-6)
    # the trajectory moved far from the initial point, so agreement is not trivial
    assert np.abs(one[0]["arr_0"]).max() > 0.1


@pytest.mark.parametrize("how,expect", [
    ("raise", "rank 1 of 2 failed with RuntimeError: injected failure on rank 1"),
    ("hang", "waited more than 2 s (timeout)"),
    ("kill", "BAD TERMINATION"),
])
def test_a_dying_rank_ends_the_job_with_a_clear_error(mpirun, tmp_path, how, expect):
    try:
        proc, _ = mpirun(2, "fail", how, outdir=tmp_path, env={"DLPRIMER_DIST_TIMEOUT": "2"},
                         timeout=30, check=False)
    except subprocess.TimeoutExpired as e:  # pragma: no cover - the failure this test guards
        pytest.fail(f"the job hung instead of aborting ({how}):\n{e.stderr}")
    assert proc.returncode != 0
    assert "finished" not in proc.stdout, proc.stdout
    assert expect in proc.stdout + proc.stderr, proc.stdout + proc.stderr


@pytest.mark.parametrize("opt,extra", [("sgd", ""), ("adam", "clip")])
def test_fit_two_ranks_match_one_rank_through_the_arena(mpirun, tmp_path, opt, extra):
    """dist.fit with nn layers and an arena optimizer: B x 2 ranks == 2B x 1 rank."""
    (tmp_path / "two").mkdir()
    (tmp_path / "one").mkdir()
    _, two = mpirun(2, "fit", 4, 2, opt, extra, outdir=tmp_path / "two")
    _, one = mpirun(0, "fit", 8, 2, opt, extra, outdir=tmp_path / "one")
    keys = [k for k in two[0] if k.startswith("arr_")]
    assert len(keys) == 4
    for k in keys:
        np.testing.assert_array_equal(two[0][k], two[1][k])
        np.testing.assert_allclose(two[0][k], one[0][k], rtol=1e-5, atol=2e-6)
    # the arena path: one all-reduce per step for the single param group, 4 bytes a parameter
    steps = int(two[0]["steps"])
    assert steps == 12 and int(two[0]["ar_calls"]) == steps
    assert int(two[0]["ar_bytes"]) == steps * 4 * int(two[0]["n_params"])
    # metrics, logs and checkpoints by rank 0 only
    assert (tmp_path / "two" / "log0" / "metrics.jsonl").exists()
    assert any((tmp_path / "two" / "ckpt0").iterdir())
    assert not (tmp_path / "two" / "log1").exists() and not (tmp_path / "two" / "ckpt1").exists()


def test_fit_linear_lr_scaling_with_warmup(mpirun, tmp_path):
    _, ranks = mpirun(2, "fit", 4, 1, "sgd", "scale,warmup", outdir=tmp_path)
    for r in ranks:   # base lr 0.05 x 2 ranks, warm-up (4 steps) finished after 6 steps
        assert float(r["lr"]) == pytest.approx(0.1)
    for k in (k for k in ranks[0] if k.startswith("arr_")):
        np.testing.assert_array_equal(ranks[0][k], ranks[1][k])


def test_module_entry_point_trains_under_mpiexec(mpirun, rank_env, tmp_path):
    import json
    import sys

    from dlprimer.distributed import launch
    proc = launch.run(2, [sys.executable, "-m", "dlprimer.distributed", "--dataset", "iris",
                          "--epochs", "1", "--batch-size", "8", "--scale-lr",
                          "--log-dir", str(tmp_path / "log")], timeout=60, env=rank_env)
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(out) == 1                                     # printed by rank 0 only
    assert out[0]["world_size"] == 2 and out[0]["lr"] == pytest.approx(0.1)
    assert out[0]["comm"]["by_op"]["all_reduce"]["calls"] == out[0]["steps"]
    assert (tmp_path / "log" / "metrics.jsonl").exists()


def test_module_entry_point_rejects_negative_warmup(rank_env):
    import sys
    proc = subprocess.run([sys.executable, "-m", "dlprimer.distributed", "--warmup-steps", "-1"],
                          capture_output=True, text=True, timeout=60, env=rank_env)
    assert proc.returncode == 2 and "--warmup-steps must be >= 0" in proc.stderr
