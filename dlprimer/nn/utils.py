"""Training utilities where PyTorch users look for them (``torch.nn.utils``): gradient clipping."""
from __future__ import annotations

from ..tensor import Tensor, tensor


def _grad_arrays(params):
    """The gradient arrays of ``params``: one flat arena array for every group whose
    parameters all hold their gradient in the arena, the parameters' own otherwise."""
    if isinstance(params, Tensor):
        params = [params]
    params = list(params)
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"clip_grad_norm_: params[{i}] is a {type(p).__name__}, not a Tensor")
    with_grad = [p for p in params if p.grad is not None]
    arrays = []
    covered = set()
    arenas = {}
    for p in with_grad:
        arena = getattr(p, "_grad_arena", None)
        if arena is not None and p.grad.data is p._grad_buffer:
            arenas.setdefault(id(arena), (arena, []))[1].append(p)
    for base, members in arenas.values():
        if sum(int(p.size) for p in members) == base.size and len(
                {id(p) for p in members}) == len(members):
            arrays.append(base)
            covered.update(id(p) for p in members)
    arrays.extend(p.grad.data for p in with_grad if id(p) not in covered)
    return with_grad, arrays


def clip_grad_norm_(params, max_norm, norm_type=2.0):
    """Scale all gradients so their joint ``norm_type``-norm is at most ``max_norm``
    (the chapter's global gradient-norm clipping); return the norm before clipping.

    As PyTorch: ``coef = min(max_norm / (norm + 1e-6), 1)`` multiplies every
    gradient, and the result is a scalar Tensor of the gradients' dtype. When the
    parameters' gradients fill an optimizer's arena, the norm is one reduction and
    the scaling one multiply over it. On a device backend nothing is read back: the
    coefficient is computed and applied on the device (``backend.clip_grad_norm_``).
    """
    max_norm = float(max_norm)
    if not max_norm >= 0:
        raise ValueError(f"clip_grad_norm_: max_norm must be >= 0, got {max_norm}")
    norm_type = float(norm_type)
    if not norm_type > 0:
        raise ValueError(f"clip_grad_norm_: norm_type must be > 0 or inf, got {norm_type}")
    with_grad, arrays = _grad_arrays(params)
    if not with_grad:
        return tensor(0.0)
    backend = with_grad[0].backend
    for p in with_grad:
        if p.backend is not backend:
            raise ValueError(f"clip_grad_norm_: gradients on two backends, {backend.name!r} "
                             f"and {p.backend.name!r}")
    total = backend.clip_grad_norm_(arrays, max_norm, norm_type)
    return Tensor(total.astype(with_grad[0].dtype), False, backend)
