"""DataLoader: seeded shuffling, batching, and a position that a checkpoint can save.

The shuffle order of epoch ``e`` is a pure function of ``(seed, e)``: NumPy's
PCG64 seeded with the pair. The loader's whole random state is therefore
``{"seed", "epoch", "position"}``, so a training checkpoint that stores it
resumes with exactly the batches the uninterrupted run would have drawn.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import backend_for
from ..tensor import Tensor
from .dataset import TensorDataset


class DataLoader:
    """Batches of a dataset as Tensors on a backend.

    dataset: a :class:`TensorDataset` (fast path: one gather per array per batch) or
    any object with ``__len__`` and ``__getitem__(int) -> tuple``.
    batch_size, shuffle, drop_last: as in PyTorch. seed: the shuffle seed (drawn
    from OS entropy when None, and kept, so a checkpoint still resumes exactly).
    backend: where batches go (None: the current backend at iteration time).
    num_replicas, rank: shard every epoch's order across data-parallel ranks the
    way PyTorch's DistributedSampler does (padded so every rank gets as many).

    Iterating resumes where the last iteration stopped: a loop that breaks after k
    batches continues with batch k+1 of the same epoch; a finished pass moves to
    the next epoch (and a new order). ``state_dict()`` / ``load_state_dict()``
    save and restore that position.
    """

    def __init__(self, dataset, batch_size: int = 32, shuffle: bool = False,
                 drop_last: bool = False, seed: int | None = None, backend=None,
                 num_replicas: int = 1, rank: int = 0):
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(f"DataLoader needs a dataset with __len__ and __getitem__, got "
                            f"{type(dataset).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(num_replicas, (int, np.integer)) or num_replicas < 1:
            raise ValueError(f"num_replicas must be a positive integer, got {num_replicas!r}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank!r}")
        if len(dataset) == 0:
            raise ValueError("DataLoader over an empty dataset")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                                 or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(np.random.SeedSequence().entropy % (2**63)) if seed is None else int(seed)
        self.backend = backend
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0
        self.position = 0
        self._cache: dict = {}
        if self.drop_last and len(self) == 0:
            raise ValueError(f"batch_size {self.batch_size} with drop_last=True leaves no batch "
                             f"from {self.num_samples} samples")

    # -- sizes ----------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        return math.ceil(len(self.dataset) / self.num_replicas)

    def __len__(self):
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    # -- order ----------------------------------------------------------------------
    def order(self, epoch: int) -> np.ndarray:
        """The sample indices this rank visits in ``epoch``, in order."""
        n = len(self.dataset)
        idx = (np.random.default_rng([self.seed, int(epoch)]).permutation(n) if self.shuffle
               else np.arange(n))
        if self.num_replicas > 1:
            total = self.num_samples * self.num_replicas
            if total > n:
                idx = np.concatenate([idx, idx[: total - n]])
            idx = idx[self.rank::self.num_replicas]
        return idx

    # -- state ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position,
                "batch_size": self.batch_size, "shuffle": self.shuffle,
                "drop_last": self.drop_last, "num_replicas": self.num_replicas, "rank": self.rank}

    def load_state_dict(self, state: dict):
        """Resume at the saved (seed, epoch, position). The rank is not checked: rank 0
        writes the checkpoint and every rank resumes the same position on its own shard."""
        for k in ("batch_size", "shuffle", "drop_last", "num_replicas"):
            if k in state and state[k] != getattr(self, k):
                raise ValueError(f"DataLoader state was saved with {k}={state[k]!r}, this loader "
                                 f"has {k}={getattr(self, k)!r}; resume needs the same value")
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])

    def set_epoch(self, epoch: int):
        """Start the next iteration at the beginning of ``epoch``."""
        self.epoch = int(epoch)
        self.position = 0

    # -- batches --------------------------------------------------------------------
    def _arrays_on(self, b):
        arrays = self._cache.get(b.name)
        if arrays is None:
            arrays = tuple(b.asarray(a) for a in self.dataset.arrays)  # no copy on the CPU
            self._cache[b.name] = arrays
        return arrays

    def _batch(self, b, idx: np.ndarray):
        if isinstance(self.dataset, TensorDataset):
            arrays = self._arrays_on(b)
            idx = b.asarray(idx)
            parts = tuple(a[idx] for a in arrays)
        else:
            samples = [self.dataset[int(i)] for i in idx]
            if not isinstance(samples[0], tuple):
                samples = [(s,) for s in samples]
            parts = tuple(b.asarray(np.stack([np.asarray(s[j]) for s in samples]))
                          for j in range(len(samples[0])))
        return tuple(Tensor(p, False, b) for p in parts)

    def __iter__(self):
        b = backend_for(self.backend)
        nb = len(self)
        order = self.order(self.epoch)
        while self.position < nb:
            start = self.position * self.batch_size
            idx = order[start:start + self.batch_size]
            self.position += 1
            yield self._batch(b, idx)
        self.epoch += 1
        self.position = 0

    def __repr__(self):
        return (f"DataLoader({len(self.dataset)} samples, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, seed={self.seed})")
