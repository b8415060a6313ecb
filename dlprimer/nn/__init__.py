"""Layers, models and their building blocks (PyTorch's ``torch.nn`` names).

``import dlprimer.nn as nn``; ``import dlprimer.nn.functional as F``.
"""
from . import functional, init, utils
from .activation import ELU, GELU, Dropout, LeakyReLU, LogSoftmax, ReLU, Sigmoid, SiLU, Softmax, Tanh
from .attention import MultiheadAttention
from .container import MLP, Sequential
from .conv import AvgPool2d, Conv2d, Flatten, MaxPool2d, SmallCNN
from .embedding import Embedding
from .linear import Identity, Linear
from .module import IncompatibleKeys, Module, RemovableHandle, StateDictError
from .normalization import BatchNorm1d, LayerNorm
from .parameter import Parameter
from .transformer import GPT, TransformerBlock

__all__ = [
    "Module", "Parameter", "Linear", "Identity", "Sequential", "MLP",
    "ReLU", "LeakyReLU", "GELU", "SiLU", "Sigmoid", "Tanh", "ELU", "Softmax", "LogSoftmax",
    "Dropout", "BatchNorm1d", "LayerNorm", "functional", "init", "utils",
    "StateDictError", "IncompatibleKeys", "RemovableHandle",
    "Embedding", "MultiheadAttention", "Conv2d", "MaxPool2d", "AvgPool2d", "Flatten",
    "SmallCNN", "TransformerBlock", "GPT",
]
