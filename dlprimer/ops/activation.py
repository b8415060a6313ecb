"""Activation functions as autograd Functions (chapter section 03, Table 3.3).

Each elementwise activation is ONE Function whose forward and backward call one
fused backend op (``backend.gelu_forward`` / ``backend.gelu_backward`` and so on),
so a backend can run each as a single kernel. A Function keeps only what its
backward needs: ReLU, sigmoid and tanh their output (they live in
:mod:`dlprimer.ops.elementwise`), the others their input, dropout nothing but
its random key.

FLOPs per element count every add, multiply, compare, select and
transcendental (exp, erf, tanh) as one; the profiler reads
``fwd_flops_per_elem`` / ``bwd_flops_per_elem`` (per output element).
"""
from __future__ import annotations

from ..autograd import Function
from ._util import norm_axis, prod
from .elementwise import ReLU, Sigmoid, Tanh  # noqa: F401  (re-exported: the core's three)


class LeakyReLU(Function):
    """max(a x, x) for slope a <= 1 (the chapter's Leaky ReLU); gradient a at x <= 0."""
    fwd_flops_per_elem = 2
    bwd_flops_per_elem = 2

    def forward(self, x, negative_slope=0.01):
        self.negative_slope = negative_slope
        self.save(x)
        return self.backend.leaky_relu_forward(x, negative_slope)

    def backward(self, gy):
        return self.backend.leaky_relu_backward(self.saved[0], gy, self.negative_slope)


class ELU(Function):
    """x for x > 0, alpha (e^x - 1) otherwise; gradient 1 or alpha e^x."""
    fwd_flops_per_elem = 4
    bwd_flops_per_elem = 5

    def forward(self, x, alpha=1.0):
        self.alpha = alpha
        self.save(x)
        return self.backend.elu_forward(x, alpha)

    def backward(self, gy):
        return self.backend.elu_backward(self.saved[0], gy, self.alpha)


class GELU(Function):
    """GELU(x) = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) (Table 3.3), or with
    ``approximate="tanh"`` the chapter's edge-device form
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    fwd_flops_per_elem = 5
    bwd_flops_per_elem = 11
    _TANH_FLOPS = (8, 15)

    def forward(self, x, approximate="none"):
        self.approximate = approximate
        if approximate == "tanh":
            self.fwd_flops_per_elem, self.bwd_flops_per_elem = self._TANH_FLOPS
        self.save(x)
        return self.backend.gelu_forward(x, approximate)

    def backward(self, gy):
        return self.backend.gelu_backward(self.saved[0], gy, self.approximate)


class BiasGELU(Function):
    """gelu(x + b) with ``b`` broadcast over the last axis: the bias add of a Linear
    layer fused into its activation (one pass instead of two, no pre-activation kept)."""
    fwd_flops_per_elem = 6
    bwd_flops_per_elem = 12

    def forward(self, x, b, approximate="none"):
        self.approximate = approximate
        if approximate == "tanh":
            self.fwd_flops_per_elem, self.bwd_flops_per_elem = 9, 16
        self.save(x, b)
        return self.backend.bias_gelu_forward(x, b, approximate)

    def backward(self, gy):
        x, b = self.saved
        gx, gb = self.backend.bias_gelu_backward(x, b, gy, self.approximate)
        nx, nb = self.needs_input_grad
        return (gx if nx else None), (gb if nb else None)

    def flops(self):
        n = prod(self.out_shape)
        return self.fwd_flops_per_elem * n, (self.bwd_flops_per_elem + 1) * n if self._record else 0


class SiLU(Function):
    """SiLU / Swish: x sigma(x) (Table 3.3); gradient sigma (1 + x (1 - sigma))."""
    fwd_flops_per_elem = 4
    bwd_flops_per_elem = 8

    def forward(self, x):
        self.save(x)
        return self.backend.silu_forward(x)

    def backward(self, gy):
        return self.backend.silu_backward(self.saved[0], gy)


class Softmax(Function):
    """softmax(x)_i = e^(x_i - m) / sum_j e^(x_j - m), m = max_j x_j (stable for any
    finite x); backward y * (gy - sum(gy * y)). Keeps its output."""
    fwd_flops_per_elem = 5
    bwd_flops_per_elem = 4

    def forward(self, x, axis=-1):
        xp = self.backend.xp
        self.axis = norm_axis(axis, x.ndim)[0] if x.ndim else None
        y = xp.subtract(x, x.max(axis=self.axis, keepdims=True))
        xp.exp(y, out=y)
        y /= y.sum(axis=self.axis, keepdims=True)
        self.save(y)
        return y

    def backward(self, gy):
        (y,) = self.saved
        gx = gy * y
        s = gx.sum(axis=self.axis, keepdims=True)
        gx -= y * s
        return gx


class LogSoftmax(Function):
    """log softmax(x) = (x - m) - log sum_j e^(x_j - m): finite for logits of +-1e4;
    backward gy - softmax(x) * sum(gy). Keeps its output (softmax = e^y)."""
    fwd_flops_per_elem = 5
    bwd_flops_per_elem = 4

    def forward(self, x, axis=-1):
        xp = self.backend.xp
        self.axis = norm_axis(axis, x.ndim)[0] if x.ndim else None
        y = xp.subtract(x, x.max(axis=self.axis, keepdims=True))
        e = xp.exp(y)
        y -= xp.log(e.sum(axis=self.axis, keepdims=True))
        self.save(y)
        return y

    def backward(self, gy):
        (y,) = self.saved
        xp = self.backend.xp
        gx = xp.exp(y)
        gx *= gy.sum(axis=self.axis, keepdims=True)
        return xp.subtract(gy, gx, out=gx)


class Dropout(Function):
    """Inverted dropout: x * mask / (1 - p), mask_i = [u_i >= p].

    The mask is never stored: forward takes a (seed, counter) key from the
    backend's stream and backward regenerates the same mask from it, so the graph
    holds no array at all for this op (and a recomputation under gradient
    checkpointing reproduces it by restoring the stream).
    """
    fwd_flops_per_elem = 2
    bwd_flops_per_elem = 2

    def forward(self, x, p=0.5):
        self.p = p
        self.key = self.backend.next_key()
        return self.backend.dropout_forward(x, p, self.key)

    def backward(self, gy):
        return self.backend.dropout_backward(gy, self.p, self.key)
