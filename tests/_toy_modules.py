"""Tiny stand-ins for nn modules (duck-typed: parameters(), children(), forward),
so the measuring tools are tested without depending on dlprimer.nn's internals."""
import numpy as np

import dlprimer as dp
from dlprimer.autograd import Function
from dlprimer.nn.parameter import Parameter


class Toy:
    training = True

    def __call__(self, *a):
        return self.forward(*a)

    def children(self):
        return []

    def named_children(self):
        return [(str(i), c) for i, c in enumerate(self.children())]

    def parameters(self):
        return []

    def modules(self):
        out = [self]
        for c in self.children():
            out += c.modules()
        return out


class Linear(Toy):
    def __init__(self, i, o, bias=False, dtype="float64", rng=None):
        rng = rng or np.random.default_rng()
        self.in_features, self.out_features = i, o
        self.weight = Parameter(dp.tensor(rng.standard_normal((o, i)) / np.sqrt(i), dtype=dtype))
        self.bias = Parameter(dp.tensor(rng.standard_normal(o) * 0.1, dtype=dtype)) if bias else None

    def parameters(self):
        return [self.weight] + ([self.bias] if self.bias is not None else [])

    def forward(self, x):
        y = x @ self.weight.T
        return y + self.bias if self.bias is not None else y


class DropoutFn(Function):
    """x * mask / (1-p), mask drawn from the backend's keyed stream (as nn's Dropout)."""

    def forward(self, x, p):
        self.key = self.backend.next_key()
        keep = self.backend.rand(x.shape, "float64", key=self.key) >= p
        self.scale = keep / (1 - p)
        return x * self.scale

    def backward(self, gy):
        return gy * self.scale, None


class Dropout(Toy):
    def __init__(self, p):
        self.p = p

    def forward(self, x):
        return DropoutFn.apply(x, self.p) if self.training and self.p > 0 else x


class Tanh(Toy):
    def forward(self, x):
        return x.tanh()


class ReLU(Toy):
    def forward(self, x):
        return x.relu()


class Seq(Toy):
    def __init__(self, *mods):
        self.mods = list(mods)

    def children(self):
        return list(self.mods)

    def parameters(self):
        return [p for m in self.mods for p in m.parameters()]

    def forward(self, x):
        for m in self.mods:
            x = m(x)
        return x


def mse(out, target):
    d = out - target
    return (d * d).mean()
