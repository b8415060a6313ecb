"""TensorDataset, standardisation and a seeded train/validation split.

Datasets hold host (NumPy) arrays; the :class:`~dlprimer.data.DataLoader` moves
each batch to the current backend. Keeping the source on the host makes a
dataset independent of the backend it will be trained on.
"""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor


def _host(a, what: str) -> np.ndarray:
    if isinstance(a, Tensor):
        return a.numpy()
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "__cuda_array_interface__") or hasattr(a, "get"):
        from ..backend import backend_of_array
        return backend_of_array(a).to_numpy(a)
    try:
        return np.asarray(a)
    except Exception as e:  # ragged lists and the like
        raise TypeError(f"{what}: cannot turn a {type(a).__name__} into an array ({e})") from None


class TensorDataset:
    """Samples ``i`` of several arrays of equal length: ``ds[i] -> (x_i, y_i, ...)``.

    ``TensorDataset(X, y)`` with NumPy arrays, lists or Tensors (copied to the host
    once). Indexing with an integer array returns a tuple of batched arrays.
    """

    def __init__(self, *arrays):
        if not arrays:
            raise ValueError("TensorDataset needs at least one array")
        self.arrays = tuple(_host(a, f"TensorDataset argument {i}") for i, a in enumerate(arrays))
        n = len(self.arrays[0]) if self.arrays[0].ndim else None
        for i, a in enumerate(self.arrays):
            if a.ndim == 0:
                raise ValueError(f"TensorDataset argument {i} is a scalar; every array needs a "
                                 "first (sample) axis")
            if len(a) != n:
                shapes = ", ".join(str(x.shape) for x in self.arrays)
                raise ValueError(f"TensorDataset arrays differ in length (first axis): {shapes}")

    def __len__(self):
        return len(self.arrays[0])

    def __getitem__(self, idx):
        return tuple(a[idx] for a in self.arrays)

    def __repr__(self):
        shapes = ", ".join(f"{a.shape}:{a.dtype}" for a in self.arrays)
        return f"TensorDataset({shapes})"


class Standardizer:
    """Per-feature z-score, ``(x - mean) / std``, fitted on training data only.

    Features with zero variance (digits has constant border pixels) get std 1, so
    they become zero instead of NaN.
    """

    def __init__(self, mean=None, std=None):
        self.mean = None if mean is None else np.asarray(mean)
        self.std = None if std is None else np.asarray(std)

    def fit(self, x) -> "Standardizer":
        x = _host(x, "Standardizer.fit")
        if x.ndim < 1 or len(x) == 0:
            raise ValueError(f"Standardizer.fit needs at least one sample, got shape {x.shape}")
        self.mean = x.mean(axis=0)
        std = x.std(axis=0)
        self.std = np.where(std > 0, std, 1.0)
        return self

    def transform(self, x) -> np.ndarray:
        if self.mean is None:
            raise RuntimeError("Standardizer.transform before fit()")
        x = _host(x, "Standardizer.transform")
        if x.shape[1:] != self.mean.shape:
            raise ValueError(f"Standardizer fitted on features of shape {self.mean.shape}, "
                             f"got data of shape {x.shape}")
        return ((x - self.mean) / self.std).astype(x.dtype if x.dtype.kind == "f" else np.float32)

    def fit_transform(self, x) -> np.ndarray:
        return self.fit(x).transform(x)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std}


def standardize(train, *others):
    """Standardise ``train`` with its own statistics and ``others`` with the same ones.

    Returns the transformed arrays (one, or a tuple) - the validation set must never
    leak into the statistics.
    """
    s = Standardizer().fit(train)
    out = (s.transform(train),) + tuple(s.transform(o) for o in others)
    return out[0] if len(out) == 1 else out


def train_val_split(*arrays, val_fraction: float = 0.2, seed: int = 0, stratify=None):
    """Seeded random split: returns ``(a_train, a_val)`` pairs flattened,
    ``X_tr, X_val, y_tr, y_val = train_val_split(X, y, val_fraction=0.2, seed=0)``.

    ``stratify`` (class labels) keeps class proportions in both parts. The same seed
    gives the same split on every machine (NumPy's PCG64).
    """
    if not arrays:
        raise ValueError("train_val_split needs at least one array")
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    hosts = [_host(a, "train_val_split") for a in arrays]
    n = len(hosts[0])
    if any(len(a) != n for a in hosts):
        raise ValueError("train_val_split arrays differ in length: "
                         + ", ".join(str(a.shape) for a in hosts))
    n_val = int(round(n * val_fraction))
    if n_val < 1 or n_val >= n:
        raise ValueError(f"val_fraction={val_fraction} of {n} samples leaves an empty part")
    rng = np.random.default_rng(seed)
    if stratify is None:
        perm = rng.permutation(n)
        val_idx, tr_idx = perm[:n_val], perm[n_val:]
    else:
        labels = _host(stratify, "stratify")
        val_parts, tr_parts = [], []
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            k = int(round(len(idx) * val_fraction))
            val_parts.append(idx[:k])
            tr_parts.append(idx[k:])
        val_idx = rng.permutation(np.concatenate(val_parts))
        tr_idx = rng.permutation(np.concatenate(tr_parts))
        if len(val_idx) == 0 or len(tr_idx) == 0:  # per-class rounding can empty a part
            raise ValueError(f"val_fraction={val_fraction} of {n} samples, stratified by class, "
                             f"leaves an empty part ({len(tr_idx)} train / {len(val_idx)} val)")
    out = []
    for a in hosts:
        out += [a[tr_idx], a[val_idx]]
    return tuple(out)
