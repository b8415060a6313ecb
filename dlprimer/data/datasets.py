"""Data sets that need no network: scikit-learn's bundled ones and generated ones.

``load_dataset(name)`` returns a :class:`Split`: standardised float32 features,
int64 class labels (float32 targets of shape (N, 1) for regression), a seeded
stratified train/validation split, and the statistics used. scikit-learn ships
digits, iris, breast cancer, wine and diabetes inside its wheel, so nothing is
downloaded; moons, spirals and the regression set are drawn from a seeded
generator.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .dataset import Standardizer, TensorDataset, train_val_split


def _sklearn(loader_name):
    def load(n_samples=None, noise=None, seed=0):
        import sklearn.datasets as skd
        bunch = getattr(skd, loader_name)()
        return bunch.data, bunch.target, getattr(bunch, "DESCR", "").split("\n")[0]
    return load


def _moons(n_samples=None, noise=None, seed=0):
    from sklearn.datasets import make_moons
    X, y = make_moons(n_samples=n_samples or 1000, noise=0.2 if noise is None else noise,
                      random_state=seed)
    return X, y, "two interleaving half circles (sklearn.datasets.make_moons)"


def _spirals(n_samples=None, noise=None, seed=0, classes=3):
    """K interleaved arms r = t, theta = 4t * 1.0 + 2 pi k / K (plus noise): a classic
    set a linear model cannot separate but a small MLP can."""
    n = n_samples or 900
    rng = np.random.default_rng(seed)
    per = n // classes
    noise = 0.2 if noise is None else noise
    X, y = [], []
    for k in range(classes):
        t = np.linspace(0.0, 1.0, per)
        theta = 4.0 * t + 2.0 * np.pi * k / classes + rng.normal(0.0, noise, per)
        X.append(np.stack([t * np.sin(theta), t * np.cos(theta)], axis=1))
        y.append(np.full(per, k))
    return np.concatenate(X), np.concatenate(y), f"{classes} interleaved spirals (generated)"


def _regression(n_samples=None, noise=None, seed=0):
    """Friedman #1: y = 10 sin(pi x0 x1) + 20 (x2 - 1/2)^2 + 10 x3 + 5 x4 + noise, with
    5 irrelevant extra features: nonlinear, so depth helps."""
    from sklearn.datasets import make_friedman1
    X, y = make_friedman1(n_samples=n_samples or 1000, n_features=10,
                          noise=1.0 if noise is None else noise, random_state=seed)
    return X, y, "Friedman #1 regression (sklearn.datasets.make_friedman1)"


_SOURCES = {
    "digits": (_sklearn("load_digits"), "classification"),
    "iris": (_sklearn("load_iris"), "classification"),
    "breast_cancer": (_sklearn("load_breast_cancer"), "classification"),
    "wine": (_sklearn("load_wine"), "classification"),
    "moons": (_moons, "classification"),
    "spirals": (_spirals, "classification"),
    "regression": (_regression, "regression"),
    "diabetes": (_sklearn("load_diabetes"), "regression"),
}
DATASETS = tuple(_SOURCES)


@dataclass
class Split:
    """A loaded data set: ``train`` and ``val`` TensorDatasets plus what a model needs."""
    name: str
    task: str                      # "classification" or "regression"
    train: TensorDataset
    val: TensorDataset
    num_features: int
    num_classes: int | None        # None for regression (one output)
    description: str = ""
    scaler: Standardizer | None = None
    target_scaler: Standardizer | None = None
    info: dict = field(default_factory=dict)

    @property
    def num_outputs(self) -> int:
        return self.num_classes if self.task == "classification" else 1

    def __repr__(self):
        return (f"Split({self.name!r}, {self.task}, train={len(self.train)}, val={len(self.val)}, "
                f"features={self.num_features}, classes={self.num_classes})")


def load_dataset(name: str, val_fraction: float = 0.2, seed: int = 0, standardize: bool = True,
                 n_samples: int | None = None, noise: float | None = None) -> Split:
    """Load data set ``name`` (one of :data:`DATASETS`) split into train and validation.

    val_fraction, seed: the split (stratified by class for classification).
    standardize: z-score features (and regression targets) with training statistics.
    n_samples, noise: for the generated sets only (moons, spirals, regression).
    """
    if not isinstance(name, str) or name not in _SOURCES:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(DATASETS)}")
    source, task = _SOURCES[name]
    generated = name in ("moons", "spirals", "regression")
    if not generated and (n_samples is not None or noise is not None):
        raise ValueError(f"n_samples and noise apply to generated data sets only, not {name!r}")
    if n_samples is not None and (not isinstance(n_samples, (int, np.integer)) or n_samples < 10):
        raise ValueError(f"n_samples must be an integer >= 10, got {n_samples!r}")
    X, y, desc = source(n_samples=n_samples, noise=noise, seed=seed)
    X = np.asarray(X, dtype=np.float32)
    if task == "classification":
        y = np.asarray(y, dtype=np.int64)
        X_tr, X_va, y_tr, y_va = train_val_split(X, y, val_fraction=val_fraction, seed=seed,
                                                 stratify=y)
    else:
        y = np.asarray(y, dtype=np.float32).reshape(-1, 1)
        X_tr, X_va, y_tr, y_va = train_val_split(X, y, val_fraction=val_fraction, seed=seed)
    scaler = target_scaler = None
    if standardize:
        scaler = Standardizer().fit(X_tr)
        X_tr, X_va = scaler.transform(X_tr), scaler.transform(X_va)
        if task == "regression":
            target_scaler = Standardizer().fit(y_tr)
            y_tr, y_va = target_scaler.transform(y_tr), target_scaler.transform(y_va)
    num_classes = int(y.max()) + 1 if task == "classification" else None
    return Split(name=name, task=task, train=TensorDataset(X_tr, y_tr),
                 val=TensorDataset(X_va, y_va), num_features=X.shape[1],
                 num_classes=num_classes, description=desc, scaler=scaler,
                 target_scaler=target_scaler, info={"n_total": len(X), "seed": seed})
