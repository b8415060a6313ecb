"""Bytes an op moves, counted from shapes and dtypes (the roofline's x axis).

The count is the op's *compulsory* memory traffic: every array the op must read or
write, touched once, in its own dtype. Temporaries inside a kernel, re-reads that
miss the cache and the writes of intermediate buffers a composition of ufuncs makes
are not counted, so achieved GB/s is a lower bound of the traffic really moved.

Forward of a recorded node (:class:`dlprimer.autograd.Function`):
    reads  every input array (``in_shapes`` x ``in_dtypes``);
    writes the output, plus every array it saves for backward that is neither an
           input nor the output (softmax-CE's probabilities: written once, read back
           in backward).
Backward:
    reads  the arriving gradient ``gy`` (output-sized) and each distinct saved array;
    writes one gradient per input that needs one (input-sized; a parameter's lands
           in its slot of the gradient arena).

So Linear y = x W^T + b (x: M x in, W: out x in) moves, in float32,
4 (M in + out in + out + M out) bytes forward and 4 (M out + M in [x, when W needs a
gradient] + out in [W, when x needs one] + M in [gx, when x needs one] + out in + out)
backward; ReLU 4 n + 4 n forward, 4 n (y) + 4 n (gy) + 4 n (gx) backward; GELU the
same with x saved instead of y; mean softmax-CE over (N, C) logits reads logits and
int64 targets and writes the scalar loss and the probabilities forward, then reads
gy, probabilities and targets and writes the logits' gradient backward.

Shape ops that return views (reshape, transpose, slicing) move nothing, but the rule
counts them as a copy: their bytes are an upper bound, their intensity 0.

Optimizer updates are not autograd nodes: :func:`update_bytes` counts them from the
arrays each update reads and writes per parameter element (Adam: reads w, g, m, v,
writes w, m, v -- 7 arrays).
"""
from __future__ import annotations

import numpy as np


def _nbytes(shape, dtype) -> int:
    n = 1
    for s in shape or ():
        n *= int(s)
    return n * (np.dtype(dtype).itemsize if dtype is not None else 0)


def _saved_extra(node, input_ids) -> list:
    """Bytes of the saved arrays that are neither an input (by identity) nor the
    output (an array of the output's shape and dtype that is no input is taken to be
    the output: ReLU keeps ``y``)."""
    out = []
    oshape, odtype = tuple(node.out_shape), str(node.out_dtype)
    for a in _distinct(node.saved or ()):
        if id(a) in input_ids or (tuple(a.shape) == oshape and str(a.dtype) == odtype):
            continue
        out.append(int(a.nbytes))
    return out


def node_bytes(node, input_ids=frozenset()) -> tuple[int, int]:
    """(forward bytes, backward bytes) of a recorded node, counted as the module
    docstring says; ``input_ids`` are the ``id()`` of its input arrays (seen by an
    observer's ``on_forward_begin``). Inputs that are not arrays move nothing."""
    ins = [_nbytes(s, d) for s, d in zip(node.in_shapes, getattr(node, "in_dtypes", ()))]
    out = _nbytes(node.out_shape, getattr(node, "out_dtype", None))
    extra = _saved_extra(node, input_ids) if getattr(node, "in_dtypes", None) else []
    fwd = sum(ins) + out + sum(extra)
    saved = sum(int(a.nbytes) for a in _distinct(node.saved or ()))
    grads = sum(b for b, need in zip(ins, node.needs_input_grad) if need)
    bwd = out + saved + grads
    return fwd, bwd


def _distinct(arrays):
    seen = set()
    for a in arrays:
        if a is None or not hasattr(a, "nbytes") or id(a) in seen:
            continue
        seen.add(id(a))
        yield a


#: per parameter element: (arrays read, arrays written, FLOPs) of one update
#: (FLOPs count each add, multiply, divide and square root once).
UPDATES = {
    "SGD": (2, 1, 2),                 # w -= lr g
    "SGD+momentum": (3, 2, 5),        # b = mu b + g; w -= lr b
    "Adam": (4, 3, 14),               # m, v moments, bias correction, sqrt, divide
    "AdamW": (4, 3, 16),              # + decoupled decay w -= lr wd w
    "LAMB": (4, 3, 20),               # Adam direction + per-parameter norms (one more read)
    "LARS": (3, 2, 9),                # momentum SGD + per-parameter norms
}


def update_kind(optimizer) -> str | None:
    """The :data:`UPDATES` key of ``optimizer`` (None for an optimizer it does not know)."""
    name = type(optimizer).__name__
    if name == "SGD":
        groups = getattr(optimizer, "param_groups", [{}])
        return "SGD+momentum" if any(g.get("momentum", 0) for g in groups) else "SGD"
    return name if name in UPDATES else None


def update_bytes(optimizer, params) -> tuple[int, int] | None:
    """(bytes, FLOPs) of one optimizer step over ``params`` (None if the update is not
    in :data:`UPDATES`): per element, the arrays read plus the arrays written, each in
    the parameter's dtype (LAMB and LARS read the parameters once more for their norms)."""
    kind = update_kind(optimizer)
    if kind is None:
        return None
    reads, writes, flops = UPDATES[kind]
    if kind in ("LAMB", "LARS"):
        reads += 1
    nbytes = sum(int(p.data.nbytes) for p in params)
    n = sum(int(p.data.size) for p in params)
    return nbytes * (reads + writes), n * flops
