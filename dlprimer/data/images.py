"""The digits as images: scikit-learn's 1,797 handwritten digits as (N, 1, 8, 8) arrays."""
from __future__ import annotations

import numpy as np

from .dataset import TensorDataset, train_val_split
from .datasets import Split


def load_digit_images(val_fraction: float = 0.2, seed: int = 0) -> Split:
    """The digits (scikit-learn's bundled copy of the UCI optical digits, 8x8 pixels of
    0..16) as float32 images of shape (N, 1, 8, 8), scaled to zero mean and unit
    variance with the training pixels' mean and standard deviation (one pair for all
    pixels, so the images keep their spatial contrast). The split is the same seeded,
    class-stratified one ``load_dataset("digits", seed=seed)`` makes."""
    import sklearn.datasets as skd
    bunch = skd.load_digits()
    X = np.asarray(bunch.images, dtype=np.float32)[:, None]
    y = np.asarray(bunch.target, dtype=np.int64)
    X_tr, X_va, y_tr, y_va = train_val_split(X, y, val_fraction=val_fraction, seed=seed, stratify=y)
    mean, std = float(X_tr.mean()), float(X_tr.std())
    X_tr, X_va = (X_tr - mean) / std, (X_va - mean) / std
    return Split(name="digits_images", task="classification", train=TensorDataset(X_tr, y_tr),
                 val=TensorDataset(X_va, y_va), num_features=64, num_classes=10,
                 description="8x8 handwritten digits as 1x8x8 images",
                 info={"n_total": len(X), "seed": seed, "image_shape": (1, 8, 8),
                       "pixel_mean": mean, "pixel_std": std})
