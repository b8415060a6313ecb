"""Gradient checkpointing: keep a segment's input, recompute its inside in backward.

Plain backpropagation keeps every activation of the forward pass until backward
consumes it, so activation memory grows with depth L. Checkpointing splits the
network into k segments, runs each segment's forward without recording a graph
(keeping only its input) and, when backward reaches the segment, re-runs it with the
graph on and backpropagates through that small graph. Peak activation memory falls
from O(L) to O(k + L/k), smallest at k = sqrt(L), for about one extra forward pass
of compute (the chapter's "20-30 % more computation for 60-70 % less memory").

Random ops inside a segment (dropout) draw their keys from the backend's counter
(``backend.next_key()``); the forward's RNG state is saved and replayed during the
recomputation, so the masks, and with them the gradients, are the same as without
checkpointing.
"""
from __future__ import annotations

from . import autograd
from .autograd import Function, enable_grad, no_grad

_recomputing = 0


def is_recomputing() -> bool:
    """True while a checkpointed segment is being re-run inside backward (the
    profiler books those FLOPs as recomputation, not as forward)."""
    return _recomputing > 0


def _module_params(fn):
    """Parameters reachable from ``fn`` (a Module, a bound method of one, or a list
    of modules), so the checkpoint node is recorded even when no input needs grad."""
    owners = [fn, getattr(fn, "__self__", None)] + list(getattr(fn, "_checkpoint_modules", ()))
    params, seen = [], set()
    for o in owners:
        get = getattr(o, "parameters", None)
        if o is None or not callable(get):
            continue
        for p in get():
            if id(p) not in seen and getattr(p, "requires_grad", False):
                seen.add(id(p))
                params.append(p)
    return params


class Checkpoint(Function):
    """One checkpointed segment as a single graph node.

    Positional inputs: the segment's tensor arguments, then the parameters it
    uses (only so that the node is recorded when they need gradients; their
    gradients are accumulated straight into ``.grad`` by the inner backward).
    """

    fwd_flops_per_elem = 0
    bwd_flops_per_elem = 0

    def forward(self, *arrays, fn, spec, n_args):
        from .tensor import Tensor
        self.fn, self.spec, self.n_args = fn, spec, n_args
        self.rng_state = self.backend.get_rng_state()
        # the parameters too: not for memory (they live anyway) but so that an in-place
        # write to them before backward (an optimizer step) raises instead of the
        # recomputation silently using the new weights
        self.save(*arrays)
        with no_grad():
            out = fn(*_rebuild(spec, arrays[:n_args], self.backend, ()))
        if not isinstance(out, Tensor):
            raise TypeError(f"checkpoint: the function must return one Tensor, got {type(out).__name__}")
        return out.data

    def backward(self, gy):
        global _recomputing
        from .tensor import Tensor
        arrays = self.saved[:self.n_args]
        needs = self.needs_input_grad[:self.n_args]
        inputs = _rebuild(self.spec, arrays, self.backend, needs)
        now = self.backend.get_rng_state()
        self.backend.set_rng_state(self.rng_state)
        _recomputing += 1
        try:
            with enable_grad():
                out = self.fn(*inputs)
            if out.requires_grad:
                autograd.run_backward(out, gy)
        finally:
            _recomputing -= 1
            self.backend.set_rng_state(now)
        grads = []
        for x in inputs:
            if isinstance(x, Tensor) and x.requires_grad:
                grads.append(x.grad.data if x.grad is not None else None)
        by_slot = iter(grads)
        out_grads = [next(by_slot) if n else None for n in needs]
        return tuple(out_grads) + (None,) * (len(self.needs_input_grad) - self.n_args)


def _rebuild(spec, arrays, backend, needs):
    """Positional arguments from ``spec`` (constants, or None where a tensor goes),
    with fresh leaf tensors on the saved arrays."""
    from .tensor import Tensor
    it = iter(arrays)
    flags = iter(needs) if needs else None
    args = []
    for s in spec:
        if s is _TENSOR:
            t = Tensor(next(it), False, backend)
            if flags is not None and next(flags):
                t.requires_grad = True
            args.append(t)
        else:
            args.append(s)
    return args


_TENSOR = object()


def checkpoint(fn, *args):
    """``fn(*args)`` with its activations dropped in forward and recomputed in
    backward. ``fn`` returns one Tensor; non-Tensor arguments pass through.

    Parameters are found from ``fn`` when it is a Module or a bound method of one;
    when neither the inputs nor such parameters need gradients the segment is run
    plainly (nothing to recompute). With grad mode off it is a plain call.
    """
    from .tensor import Tensor
    if not callable(fn):
        raise TypeError(f"checkpoint: fn must be callable, got {type(fn).__name__}")
    if not autograd.is_grad_enabled():
        return fn(*args)
    tensors = [a for a in args if isinstance(a, Tensor)]
    if not tensors:
        raise TypeError("checkpoint: pass at least one Tensor argument (the segment's input)")
    params = _module_params(fn)
    if not any(t.requires_grad for t in tensors) and not params:
        params = [_anchor(tensors[0])]
    spec = tuple(_TENSOR if isinstance(a, Tensor) else a for a in args)
    return Checkpoint.apply(*tensors, *params, fn=fn, spec=spec, n_args=len(tensors))


def _anchor(like):
    """A scalar leaf needing grad: records the node when fn's parameters are hidden
    in a closure (its gradient stays None)."""
    from .tensor import Tensor
    return Tensor(like.backend.xp.zeros((), dtype=like.dtype), True, like.backend)


class _Segment:
    """Layers ``mods[lo:hi]`` run in order, as one checkpointable function."""

    def __init__(self, mods):
        self._checkpoint_modules = tuple(mods)

    def __call__(self, x):
        for m in self._checkpoint_modules:
            x = m(x)
        return x


def checkpoint_sequential(seq, segments: int, x):
    """Run ``seq`` (a Sequential, or any iterable of layers) on ``x`` in ``segments``
    nearly equal chunks, all but the last checkpointed (the last one's activations are
    needed at once by backward, so recomputing them would buy nothing)."""
    try:
        mods = list(seq.children()) if hasattr(seq, "children") else list(seq)
    except TypeError:
        raise TypeError(f"checkpoint_sequential: seq must be a Sequential or an iterable of "
                        f"layers, got {type(seq).__name__}") from None
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
        raise ValueError(f"checkpoint_sequential: segments must be a positive int, got {segments!r}")
    if not mods:
        raise ValueError("checkpoint_sequential: seq has no layers")
    k = min(segments, len(mods))
    bounds = [round(i * len(mods) / k) for i in range(k + 1)]
    for i in range(k):
        seg = _Segment(mods[bounds[i]:bounds[i + 1]])
        x = checkpoint(seg, x) if i < k - 1 else seg(x)
    return x


__all__ = ["checkpoint", "checkpoint_sequential", "is_recomputing", "Checkpoint"]
