"""Data-parallel helpers: keep replicas identical and average their gradients.

Two invariants make data parallelism exact. (1) Every rank starts from the same
parameters and optimizer state: :func:`broadcast_parameters` and
:func:`broadcast_optimizer_state` copy rank 0's. (2) Every rank applies the same
update: :func:`all_reduce_gradients` replaces each rank's gradient by the mean over
ranks before ``step()``, so the deterministic update leaves the replicas equal.

An optimizer that keeps a param group's gradients in one flat arena is reduced
with one call per group (the message the chapter's gradient-size row counts);
for loose parameters the gradients are packed into one buffer per dtype first,
as PyTorch's DDP buckets do, so the number of messages never grows with the
number of layers.
"""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor


def _comm(comm):
    if comm is not None:
        return comm
    from . import get_communicator
    return get_communicator()


def _parameters(obj) -> list:
    """The parameter Tensors of an optimizer, a Module, or an iterable of Tensors."""
    if hasattr(obj, "param_groups"):
        return [p for g in obj.param_groups for p in g["params"]]
    if hasattr(obj, "parameters") and callable(obj.parameters):
        return list(obj.parameters())
    if isinstance(obj, Tensor):
        return [obj]
    try:
        params = list(obj)
    except TypeError:
        raise TypeError(f"expected an optimizer, a Module or an iterable of Tensors, got "
                        f"{type(obj).__name__}") from None
    for p in params:
        if not isinstance(p, Tensor):
            raise TypeError(f"expected Tensors, got an element of type {type(p).__name__}")
    return params


# -- the optimizer's flat arenas ---------------------------------------------------------
def group_arenas(optimizer, kind: str) -> list | None:
    """One flat array per param group (``kind`` "grad" or "data"), or None.

    Reads the optimizer's arena layout (:class:`dlprimer.optim.Arena`):
    ``optimizer.arenas[i]`` for group ``i``, whose ``.grad`` and ``.data`` 1-D
    arrays the group's ``Parameter.grad``/``.data`` are views of.
    """
    arenas = getattr(optimizer, "arenas", None)
    if arenas is None or not hasattr(optimizer, "param_groups"):
        return None
    out = []
    for a in arenas:
        buf = getattr(a, kind, None)
        if buf is None:
            return None
        out.append(buf)
    return out


def _prepare_grad_arenas(optimizer):
    """Make each arena's gradient array hold exactly this step's gradients.

    ``zero_grad()`` sets ``p.grad = None`` without clearing the arena, so the slice
    of a parameter that got no gradient holds an old one: it is zeroed and installed
    as the gradient (every rank must send the same buffers). A gradient a user
    replaced is copied back into the arena (``Arena.sync``).
    """
    for arena in optimizer.arenas:
        present = arena.sync() if hasattr(arena, "sync") else [True] * len(arena.params)
        for i, has in enumerate(present):
            if not has:
                gv = arena.grad_views[i]
                gv.fill(0)
                arena.params[i].grad = Tensor(gv, False, arena.backend)


# -- packed fallback ----------------------------------------------------------------------
def _buckets(tensors):
    """Group arrays by (backend, dtype) so each bucket travels as one message."""
    buckets: dict = {}
    for t in tensors:
        buckets.setdefault((t.backend.name, str(t.data.dtype)), []).append(t)
    return buckets.values()


def _packed(comm, arrays_of, tensors, fn):
    """Run collective ``fn(flat)`` on each bucket's arrays packed into one buffer."""
    for bucket in _buckets(tensors):
        arrays = [arrays_of(t) for t in bucket]
        if len(arrays) == 1 and arrays[0].flags.c_contiguous:
            fn(arrays[0])
            continue
        xp = bucket[0].backend.xp
        flat = xp.concatenate([a.reshape(-1) for a in arrays])
        fn(flat)
        o = 0
        for a in arrays:
            a[...] = flat[o:o + a.size].reshape(a.shape)
            o += a.size


