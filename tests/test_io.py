"""Model files: dp.save / dp.load (safetensors, no pickle), bit-exact round trips,
and every bad-file case naming the file and the problem."""
import os
import pickle

import numpy as np
import pytest

import dlprimer as dp
import dlprimer.nn.functional as F
from dlprimer import nn
from dlprimer.io import LoadedStateDict, ModelFileError


def _trained_model():
    dp.manual_seed(0)
    m = nn.MLP([6, 16, 16, 3], activation="gelu", norm="batch", dropout=0.1)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = dp.tensor(rng.standard_normal((8, 6)), dtype="float32")
        loss = F.cross_entropy(m(x), rng.integers(0, 3, 8))
        m.zero_grad()
        loss.backward()
        with dp.no_grad():
            for p in m.parameters():
                p.data -= 0.1 * p.grad.data
    return m.eval()


def test_save_load_reproduces_outputs_bit_for_bit(tmp_path):
    m = _trained_model()
    path = tmp_path / "model.safetensors"
    dp.save(m.state_dict(), path)
    sd = dp.load(path)
    assert isinstance(sd, LoadedStateDict) and sd.source == str(path)
    assert list(sd) == list(m.state_dict())  # order kept
    fresh = nn.MLP([6, 16, 16, 3], activation="gelu", norm="batch", dropout=0.1).eval()
    fresh.load_state_dict(sd)
    x = dp.tensor(np.random.default_rng().standard_normal((10, 6)), dtype="float32")
    np.testing.assert_array_equal(fresh(x).numpy(), m(x).numpy())
    for k, v in m.state_dict().items():
        assert sd[k].dtype == v.dtype and sd[k].shape == v.shape
        np.testing.assert_array_equal(sd[k].numpy(), v.numpy())
    assert sd["1.num_batches_tracked"].item() == 3


def test_dtypes_shapes_and_metadata(tmp_path):
    state = {"h": dp.tensor(np.arange(6, dtype=np.float16).reshape(2, 3)),
             "d": dp.tensor(np.linspace(0, 1, 4)).astype("float64"),
             "i": dp.tensor(7, dtype="int64"), "b": dp.tensor([True, False]),
             "e": dp.zeros(0, 4), "raw": np.arange(3, dtype=np.int32)}
    path = str(tmp_path / "x.safetensors")
    dp.save(state, path, metadata={"step": "12"})
    sd = dp.load(path)
    assert sd.metadata == {"step": "12"}
    for k, v in state.items():
        ref = v.numpy() if isinstance(v, dp.Tensor) else v
        assert sd[k].shape == ref.shape and sd[k].dtype == ref.dtype, k
        np.testing.assert_array_equal(sd[k].numpy(), ref)
    sd["d"].data += 1  # loaded arrays are ordinary writable arrays
    assert [f for f in os.listdir(tmp_path)] == ["x.safetensors"]  # no temporary left


def test_file_is_plain_safetensors(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "m.safetensors"
    m = nn.Linear(3, 2)
    dp.save(m.state_dict(), path)
    raw = safetensors_numpy.load_file(str(path))
    np.testing.assert_array_equal(raw["weight"], m.weight.numpy())


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model file: .*nope.safetensors"):
        dp.load(tmp_path / "nope.safetensors")
    with pytest.raises(ModelFileError, match="is a directory"):
        dp.load(tmp_path)


def _good_bytes(tmp_path):
    p = tmp_path / "good.safetensors"
    dp.save(nn.Linear(4, 3).state_dict(), p)
    return p.read_bytes()


@pytest.mark.parametrize("case", ["truncated", "header_only", "empty", "garbage", "pickle", "bad_json"])
def test_bad_files_name_the_file_and_problem(case, tmp_path):
    good = _good_bytes(tmp_path)
    data = {
        "truncated": good[:-7],
        "header_only": good[:12],
        "empty": b"",
        "garbage": os.urandom(64),
        "pickle": pickle.dumps({"weight": np.ones(3)}),
        "bad_json": (20).to_bytes(8, "little") + b"{not json at all!!}",
    }[case]
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(data)
    with pytest.raises(ModelFileError, match=f"{case}.safetensors .* not a readable safetensors file"):
        dp.load(path)


def test_mismatched_file_names_the_file_and_leaves_model_untouched(tmp_path):
    path = tmp_path / "small.safetensors"
    dp.save(nn.MLP([4, 5, 2]).state_dict(), path)
    model = nn.MLP([4, 8, 2])
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    with pytest.raises(nn.StateDictError,
                       match=r"from .*small.safetensors into MLP: 0.weight: shape \(5, 4\) in the state dict, \(8, 4\)"):
        model.load_state_dict(dp.load(path))
    other = tmp_path / "other.safetensors"
    dp.save({"0.weight": np.ones((8, 4), np.float32)}, other)
    with pytest.raises(nn.StateDictError, match=r"other.safetensors .*missing keys: 0.bias, 2.weight, 2.bias"):
        model.load_state_dict(dp.load(other))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k])
    assert model.load_state_dict(dp.load(other), strict=False).missing_keys == ["0.bias", "2.weight", "2.bias"]
    np.testing.assert_array_equal(model[0].weight.numpy(), 1)


