"""Layers, models and their building blocks (PyTorch's ``torch.nn`` names).

``import dlprimer.nn as nn``; ``import dlprimer.nn.functional as F``.
"""
from . import functional, init, utils
from .activation import ELU, GELU, Dropout, LeakyReLU, LogSoftmax, ReLU, Sigmoid, SiLU, Softmax, Tanh
from .container import MLP, Sequential
from .linear import Identity, Linear
from .module import IncompatibleKeys, Module, RemovableHandle, StateDictError
from .normalization import BatchNorm1d, LayerNorm
from .parameter import Parameter

__all__ = [
    "Module", "Parameter", "Linear", "Identity", "Sequential", "MLP",
    "ReLU", "LeakyReLU", "GELU", "SiLU", "Sigmoid", "Tanh", "ELU", "Softmax", "LogSoftmax",
    "Dropout", "BatchNorm1d", "LayerNorm", "functional", "init", "utils",
    "StateDictError", "IncompatibleKeys", "RemovableHandle",
]
