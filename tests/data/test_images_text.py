"""The digits as images and the bundled character corpus with its window sampler."""
import numpy as np
import pytest

from dlprimer.data import load_dataset, load_digit_images, load_text
from dlprimer.data.text import CORPUS_PATH


def test_digit_images_shape_split_and_scaling():
    s = load_digit_images(seed=0)
    X, y = s.train.arrays
    Xv, yv = s.val.arrays
    assert X.shape[1:] == (1, 8, 8) and X.dtype == np.float32 and y.dtype == np.int64
    assert len(X) + len(Xv) == 1797 and s.num_classes == 10
    assert abs(float(X.mean())) < 1e-4 and abs(float(X.std()) - 1) < 1e-3
    flat = load_dataset("digits", seed=0)          # the same stratified partition
    np.testing.assert_array_equal(np.sort(flat.val.arrays[1]), np.sort(yv))
    assert np.bincount(yv).min() >= 30             # stratified: every class held out


def test_corpus_is_bundled_small_and_round_trips():
    assert CORPUS_PATH.is_file() and CORPUS_PATH.stat().st_size <= 1 << 20
    c = load_text()
    assert len(c.train) + len(c.val) == len(c.text) and len(c.val) >= 0.1 * len(c.text)
    s = "In the beginning"
    assert c.decode(c.encode(s)) == s
    with pytest.raises(ValueError, match="not in the corpus vocabulary"):
        c.encode("\u00e9")
    assert 2.5 < c.unigram_loss() < np.log(c.vocab_size)


def test_window_sampler_targets_are_shifted_windows(rng):
    c = load_text()
    seed = int(rng.integers(1 << 30))
    x, y = next(c.batches("train", 5, 16, seed=seed))
    assert x.shape == y.shape == (5, 16) and x.dtype == np.int64
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x, y):                 # each row is a window of the train split
        s = c.decode(np.concatenate([row_x, row_y[-1:]]))
        assert s in c.decode(c.train)
    x2, _ = next(c.batches("train", 5, 16, seed=seed))
    np.testing.assert_array_equal(x, x2)           # the seed fixes the windows
    with pytest.raises(ValueError, match="split must be"):
        next(c.batches("test", 2, 8))
    with pytest.raises(ValueError, match="block_size"):
        next(c.batches("val", 2, len(c.val)))
    with pytest.raises(ValueError, match="val_fraction"):
        load_text(val_fraction=1.5)