def test_save_errors(tmp_path):
    p = tmp_path / "x.safetensors"
    with pytest.raises(TypeError, match="names must be strings"):
        dp.save({1: dp.ones(2)}, p)
    with pytest.raises(TypeError, match="'w' is a list, not a Tensor or a NumPy array"):
        dp.save({"w": [1, 2]}, p)
    with pytest.raises(TypeError, match="'c' has dtype complex128, which safetensors cannot store"):
        dp.save({"c": np.ones(2, dtype=complex)}, p)
    with pytest.raises(TypeError, match="metadata must map strings to strings"):
        dp.save({"w": dp.ones(2)}, p, metadata={"step": 3})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dp.save({"w": dp.ones(2)}, tmp_path / "no" / "dir" / "x.safetensors")
    with pytest.raises(TypeError, match="mapping"):
        dp.save([dp.ones(2)], p)
    assert not p.exists()


def test_save_overwrites_atomically(tmp_path):
    p = tmp_path / "m.safetensors"
    dp.save({"w": dp.ones(3)}, p)
    dp.save({"w": dp.zeros(3)}, p)
    np.testing.assert_array_equal(dp.load(p)["w"].numpy(), 0)


def test_no_pickle_on_the_load_path():
    import dlprimer.io as io
    src = open(io.__file__).read()
    assert "import pickle" not in src and "np.load(" not in src


def test_reserved_names_are_refused_at_save_time(tmp_path):
    p = tmp_path / "r.safetensors"
    with pytest.raises(ValueError, match="'__metadata__' is reserved by the safetensors format"):
        dp.save({"__metadata__": dp.randn(2), "w": dp.randn(2)}, p)
    for key in ("dlprimer.keys", "dlprimer.note"):
        with pytest.raises(ValueError, match=f"metadata key '{key}' is reserved"):
            dp.save({"w": dp.randn(2)}, p, metadata={key: "x"})
    assert not p.exists() and os.listdir(tmp_path) == []
    meta = {"note": "kept", "dlprimer": "kept too", "step": "7"}
    dp.save({"__meta__": dp.randn(2)}, p, metadata=meta)
    assert dp.load(p).metadata == meta


def test_load_refuses_a_fifo_without_blocking(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(ModelFileError, match="not a regular file"):
        dp.load(fifo)  # before the fix: blocked forever in open()


def test_save_errors_name_the_users_path_not_a_temporary_one(tmp_path, monkeypatch):
    import safetensors.numpy
    target = tmp_path / "model.safetensors"

    def disk_full(arrays, filename, metadata=None):
        raise OSError(28, "No space left on device", filename)
    monkeypatch.setattr(safetensors.numpy, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left") as e:
        dp.save({"w": dp.randn(3)}, target)
    assert str(target) in str(e.value) and ".tmp" not in str(e.value)
    assert os.listdir(tmp_path) == []  # the temporary file is removed
    monkeypatch.undo()
    if os.geteuid() != 0:  # root may write anywhere; elsewhere a read-only directory is real
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match=f"save\\({ro}/m.safetensors\\)") as e:
            dp.save({"w": dp.randn(3)}, ro / "m.safetensors")
        assert ".tmp" not in str(e.value)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        dp.save({"w": dp.randn(3)}, tmp_path)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=oct)
def test_new_files_follow_the_umask_and_rewrites_keep_the_mode(tmp_path, umask):
    p = tmp_path / "m.safetensors"
    old = os.umask(umask)
    try:
        dp.save({"w": dp.randn(3)}, p)
        assert oct(os.stat(p).st_mode & 0o777) == oct(0o666 & ~umask)
        os.chmod(p, 0o640)
        dp.save({"w": dp.randn(3)}, p)
        assert oct(os.stat(p).st_mode & 0o777) == oct(0o640)
    finally:
        os.umask(old)
