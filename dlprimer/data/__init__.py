"""Data: datasets that ship offline, a seeded resumable DataLoader, standardisation
and train/validation splits."""
from .dataset import Standardizer, TensorDataset, standardize, train_val_split
from .datasets import DATASETS, Split, load_dataset
from .loader import DataLoader

__all__ = ["TensorDataset", "DataLoader", "Standardizer", "standardize", "train_val_split",
           "load_dataset", "Split", "DATASETS"]
