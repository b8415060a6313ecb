"""A character-level text corpus that ships inside the package, and a sampler of
fixed-length windows for language modelling.

The corpus, ``corpus/public_domain.txt`` (about 19 kB), was typed for dlprimer from
public-domain works (written out from memory, so it may differ from the printed
editions in spelling or punctuation, which does not matter for a language model):
Genesis 1:1-2:3, Psalm 23, Ecclesiastes 3:1-8 and 1 Corinthians 13 in the King James
Version (1611); the United States Declaration of Independence (1776, abridged) and
the Constitution's preamble (1787); Lincoln's Gettysburg Address (1863);
Shakespeare's sonnets 18, 29, 73, 116 and 130 (1609) and Hamlet's "To be, or not to
be" (c. 1600). All are in the public domain everywhere.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CORPUS_PATH = Path(__file__).with_name("corpus") / "public_domain.txt"


@dataclass
class CharCorpus:
    """A text as int64 character ids: ``train`` and ``val`` (the last ``val_fraction``
    of the text), the sorted ``vocab`` (one character per id), and helpers."""
    text: str
    vocab: str
    train: np.ndarray
    val: np.ndarray

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, s: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.vocab)}
        bad = sorted(set(s) - set(index))
        if bad:
            raise ValueError(f"encode: characters {bad!r} are not in the corpus vocabulary")
        return np.array([index[c] for c in s], dtype=np.int64)

    def decode(self, ids) -> str:
        return "".join(self.vocab[int(i)] for i in np.asarray(ids).reshape(-1))

    def unigram_loss(self) -> float:
        """Cross-entropy (nats per character) on ``val`` of the best model that ignores
        context: character frequencies of ``train`` (add-one smoothed). A language model
        has learned something from context only when its validation loss is below this."""
        counts = np.bincount(self.train, minlength=self.vocab_size).astype(np.float64) + 1.0
        logp = np.log(counts / counts.sum())
        return float(-logp[self.val].mean())

    def batches(self, split: str, batch_size: int, block_size: int, seed=None):
        """Endless (x, y) int64 batches of shape (batch_size, block_size): windows of
        ``split`` ("train" or "val") at random offsets from a seeded generator, y being
        x shifted by one character (the next-character targets)."""
        data = self._split(split)
        for name, v in (("batch_size", batch_size), ("block_size", block_size)):
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
                raise ValueError(f"batches: {name} must be a positive int, got {v!r}")
        if block_size + 1 > len(data):
            raise ValueError(f"batches: block_size {block_size} needs more than the {len(data)} "
                             f"characters of the {split} split")
        rng = np.random.default_rng(seed)
        offs = np.arange(block_size + 1)
        while True:
            start = rng.integers(0, len(data) - block_size, size=batch_size)
            win = data[start[:, None] + offs]
            yield win[:, :-1], win[:, 1:]

    def windows(self, split: str, block_size: int, stride: int | None = None):
        """A :class:`TensorDataset` of every ``stride``-th window of ``split`` (default
        stride: ``block_size // 4``): inputs (M, block_size) and next-character targets
        (M, block_size), int64 -- the fixed data set a DataLoader (and so ``fit``, with
        its checkpoints and epochs) iterates, where :meth:`batches` samples endlessly."""
        from .dataset import TensorDataset
        data = self._split(split)
        for name, v in (("block_size", block_size), ("stride", stride)):
            if v is None and name == "stride":
                continue
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
                raise ValueError(f"windows: {name} must be a positive int, got {v!r}")
        if block_size + 1 > len(data):
            raise ValueError(f"windows: block_size {block_size} needs more than the {len(data)} "
                             f"characters of the {split} split")
        stride = stride or max(1, block_size // 4)
        start = np.arange(0, len(data) - block_size, stride)
        win = data[start[:, None] + np.arange(block_size + 1)]
        return TensorDataset(np.ascontiguousarray(win[:, :-1]), np.ascontiguousarray(win[:, 1:]))

    def _split(self, split):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        return self.train if split == "train" else self.val


def load_text(val_fraction: float = 0.1, path=None) -> CharCorpus:
    """The bundled corpus (or the UTF-8 text at ``path``) as a :class:`CharCorpus`:
    the first 1 - ``val_fraction`` of the characters for training, the rest for validation."""
    if not isinstance(val_fraction, numbers.Real) or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"load_text: val_fraction must be in (0, 1), got {val_fraction!r}")
    text = Path(path or CORPUS_PATH).read_text(encoding="utf-8")
    vocab = "".join(sorted(set(text)))
    index = {c: i for i, c in enumerate(vocab)}
    ids = np.array([index[c] for c in text], dtype=np.int64)
    n_val = int(math.ceil(len(ids) * val_fraction))
    if n_val < 2 or n_val >= len(ids) - 1:
        raise ValueError(f"load_text: val_fraction {val_fraction} of {len(ids)} characters leaves "
                         "an empty split")
    return CharCorpus(text=text, vocab=vocab, train=ids[:-n_val], val=ids[-n_val:])
