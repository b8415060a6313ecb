"""Analytic costs of the layers beyond the MLP, for :func:`dlprimer.estimate`.

Two shapes of model are read: a chain of image layers (Conv2d, MaxPool2d,
AvgPool2d, Flatten, then Linear/activation/Dropout, as :class:`nn.SmallCNN`), walked
layer by layer with the activation shape; and :class:`nn.GPT`, whose pre-LN blocks
are costed by formula. FLOPs are the Functions' own counts (the same per-element
constants the profiler reads), so the two agree; a test checks it.

Saved bytes follow what the Functions keep. With ``lo`` the training dtype's
itemsize and ``hi`` = max(lo, 4): outputs of the matrix products (and under autocast
the half copies of their inputs and weights) take ``lo`` bytes per element;
normalisation and softmax probabilities run in float32 under autocast and take ``hi``;
activations and the cross-entropy take ``lo`` where the backend's fused op runs on half
inputs (``backend.half_fused``: float32 math inside, half saved; the cross-entropy then
keeps its half logits and two float32 numbers per row) and ``hi`` otherwise. Per GPT
block of N tokens, width E, H heads, length T, with GELU on half inputs:
(2 hi + 14 lo) N E + 2 N hi + B H T^2 hi -- the attention probabilities are the one
term quadratic in T, the reason long contexts need memory-efficient attention.
"""
from __future__ import annotations

import numpy as np

from ..ops.activation import GELU
from ..ops.elementwise import ReLU, Sigmoid, Tanh
from ..ops.loss import CrossEntropy
from ..ops.norm import LayerNorm

IMAGE_LAYERS = ("conv2d", "maxpool2d", "avgpool2d", "flatten")
_ACT = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh, "gelu": GELU}


def kind(model) -> str | None:
    """"gpt", "image" or None (a model the MLP estimator reads)."""
    if type(model).__name__ == "GPT":
        return "gpt"
    leaves = [m for m in model.modules() if not list(m.children())]
    names = {type(m).__name__.lower() for m in leaves}
    if names & {"embedding", "multiheadattention"}:
        raise ValueError("estimate: Embedding and MultiheadAttention are costed inside nn.GPT only")
    return "image" if names & set(IMAGE_LAYERS) else None


def _row(label, f, b, saved):
    return {"layer": label, "fwd_flops": int(f), "bwd_flops": int(b), "activation_bytes": int(saved)}


