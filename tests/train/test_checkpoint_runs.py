"""Training checkpoints belong to a run (issue 15, points 2 and 9): pruning keeps the
current run's newest, corrupt files are moved aside, resuming from nothing or starting
over another run is an error unless forced, a finished run says so. Real files; one
case kills a training subprocess with SIGKILL and resumes it."""
import os
import signal

import numpy as np
import pytest

import dlprimer as dp
from dlprimer import nn
from dlprimer.data import DataLoader, load_dataset
from dlprimer.logs import read_jsonl
from dlprimer.optim import Adam
from dlprimer.train import CheckpointError, CheckpointManager, CheckpointWarning, fit

from ._slow_fit import spawn, wait_for


@pytest.fixture(scope="module")
def iris():
    return load_dataset("iris", seed=0)


def _run(iris, d, seed=3, **kw):
    dp.manual_seed(seed)
    model = nn.MLP([4, 8, 3])
    opt = Adam(model.parameters(), lr=1e-2)
    train = DataLoader(iris.train, batch_size=16, shuffle=True, seed=seed)
    val = DataLoader(iris.val, batch_size=64)
    res = fit(model, opt, train, val, checkpoint_dir=d, progress=False, **kw)
    return res, np.concatenate([p.numpy().ravel() for p in model.parameters()])


def _corrupt(path):
    with open(path, "r+b") as f:
        f.seek(-7, os.SEEK_END)
        f.write(b"garbage")


def test_a_new_run_never_prunes_its_own_newest_checkpoint(iris, tmp_path):
    """A 5-step run beside a 20-step run: the old run's later steps used to outrank (and
    delete) the new run's checkpoint at once, and --resume then picked the old run."""
    old, _ = _run(iris, tmp_path, steps=20, checkpoint_every=2, keep_checkpoints=2)
    old_files = sorted(os.listdir(tmp_path))
    new, w_new = _run(iris, tmp_path, steps=5, checkpoint_every=5, keep_checkpoints=2, force=True)
    assert os.path.exists(new.checkpoint) and new.checkpoint_step == 5
    assert set(old_files) <= set(os.listdir(tmp_path))  # the other run's files untouched
    assert os.path.basename(new.checkpoint).split("-")[1] != os.path.basename(
        old.checkpoint).split("-")[1]  # two run ids
    again, w = _run(iris, tmp_path, steps=5, resume=True)
    assert again.resumed_from == new.checkpoint and again.already_complete
    assert np.array_equal(w, w_new)


def test_pruning_keeps_keep_of_the_current_run(tmp_path):
    a, b = CheckpointManager(tmp_path, keep=2), CheckpointManager(tmp_path, keep=2)
    for step in range(1, 6):
        a.save(step, extra={"s": step}, rng=False)
    for step in (1, 2):
        b.save(step, extra={"s": step}, rng=False)
    assert [s for s, _ in a.checkpoints()] == [4, 5]
    assert [s for s, _ in b.checkpoints()] == [1, 2]
    assert dp.train.checkpoints.read_checkpoint(b.path_for(2))["run_id"] == b.run_id


def test_corrupt_checkpoints_are_moved_aside_not_counted(iris, tmp_path):
    _run(iris, tmp_path, steps=12, checkpoint_every=3, keep_checkpoints=3)
    files = sorted(n for n in os.listdir(tmp_path) if n.endswith(".safetensors"))
    assert len(files) == 3
    for n in files:
        _corrupt(tmp_path / n)
    with pytest.warns(CheckpointWarning, match="moved it aside") as caught:
        with pytest.raises(CheckpointError, match="nothing usable to resume.*3 checkpoint"):
            _run(iris, tmp_path, steps=12, resume=True)
    assert len(caught) == 3 and all("\n" not in str(w.message) for w in caught)
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".corrupt")) == \
        sorted(n + ".corrupt" for n in files)
    # forced, the fresh run keeps its checkpoints: corrupt files no longer outrank them
    res, _ = _run(iris, tmp_path, steps=6, checkpoint_every=3, keep_checkpoints=2, resume=True,
                  force=True)
    assert res.resumed_from is None and os.path.exists(res.checkpoint)
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".safetensors")]) == 2


def test_resume_errors_and_force(iris, tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        _run(iris, tmp_path / "empty", steps=3, resume=True)
    _run(iris, tmp_path / "a", steps=3)
    with pytest.raises(CheckpointError, match="already holds checkpoints of another run"):
        _run(iris, tmp_path / "a", steps=3)
    res, _ = _run(iris, tmp_path / "a", steps=3, force=True)
    assert res.step == 3 and res.resumed_from is None


def test_resuming_a_finished_run_says_so_and_logs_one_config(iris, tmp_path):
    logs = tmp_path / "logs"
    first, w = _run(iris, tmp_path / "c", epochs=2, log_dir=logs)
    again, w2 = _run(iris, tmp_path / "c", epochs=2, log_dir=logs, resume=True)
    assert again.already_complete and again.step == first.step and np.array_equal(w, w2)
    _run(iris, tmp_path / "c", epochs=3, log_dir=logs, resume=True)  # one more epoch
    records = read_jsonl(logs / "metrics.jsonl")
    assert [r["event"] for r in records].count("config") == 1
    assert [r["epoch"] for r in records if r["event"] == "epoch"] == [0, 1, 2]


def _child(d, marker, resume):
    return spawn(d, marker, resume, 40, 3, 2, 7, 0.03, 3)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_then_corrupt_newest_then_resume_equals_uninterrupted(iris, tmp_path):
    ref = _child(tmp_path / "ref", tmp_path / "m0", 0)
    out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    d = tmp_path / "run"
    p = _child(d, tmp_path / "m1", 0)
    wait_for(tmp_path / "m1", p)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    m = CheckpointManager(d)
    (run_id,) = {r for r, _, _ in m.all_checkpoints()}
    newest = m.checkpoints(run_id)[-1][1]
    _corrupt(newest)  # the newest is torn: resume falls back to the one before, same run
    with pytest.warns(CheckpointWarning):
        before = m.latest()
    assert before is not None and f"-{run_id}-" in os.path.basename(before)
    r = _child(d, tmp_path / "m2", 1)
    out, err = r.communicate(timeout=300)
    assert r.returncode == 0, err
    assert out.split()[:3] == ["DONE", before, "40"]
    finals = [CheckpointManager(x).latest() for x in (tmp_path / "ref", d)]
    a, b = (dp.train.checkpoints.read_checkpoint(f)["model"] for f in finals)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_checkpoints_from_before_run_ids_still_resume(iris, tmp_path):
    """A checkpoint named as before run ids (ckpt-<step>.safetensors, no run_id inside)
    resumes, and the resumed run goes on under that legacy name."""
    first, _ = _run(iris, tmp_path / "new", steps=4)
    legacy = tmp_path / "old" / "ckpt-00000004.safetensors"
    legacy.parent.mkdir()
    os.replace(first.checkpoint, legacy)
    res, _ = _run(iris, tmp_path / "old", steps=8, resume=True)
    assert res.resumed_from == str(legacy) and res.step == 8
    assert os.path.basename(res.checkpoint) == "ckpt-00000008.safetensors"
