"""Training checkpoints: round trip, RNG restore, corruption errors, atomic writes."""
import os
import random

import numpy as np
import pytest

import dlprimer as dp
from dlprimer.train.checkpoints import (CheckpointError, CheckpointManager, atomic_write, decode_checkpoint,
                           encode_checkpoint)
from dlprimer.data import DataLoader, TensorDataset


def test_nested_state_round_trips_exactly(rng):
    state = {
        "arr": rng.normal(size=(3, 4)).astype(np.float32),
        "int_keys": {0: {"exp_avg": rng.normal(size=5), "step": 7}, 1: {}},
        "tuple": (1, 2.5, "x", None, True),
        "np_scalar": np.float32(rng.normal()),
        "nan": float("nan"),
        "__marker_like__": [1, 2],
        "tensor": dp.tensor(rng.normal(size=(2,)), dtype="float64"),
        "empty": np.zeros((0, 3), np.int64),
    }
    out = decode_checkpoint(encode_checkpoint(state))
    assert np.array_equal(out["arr"], state["arr"]) and out["arr"].dtype == np.float32
    assert np.array_equal(out["int_keys"][0]["exp_avg"], state["int_keys"][0]["exp_avg"])
    assert out["int_keys"][0]["step"] == 7 and out["int_keys"][1] == {}
    assert out["tuple"] == state["tuple"]
    assert out["np_scalar"] == state["np_scalar"] and out["np_scalar"].dtype == np.float32
    assert np.isnan(out["nan"]) and out["__marker_like__"] == [1, 2]
    assert np.array_equal(out["tensor"].numpy(), state["tensor"].numpy())
    assert out["empty"].shape == (0, 3)


def test_unstorable_value_names_its_place():
    with pytest.raises(TypeError, match="cannot store a builtin_function_or_method at /extra/sched/fn"):
        encode_checkpoint({"extra": {"sched": {"fn": len}}})
    with pytest.raises(TypeError, match="dtype"):
        encode_checkpoint({"a": np.array(["s"])})


def test_rng_and_loader_are_restored(tmp_path):
    dp.manual_seed(11)
    dp.randn(4)
    np.random.seed(3)
    random.seed(4)
    dl = DataLoader(TensorDataset(np.arange(12)), 3, shuffle=True, seed=5)
    it = iter(dl)
    next(it)
    path = tmp_path / "c.safetensors"
    dp.save_checkpoint(path, loader=dl, step=1, extra={"note": "x"})
    want = (dp.randn(5).numpy(), np.random.rand(2), random.random(), [b[0].numpy().tolist() for b in it])
    dp.manual_seed(0)
    np.random.seed(0)
    dl2 = DataLoader(TensorDataset(np.arange(12)), 3, shuffle=True, seed=0)
    st = dp.load_checkpoint(path, loader=dl2)
    assert st["step"] == 1 and st["extra"] == {"note": "x"}
    got = (dp.randn(5).numpy(), np.random.rand(2), random.random(), [b[0].numpy().tolist() for b in dl2])
    assert np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1])
    assert want[2] == got[2] and want[3] == got[3]


def _write_valid(path, value):
    dp.save_checkpoint(path, step=int(value), extra={"w": np.full(1000, value, np.float32)}, rng=False)


def test_corruption_is_detected_with_a_clear_error(tmp_path):
    path = str(tmp_path / "c.safetensors")
    _write_valid(path, 1.0)
    good = open(path, "rb").read()
    flipped = bytearray(good)
    flipped[len(good) - 100] ^= 0x10
    open(path, "wb").write(flipped)
    with pytest.raises(CheckpointError, match=r"c.safetensors' is corrupted: checksum mismatch"):
        dp.load_checkpoint(path)
    open(path, "wb").write(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        dp.load_checkpoint(path)
    open(path, "wb").write(b"\x00\x01")
    with pytest.raises(CheckpointError, match="truncated"):
        dp.load_checkpoint(path)
    hdr = bytearray(good)
    hdr[12] = ord("\x07")
    open(path, "wb").write(hdr)
    with pytest.raises(CheckpointError, match="corrupted"):
        dp.load_checkpoint(path)
    import safetensors.numpy as stn
    open(path, "wb").write(stn.save({"w": np.zeros(2)}))
    with pytest.raises(CheckpointError, match="not a dlprimer training checkpoint"):
        dp.load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        dp.load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="is a directory"):
        dp.load_checkpoint(tmp_path)


def test_missing_part_is_named(tmp_path):
    path = tmp_path / "c.safetensors"
    _write_valid(path, 1.0)

    class Thing:
        def load_state_dict(self, sd):
            pass

    with pytest.raises(CheckpointError, match="holds no optimizer state"):
        dp.load_checkpoint(path, optimizer=Thing())


def test_manager_keeps_newest_and_skips_corrupted(tmp_path):
    m = CheckpointManager(tmp_path, keep=2)
    for step in (1, 2, 3):
        m.save(step, extra={"s": step})
    assert [s for s, _ in m.checkpoints()] == [2, 3]
    with open(m.path_for(3), "r+b") as f:
        f.seek(-5, os.SEEK_END)
        f.write(b"XXXXX")
    with pytest.warns(RuntimeWarning, match="corrupted"):
        assert m.latest() == m.path_for(2)
    with pytest.raises(ValueError, match="keep"):
        CheckpointManager(tmp_path, keep=0)


def test_atomic_write_errors_and_cleanup(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write(tmp_path / "no" / "f", b"x")
    target = tmp_path / "f"
    atomic_write(target, b"old")

    def boom(fd, data):
        os.write(fd, b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("dlprimer.train.checkpoints._write_all", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


def test_stale_temporaries_are_removed(tmp_path):
    stale = tmp_path / ".ckpt-00000001.safetensors.tmp-999999999-abcd"
    stale.write_bytes(b"half")
    CheckpointManager(tmp_path).clean_temporaries()
    assert not stale.exists()


def test_optimizer_or_scheduler_of_another_kind_is_refused(tmp_path):
    """Adam's moments must not load silently into SGD (nor a schedule into another)."""
    from dlprimer import nn
    from dlprimer.optim import SGD, Adam, lr_scheduler
    model = nn.Linear(3, 2)
    adam = Adam(model.parameters(), lr=1e-3)
    sched = lr_scheduler.StepLR(adam, step_size=2)
    path = tmp_path / "c.safetensors"
    dp.save_checkpoint(path, model=model, optimizer=adam, scheduler=sched, step=1)
    with pytest.raises(CheckpointError, match="optimizer state of a Adam, not of a SGD"):
        dp.load_checkpoint(path, model=model, optimizer=SGD(model.parameters(), lr=0.1))
    with pytest.raises(CheckpointError, match="scheduler state of a StepLR, not of a Cosine"):
        dp.load_checkpoint(path, optimizer=adam,
                           scheduler=lr_scheduler.CosineAnnealingLR(adam, T_max=4))
    dp.load_checkpoint(path, model=model, optimizer=adam, scheduler=sched)  # same kinds load
