"""Data sets, splits, standardisation and the resumable DataLoader."""
import numpy as np
import pytest

import dlprimer as dp
from dlprimer.data import (DATASETS, DataLoader, Standardizer, TensorDataset, load_dataset,
                           standardize, train_val_split)


@pytest.mark.parametrize("name", DATASETS)
def test_load_dataset_offline(name):
    s = load_dataset(name, seed=1)
    X, y = s.train.arrays
    assert X.dtype == np.float32 and X.shape[1] == s.num_features
    assert len(s.train) + len(s.val) == s.info["n_total"]
    assert np.allclose(X.mean(axis=0), 0, atol=1e-4)
    if s.task == "classification":
        assert y.dtype == np.int64 and set(np.unique(y)) == set(range(s.num_classes))
    else:
        assert y.shape == (len(X), 1) and y.dtype == np.float32


def test_known_sizes():
    assert load_dataset("digits").info["n_total"] == 1797
    assert load_dataset("iris").num_classes == 3
    assert load_dataset("breast_cancer").num_features == 30
    assert load_dataset("wine").num_outputs == 3


def test_split_is_seeded_and_stratified():
    a, b = load_dataset("digits", seed=5), load_dataset("digits", seed=5)
    assert np.array_equal(a.train.arrays[0], b.train.arrays[0])
    c = load_dataset("digits", seed=6)
    assert not np.array_equal(a.train.arrays[1], c.train.arrays[1])
    counts = np.bincount(a.val.arrays[1], minlength=10)
    assert counts.min() >= 30  # about 36 of each of the 10 digits


def test_generated_sets_take_size_and_noise():
    s = load_dataset("moons", n_samples=200, noise=0.0)
    assert len(s.train) + len(s.val) == 200


def test_bad_dataset_arguments():
    with pytest.raises(ValueError, match="unknown data set 'mnist'.*digits"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="generated data sets only"):
        load_dataset("digits", n_samples=100)
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("iris", val_fraction=1.5)
    with pytest.raises(ValueError, match="n_samples"):
        load_dataset("spirals", n_samples=3)


def test_standardize_uses_train_statistics(rng):
    tr = rng.normal(3.0, 2.0, (100, 4)).astype(np.float32)
    tr[:, 2] = 7.0  # constant feature: std 0 must not give NaN
    va = rng.normal(3.0, 2.0, (20, 4)).astype(np.float32)
    a, b = standardize(tr, va)
    assert np.allclose(a.mean(0), 0, atol=1e-5) and np.isfinite(b).all()
    s = Standardizer().fit(tr)
    assert np.allclose(b, (va - s.mean) / s.std, atol=1e-6)
    with pytest.raises(ValueError, match="features of shape"):
        s.transform(np.zeros((3, 5)))
    with pytest.raises(RuntimeError, match="before fit"):
        Standardizer().transform(tr)


def test_train_val_split_errors(rng):
    with pytest.raises(ValueError, match="differ in length"):
        train_val_split(np.zeros(10), np.zeros(9))
    with pytest.raises(ValueError, match="empty part"):
        train_val_split(np.zeros(3), val_fraction=0.01)
    y = np.repeat([0, 1, 2], 50)  # 1% of 150 is 1.5 samples, but 0.5 per class rounds to 0
    with pytest.raises(ValueError, match="stratified by class, leaves an empty part"):
        train_val_split(np.zeros(150), y, val_fraction=0.01, stratify=y)
    with pytest.raises(ValueError, match="empty part"):
        load_dataset("iris", val_fraction=0.01)
    X = rng.normal(size=(50, 2))
    Xt, Xv = train_val_split(X, val_fraction=0.2, seed=0)
    assert len(Xv) == 10 and len(Xt) == 40


def test_tensor_dataset(rng):
    X = rng.normal(size=(10, 3))
    ds = TensorDataset(dp.tensor(X), list(range(10)))
    x, y = ds[np.array([1, 4])]
    assert np.array_equal(x, X[[1, 4]]) and list(y) == [1, 4]
    with pytest.raises(ValueError, match="differ in length"):
        TensorDataset(np.zeros((3, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="at least one"):
        TensorDataset()
    with pytest.raises(ValueError, match="scalar"):
        TensorDataset(np.float32(1.0))


def _ids(loader):
    return [b[1].numpy().tolist() for b in loader]


def test_loader_batches_on_backend(backend, rng):
    X = rng.normal(size=(10, 3)).astype(np.float32)
    dl = DataLoader(TensorDataset(X, np.arange(10)), batch_size=4)
    batches = list(dl)
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    assert batches[0][0].backend.name == backend and batches[0][0].dtype == dp.float32
    assert np.array_equal(batches[0][0].numpy(), X[:4])
    assert len(DataLoader(TensorDataset(X), batch_size=4, drop_last=True)) == 2


def test_loader_shuffle_is_seeded_per_epoch():
    ds = TensorDataset(np.arange(20), np.arange(20))
    a, b = DataLoader(ds, 5, shuffle=True, seed=1), DataLoader(ds, 5, shuffle=True, seed=1)
    e0, e1 = _ids(a), _ids(a)
    assert e0 == _ids(b) and e1 == _ids(b)
    assert e0 != e1
    assert sorted(sum(e0, [])) == list(range(20))
    assert _ids(DataLoader(ds, 5, shuffle=True, seed=2)) != e0


def test_loader_resumes_mid_epoch():
    ds = TensorDataset(np.arange(23), np.arange(23))
    full = DataLoader(ds, 4, shuffle=True, seed=9)
    want = _ids(full) + _ids(full)
    part = DataLoader(ds, 4, shuffle=True, seed=9)
    got = []
    for i, b in enumerate(part):
        got.append(b[1].numpy().tolist())
        if i == 2:
            break
    state = part.state_dict()
    assert state["position"] == 3 and state["epoch"] == 0
    fresh = DataLoader(ds, 4, shuffle=True, seed=0)
    fresh.load_state_dict(state)
    got += _ids(fresh) + _ids(fresh)
    assert got == want


def test_loader_shards_like_distributed_sampler():
    ds = TensorDataset(np.arange(10), np.arange(10))
    parts = [sum(_ids(DataLoader(ds, 2, shuffle=True, seed=3, num_replicas=3, rank=r)), [])
             for r in range(3)]
    assert all(len(p) == 4 for p in parts)
    assert set(sum(parts, [])) == set(range(10))


def test_loader_generic_dataset():
    class Squares:
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return np.float32(i), i * i

    (x, y), *_ = list(DataLoader(Squares(), batch_size=5))
    assert y.numpy().tolist() == [0, 1, 4, 9, 16]


def test_loader_errors():
    ds = TensorDataset(np.arange(5))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        DataLoader(ds, 0)
    with pytest.raises(ValueError, match="leaves no batch"):
        DataLoader(ds, 8, drop_last=True)
    with pytest.raises(TypeError, match="__len__"):
        DataLoader(42)
    with pytest.raises(ValueError, match="rank"):
        DataLoader(ds, 2, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="empty dataset"):
        DataLoader(TensorDataset(np.zeros((0, 2))), 2)
    dl = DataLoader(ds, 2, shuffle=True)
    with pytest.raises(ValueError, match="batch_size=3"):
        dl.load_state_dict({**DataLoader(ds, 3, shuffle=True).state_dict()})
    with pytest.raises(ValueError, match="drop_last=True"):
        dl.load_state_dict({**DataLoader(ds, 2, shuffle=True, drop_last=True).state_dict()})
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="seed must be a non-negative integer"):
            DataLoader(ds, 2, seed=bad)
