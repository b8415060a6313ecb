"""Data: datasets that ship offline (tabular sets, the digits as 8x8 images, a
character-level text corpus with a window sampler), a seeded resumable DataLoader, standardisation
and train/validation splits."""
from .dataset import Standardizer, TensorDataset, standardize, train_val_split
from .datasets import DATASETS, Split, load_dataset
from .images import load_digit_images
from .loader import DataLoader
from .text import CharCorpus, load_text

__all__ = ["TensorDataset", "DataLoader", "Standardizer", "standardize", "train_val_split",
           "load_dataset", "Split", "DATASETS",
           "load_digit_images", "load_text", "CharCorpus"]
