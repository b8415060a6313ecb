"""Memory of one training step, read from the backend's allocator meter.

One untimed step runs with the meter on (on the CPU, tracemalloc, which sees every
NumPy buffer; on CUDA, the memory pool's used bytes). The allocator gives what a
step allocates and frees: the bytes still held after forward (the saved
activations), the high-water mark of each phase, the transient excess over what
stays alive (workspace), and whatever backward or the optimizer allocate for good
(new gradients, lazily created optimizer state). Buffers that already existed
before metering started (parameters, and on the CPU anything allocated before
tracemalloc was on) are counted from the arrays themselves, each buffer once even
when parameters are views into an arena.
"""
from __future__ import annotations

from ..backend import Backend
from ..tensor import Tensor


def _root(a):
    while getattr(a, "base", None) is not None and hasattr(a.base, "nbytes"):
        a = a.base
    return a


def buffer_bytes(arrays, exclude=()) -> int:
    """Bytes of the distinct underlying buffers of ``arrays`` (views counted once
    through their owner), skipping buffers whose id is in ``exclude``."""
    seen = set(exclude)
    total = 0
    for a in arrays:
        r = _root(a)
        if id(r) in seen:
            continue
        seen.add(id(r))
        total += int(r.nbytes)
    return total


def buffer_ids(arrays) -> set:
    return {id(_root(a)) for a in arrays}


def _arrays_in(obj, backend, depth=0, seen=None):
    """Backend arrays reachable from ``obj`` through dicts, lists, tuples, Tensors
    and object attributes (a few levels deep): an optimizer's state, whatever its
    layout."""
    if seen is None:
        seen = set()
    if id(obj) in seen or depth > 5 or isinstance(obj, Backend):
        return  # a backend's scratch buffers are workspace, not optimizer state
    seen.add(id(obj))
    if isinstance(obj, Tensor):
        yield obj.data
        if obj.grad is not None:
            yield obj.grad.data
        return
    if backend.is_array(obj):
        if getattr(obj.dtype, "kind", "") == "f":
            yield obj
        return
    if isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, (list, tuple, set)):
        items = list(obj)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        items = list(vars(obj).values())
    else:
        return
    for it in items:
        yield from _arrays_in(it, backend, depth + 1, seen)


def param_arrays(params):
    return [p.data for p in params]


def grad_arrays(params):
    return [p.grad.data for p in params if p.grad is not None]


def optimizer_state_bytes(optimizer, params, backend) -> int:
    """Bytes the optimizer holds beyond parameters and gradients (moments, momentum
    buffers, fp32 master copies), read from the arrays it references."""
    if optimizer is None:
        return 0
    skip = buffer_ids(param_arrays(params)) | buffer_ids(grad_arrays(params))
    return buffer_bytes(list(_arrays_in(optimizer, backend)), exclude=skip)


def batch_arrays(batch):
    out = []
    for b in batch if isinstance(batch, (tuple, list)) else (batch,):
        if isinstance(b, Tensor):
            out.append(b.data)
    return out


def measure_step_memory(step_phases, backend, params, optimizer, batch, meter=None) -> dict:
    """Run one step with the meter on; ``step_phases`` is a dict of callables
    ``zero_grad``, ``forward`` (returns the loss), ``backward(loss)``, ``step``.
    ``meter``: the backend's meter (default) or one that stands in for it (the
    memory timeline's, :class:`dlprimer.profiler.timeline.StepRecorder`).

    Returns bytes: ``resident`` (params, grads, optimizer, inputs) at the start,
    per phase ``peak`` and ``after`` (relative to the step's start), the split, and
    ``offset``: what turns a raw meter reading of this step into the same terms
    (resident bytes minus the meter's reading at the start of the forward).
    """
    meter = meter or backend.memory
    was_active = meter.active
    meter.start()
    try:
        step_phases["zero_grad"]()
        grads_before = buffer_bytes(grad_arrays(params))
        resident = {
            "params": buffer_bytes(param_arrays(params)),
            "grads": grads_before,
            "optimizer": optimizer_state_bytes(optimizer, params, backend),
            "inputs": buffer_bytes(batch_arrays(batch)),
        }
        base = meter.current()
        meter.reset_peak()
        loss = step_phases["forward"]()
        fwd = (meter.peak() - base, meter.current() - base)
        meter.reset_peak()
        step_phases["backward"](loss)
        del loss
        bwd = (meter.peak() - base, meter.current() - base)
        meter.reset_peak()
        stp = (0, bwd[1])
        if optimizer is not None:
            step_phases["step"]()
            stp = (meter.peak() - base, meter.current() - base)
        grads_after = buffer_bytes(grad_arrays(params))
        opt_after = optimizer_state_bytes(optimizer, params, backend)
    finally:
        if not was_active:
            meter.stop()
    res_total = sum(resident.values())
    activations = max(fwd[1], 0)
    phases = {
        "forward": {"peak": res_total + fwd[0], "after": res_total + fwd[1]},
        "backward": {"peak": res_total + bwd[0], "after": res_total + bwd[1]},
    }
    if optimizer is not None:
        phases["step"] = {"peak": res_total + stp[0], "after": res_total + stp[1]}
    peak = max(p["peak"] for p in phases.values())
    split = {
        "params": resident["params"],
        "grads": grads_after,
        "optimizer": opt_after,
        "inputs": resident["inputs"],
        "activations": activations,
    }
    # workspace: what the peak holds beyond the state and the saved activations, so the
    # split adds up to the peak. (Taking each phase's excess over what it keeps would
    # count gradients twice when backward allocates them: once as grads, and again
    # inside the backward excess over the activations.)
    split["workspace"] = max(peak - sum(split.values()), 0)
    return {
        "meter": getattr(meter, "name", type(meter).__name__),
        "phases": phases,
        "peak": peak,
        "split": split,
        "allocated_by_backward": bwd[1] - fwd[1],
        "allocated_by_step": stp[1] - bwd[1],
        "offset": res_total - base,
        "sources": {
            "params": "arrays", "inputs": "arrays",
            "grads": "allocator" if grads_before == 0 and grads_after else "arrays",
            "optimizer": "arrays",
            "activations": "allocator", "workspace": "allocator",
        },
    }