# -- a chain of image layers --------------------------------------------------------------
def image_rows(model, shape, lo, half):
    """Rows for an (N, C, H, W) batch through the model's leaf layers in order.

    Under autocast (``half``) a product saves a half copy of its input unless that
    buffer is already half and saved (an activation output on a backend whose fused
    activation takes half inputs, ``backend.half_fused``); pooling runs in float32."""
    if len(shape) != 4:
        raise ValueError(f"estimate: an image model needs an input shape (N, C, H, W), got {shape}")
    from ..backend import get_backend
    hi = max(lo, 4)
    half_ops = get_backend().half_fused if half else frozenset()
    n, feat = shape[0], tuple(shape[1:])
    rows, grad_in = [], False
    buf_saved, buf_low = True, False        # the batch: counted as inputs, float32
    for m in (m for m in model.modules() if not list(m.children())):
        name = type(m).__name__.lower()
        size = n * int(np.prod(feat))
        copy = not buf_saved or (half and not buf_low)     # a product keeps its input
        if name == "conv2d":
            c, h, w = feat
            (kh, kw), (sh, sw), (ph, pw) = m.kernel_size, m.stride, m.padding
            oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
            o = m.out_channels
            mac, bias = 2 * n * o * c * kh * kw * oh * ow, (n * o * oh * ow if m.bias is not None else 0)
            saved = size * lo * copy + (o * c * kh * kw * lo if half else 0)
            rows.append(_row(f"Conv2d({c}, {o}, {kh}x{kw})", mac + bias, mac * (1 + grad_in) + bias, saved))
            feat, grad_in, buf_saved, buf_low = (o, oh, ow), True, False, half
        elif name in ("maxpool2d", "avgpool2d"):
            c, h, w = feat
            (kh, kw), (sh, sw), (ph, pw) = m.kernel_size, m.stride, m.padding
            feat = (c, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
            out = n * int(np.prod(feat))
            k = kh * kw
            f = (k - 1) * out if name == "maxpool2d" else k * out
            rows.append(_row(type(m).__name__, f, k * out, out if name == "maxpool2d" else 0))
            buf_saved, buf_low = False, False
        elif name == "flatten":
            feat = (size // n,)
        elif name == "linear":
            i, o = m.in_features, m.out_features
            bias = n * o if m.bias is not None else 0
            saved = n * i * lo * copy + (i * o * lo if half else 0)
            rows.append(_row(f"Linear({i}, {o})", 2 * n * i * o + bias,
                             2 * n * i * o * (1 + grad_in) + bias, saved))
            feat, grad_in, buf_saved, buf_low = (o,), True, False, half
        elif name in _ACT:
            fn = _ACT[name]
            low = buf_low and name in half_ops
            rows.append(_row(name, fn.fwd_flops_per_elem * size, fn.bwd_flops_per_elem * size,
                             size * (lo if low else hi)))
            buf_saved, buf_low = name != "gelu", low   # GELU keeps its input, the others their output
        elif name == "dropout" and getattr(m, "p", 0) > 0 and m.training:
            rows.append(_row("dropout", 2 * size, 2 * size, 0))
            buf_saved, buf_low = False, buf_low and "dropout" in half_ops   # half in, half out
        elif name not in ("identity", "dropout"):
            raise ValueError(f"estimate: no analytic model for layer {type(m).__name__} in an image model")
    if len(feat) != 1:
        raise ValueError(f"estimate: the image model ends in shape {feat}, not (classes,)")
    classes = feat[0]
    rows.append(_loss_row(n, classes, lo, hi, buf_low and "cross_entropy" in half_ops))
    return rows


def _loss_row(n, classes, lo, hi, half_logits):
    """The cross-entropy: float32 probabilities (N x C), or on half logits the logits
    themselves and (max, log-sum) per row in float32."""
    saved = n * classes * lo + 2 * n * 4 if half_logits else n * classes * hi
    return _row("loss", CrossEntropy.fwd_flops_per_elem * n * classes,
                CrossEntropy.bwd_flops_per_elem * n * classes, saved)


# -- the GPT ---------------------------------------------------------------------------------
def gpt_rows(model, shape, lo, half):
    """Rows for (B, T) token ids through a :class:`nn.GPT`."""
    if len(shape) != 2:
        raise ValueError(f"estimate: a GPT needs an input shape (B, T) of token ids, got {shape}")
    hi = max(lo, 4)
    from ..backend import get_backend
    half_ops = get_backend().half_fused if half else frozenset()
    act = lo if "gelu" in half_ops else hi       # the GELU's saved input
    B, T = shape
    N, V = B * T, model.vocab_size
    blocks = list(model.blocks)
    E = model.wte.embedding_dim
    rows = [_row("Embedding (wte + wpe)", N * E, N * E + T * E + 2 * N * E, T * 8)]
    ln_f, ln_b = LayerNorm.fwd_flops_per_elem, LayerNorm.bwd_flops_per_elem * 3
    for i, blk in enumerate(blocks):
        H = blk.attn.num_heads
        hd = E // H
        lse = B * H * T * T
        rows.append(_row(f"block{i}.ln_1", ln_f * N * E, ln_b * N * E, N * E * hi + N * hi))
        rows.append(_row(f"block{i}.attn.in_proj", 3 * (2 * N * E * E + N * E),
                         3 * (4 * N * E * E + N * E) + 3 * (E * E + E),
                         N * E * lo + 3 * N * E * lo + (3 * E * E * lo if half else 0)))
        rows.append(_row(f"block{i}.attn.sdpa", 4 * lse * hd + 5 * lse, 8 * lse * hd + 4 * lse,
                         lse * hi))
        rows.append(_row(f"block{i}.attn.out_proj", 2 * N * E * E + N * E, 4 * N * E * E + N * E,
                         N * E * lo + (E * E * lo if half else 0)))
        rows.append(_row(f"block{i}.residuals", 2 * N * E, 4 * N * E, 0))
        rows.append(_row(f"block{i}.ln_2", ln_f * N * E, ln_b * N * E, N * E * hi + N * hi))
        rows.append(_row(f"block{i}.mlp", 16 * N * E * E + 5 * N * E + GELU.fwd_flops_per_elem * 4 * N * E,
                         32 * N * E * E + 5 * N * E + GELU.bwd_flops_per_elem * 4 * N * E,
                         N * E * lo + 4 * N * E * act + 4 * N * E * lo + (8 * E * E * lo if half else 0)))
    rows.append(_row("ln_f", ln_f * N * E, ln_b * N * E, N * E * hi + N * hi))
    rows.append(_row(f"lm_head({E}, {V})", 2 * N * E * V, 4 * N * E * V,
                     N * E * lo + (E * V * lo if half else 0)))
    rows.append(_loss_row(N, V, lo, hi, half and "cross_entropy" in half_ops))
    return rows
