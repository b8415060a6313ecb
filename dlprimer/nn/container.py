"""Containers: Sequential and the MLP builder."""
from __future__ import annotations

from collections import OrderedDict

from .activation import ACTIVATIONS, Dropout
from .linear import Linear
from .module import Module
from .normalization import BatchNorm1d, LayerNorm

_CALL = Module.__call__


class Sequential(Module):
    """Applies its layers in order; ``Sequential(a, b)`` or ``Sequential(OrderedDict(...))``.

    Layers are named "0", "1", ... (or by the OrderedDict's keys), so a state dict
    reads "0.weight", "0.bias", ...
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, m in modules[0].items():
                self.add_module(name, self._module(m))
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), self._module(m))

    @staticmethod
    def _module(m):
        if not isinstance(m, Module):
            raise TypeError(f"Sequential: {type(m).__name__} is not a Module")
        return m

    def forward(self, x):
        for m in self._modules.values():
            # Module.__call__ without its frame for a layer with no hooks (a small model's
            # step pays ~0.3 us per call frame); one with hooks, or its own __call__, is called
            if m._forward_pre_hooks or m._forward_hooks or type(m).__call__ is not _CALL:
                x = m(x)
            else:
                x = m.forward(x)
        return x

    def append(self, module):
        self.add_module(str(len(self._modules)), self._module(module))
        return self

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, idx):
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            return Sequential(OrderedDict(list(self._modules.items())[idx]))
        try:
            return mods[idx]
        except (IndexError, TypeError):
            raise IndexError(f"Sequential: index {idx!r} out of range for {len(mods)} layers") from None


def _activation(activation):
    if isinstance(activation, str):
        try:
            return ACTIVATIONS[activation.lower()]()
        except KeyError:
            raise ValueError(f"MLP: unknown activation {activation!r}; choose one of "
                             f"{', '.join(ACTIVATIONS)} or pass a Module class") from None
    if isinstance(activation, type) and issubclass(activation, Module):
        return activation()
    if callable(activation):
        m = activation()
        if isinstance(m, Module):
            return m
    raise ValueError(f"MLP: activation must be a name or a Module class, got {activation!r}")


class MLP(Sequential):
    """A multilayer perceptron: for each hidden size, Linear, [norm], activation,
    [Dropout]; the last Linear has no activation (it produces logits).

    ``sizes`` = (in, hidden..., out), e.g. (64, 128, 10); ``norm`` is None, "batch"
    (BatchNorm1d) or "layer" (LayerNorm).
    """

    def __init__(self, sizes, activation="relu", dropout: float = 0.0, norm=None,
                 dtype="float32", backend=None):
        sizes = list(sizes)
        if len(sizes) < 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                                     for s in sizes):
            raise ValueError(f"MLP: sizes must be at least two positive ints (in, ..., out), "
                             f"got {sizes!r}")
        if norm not in (None, "batch", "layer"):
            raise ValueError(f"MLP: norm must be None, 'batch' or 'layer', got {norm!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ValueError(f"MLP: dropout must be a probability in [0, 1], got {dropout!r}")
        _activation(activation)  # fail early on a bad name
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(Linear(a, b, dtype=dtype, backend=backend))
            if i == len(sizes) - 2:
                break
            if norm == "batch":
                layers.append(BatchNorm1d(b, dtype=dtype, backend=backend))
            elif norm == "layer":
                layers.append(LayerNorm(b, dtype=dtype, backend=backend))
            layers.append(_activation(activation))
            if dropout > 0:
                layers.append(Dropout(dropout))
        super().__init__(*layers)
        self.sizes = tuple(sizes)