def all_reduce_gradients(obj, op: str = "mean", comm=None) -> int:
    """Average the gradients of ``obj`` (optimizer, Module or Tensors) over all ranks.

    Call it after ``backward()`` and before ``step()``. With an arena optimizer
    it makes exactly one all-reduce per param group. A parameter without a
    gradient on this rank takes part as zeros (every rank must send the same
    buffers), so afterwards it has a gradient. Returns the bytes reduced.
    """
    comm = _comm(comm)
    arenas = group_arenas(obj, "grad")
    if arenas is not None:
        _prepare_grad_arenas(obj)
        for a in arenas:
            comm.all_reduce_(a, op=op)
        return sum(int(a.nbytes) for a in arenas)
    params = [p for p in _parameters(obj) if p.requires_grad]
    for p in params:
        if p.grad is None:
            xp = p.backend.xp
            p.grad = Tensor(xp.zeros_like(p.data), False, p.backend)
    _packed(comm, lambda p: p.grad.data, params, lambda flat: comm.all_reduce_(flat, op=op))
    return sum(int(p.grad.data.nbytes) for p in params)


def broadcast_parameters(obj, root: int = 0, comm=None):
    """Copy rank ``root``'s parameters (and a Module's buffers) to every rank.

    ``obj`` is an optimizer (arena: one broadcast per group), a Module, or
    Tensors. Call once after building the model, before training.
    """
    comm = _comm(comm)
    arenas = group_arenas(obj, "data")
    if arenas is not None:
        for a in arenas:
            comm.broadcast_(a, root=root)
        tensors = _parameters(obj)
    else:
        tensors = _parameters(obj)
        buffers = getattr(obj, "buffers", None)
        if callable(buffers):
            tensors += [b for b in buffers() if isinstance(b, Tensor)]
        _packed(comm, lambda t: t.data, tensors, lambda flat: comm.broadcast_(flat, root=root))
    for t in tensors:  # written in place: a graph that saved them can no longer backward
        t._bump_version(f"broadcast_parameters(root={root})")


def broadcast_optimizer_state(optimizer, root: int = 0, comm=None):
    """Give every rank rank ``root``'s optimizer state (moments, step counts, lr).

    Goes through ``state_dict()``/``load_state_dict()`` and an object broadcast:
    it is called once (at start or on resume), where the state is either empty or
    was just loaded, so generality beats speed here.
    """
    comm = _comm(comm)
    if comm.world_size == 1:
        return
    sd = optimizer.state_dict() if comm.rank == root else None
    sd = comm.broadcast_object(_to_host(sd), root=root)
    if comm.rank != root:
        optimizer.load_state_dict(sd)


def _to_host(obj):
    """Device arrays inside a state dict, as NumPy (picklable without the device)."""
    if isinstance(obj, dict):
        return {k: _to_host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_host(v) for v in obj)
    if isinstance(obj, Tensor):
        return obj.numpy()
    if hasattr(obj, "__cuda_array_interface__"):
        from ..backend import backend_of_array
        return backend_of_array(obj).to_numpy(obj)
    return obj


def reduce_metrics(values: dict, comm=None) -> dict:
    """Sum a dict of numbers (loss sums, correct counts, sample counts) over ranks.

    Metrics are reduced as sums and divided afterwards, so a mean over the whole
    data set stays exact even when ranks saw different numbers of samples.
    """
    comm = _comm(comm)
    keys = list(values)
    summed = comm.all_reduce_scalars([float(values[k]) for k in keys], op="sum")
    return dict(zip(keys, summed))


def shared_seed(seed: int | None = None, root: int = 0, comm=None) -> int:
    """One seed for all ranks: ``seed`` or fresh entropy drawn on ``root``.

    Shards are disjoint only when every rank permutes with the same seed.
    """
    comm = _comm(comm)
    if seed is None and comm.rank == root:
        seed = int(np.random.SeedSequence().entropy % (2**63))
    return int(comm.broadcast_object(seed, root=root))


def shard_loader(loader, comm=None):
    """Make ``loader`` (a dlprimer DataLoader) read this rank's shard of every epoch.

    Sets ``num_replicas``/``rank`` to the communicator's and the shuffle seed to
    rank 0's, so the shards of one epoch are disjoint and cover the data set
    (the last ``W - n mod W`` indices padded by repetition, as PyTorch's
    DistributedSampler does, so every rank takes the same number of steps).
    """
    comm = _comm(comm)
    loader.num_replicas = comm.world_size
    loader.rank = comm.rank
    loader.seed = shared_seed(loader.seed, comm=comm)
    loader.position = 0
    if loader.drop_last and len(loader) == 0:
        raise ValueError(f"batch_size {loader.batch_size} with drop_last=True leaves no batch "
                         f"from the {loader.num_samples} samples of each of "
                         f"{comm.world_size} ranks")
    return loader
