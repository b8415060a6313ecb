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
