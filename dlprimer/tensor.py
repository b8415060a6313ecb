"""Tensor: a backend array plus what autograd needs, and the creation functions.

dtype rules: Python floats become float32 (the default dtype), ints int64,
bools bool; NumPy/CuPy arrays keep their dtype. Ops promote as PyTorch does
(``_dtype.result_type``): a Python scalar takes the tensor's dtype unless it is of a
higher kind (an int tensor * 2.5 is float32), an integer tensor with a float tensor
gives the float's dtype, and ``/`` of integers gives float32.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import _dtype
from .backend import Backend, backend_for, backend_of_array, get_backend


class Tensor:
    """An n-dimensional array on one backend, optionally tracked by autograd."""

    __slots__ = ("data", "requires_grad", "grad", "_node", "_backend", "__weakref__", "__dict__")
    __array_priority__ = 1000  # numpy scalars defer to our reflected operators

    def __init__(self, data, requires_grad: bool = False, backend: Backend | None = None):
        self.data = data
        self.requires_grad = requires_grad
        self.grad = None
        self._node = None
        self._backend = backend if backend is not None else backend_of_array(data)

    # -- properties ---------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    @property
    def grad_fn(self):
        return self._node

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __repr__(self):
        arr = np.array2string(self.numpy(), separator=", ", prefix="tensor(")
        extra = f", dtype={self.dtype}" if self.dtype != _dtype.float32 else ""
        if self._backend.name != "cpu":
            extra += f", backend={self._backend.name!r}"
        if self._node is not None:
            extra += f", grad_fn={self._node.name}"
        elif self.requires_grad:
            extra += ", requires_grad=True"
        return f"tensor({arr}{extra})"

    __hash__ = object.__hash__

    def __bool__(self):
        if self.size != 1:
            raise RuntimeError(
                f"the truth value of a tensor with {self.size} elements is ambiguous; "
                "use .any() or .all()")
        return bool(self.item())

    # -- conversion -------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """A NumPy array (a copy off the device; on the CPU it shares memory)."""
        return self._backend.to_numpy(self.data)

    def item(self):
        d = self.data
        if d.size != 1:
            raise ValueError(f"item() needs a tensor with one element, this one has shape {d.shape}")
        return d.item()  # of a 1-element array of any shape; on a device, one host read

    def tolist(self):
        return self.numpy().tolist()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)

    def __dlpack__(self, *args, **kwargs):
        return self.data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self.data.__dlpack_device__()

    def to(self, target) -> "Tensor":
        """This tensor on backend ``target`` ('cpu', 'cuda', or a dtype name to cast).

        Differentiable: gradients flow back to the source backend.
        """
        if isinstance(target, str) and target.lower() in ("cpu", "cuda", "auto"):
            dst = backend_for(target)
            if dst is self._backend:
                return self
            from .ops.shape import ToBackend
            return ToBackend.apply(self, dst=dst)
        if isinstance(target, Backend):
            return self.to(target.name)
        return self.astype(target)

    def cpu(self):
        return self.to("cpu")

    def astype(self, dtype) -> "Tensor":
        from .ops.arith import Cast
        return Cast.apply(self, dtype=_dtype.as_dtype(dtype))

    def detach(self) -> "Tensor":
        """Same data, cut from the graph."""
        return Tensor(self.data, False, self._backend)

    def requires_grad_(self, flag: bool = True) -> "Tensor":
        if not self.is_leaf:
            raise RuntimeError("requires_grad_ can only change leaf tensors")
        if flag and not _dtype.is_float(self.dtype):
            raise RuntimeError(f"only floating-point tensors can require gradients, not {self.dtype}")
        self.requires_grad = flag
        return self

    # -- autograd ---------------------------------------------------------------------
    def backward(self, grad=None, retain_graph: bool = False):
        """Accumulate d(self)/d(leaf) * grad into every leaf's ``.grad``."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad "
                               "and has no grad_fn")
        if grad is None:
            d = self.data
            if d.size != 1:
                raise RuntimeError(
                    f"backward() of a non-scalar tensor (shape {d.shape}) needs a gradient "
                    "argument of the same shape")
            g = self._backend.xp.empty(d.shape, d.dtype)  # empty + fill: a third of ones()
            g.fill(1)
        else:
            g = grad.data if isinstance(grad, Tensor) else self._backend.asarray(grad, dtype=self.dtype)
            if g.shape != self.shape:
                raise RuntimeError(f"backward(): gradient of shape {g.shape} for a tensor of shape {self.shape}")
        _autograd.run_backward(self, g, retain_graph)

    # An optimizer's flat arena may hand a leaf the view its gradient should live in;
    # the first gradient after ``grad = None`` is then copied there (no allocation).
    _grad_buffer = None

    def _accumulate_grad(self, g, owned=False):
        """Add ``g`` into ``self.grad`` (a leaf). The first gradient is copied unless
        ``owned`` (the engine saw that nothing else holds or views ``g``): a backward may
        hand the same array to several inputs, or keep it."""
        if g.dtype != self.data.dtype:
            g, owned = g.astype(self.data.dtype), True
        if self.grad is None:
            buf = self._grad_buffer
            if g is buf:  # a backward computed it in place (Function.leaf_grad_out)
                self.grad = Tensor(buf, False, self._backend)
            elif buf is not None and buf.shape == g.shape and buf.dtype == g.dtype:
                buf[...] = g
                self.grad = Tensor(buf, False, self._backend)
            else:
                self.grad = Tensor(g if owned else g.copy(), False, self._backend)
        else:
            self.grad.data += g

    def zero_grad(self):
        self.grad = None

    # -- in-place writes -----------------------------------------------------------------
    # Every write into ``data`` that dlprimer makes (an optimizer step on the arena,
    # ``load_state_dict``, ``nn.init``, BatchNorm's running statistics) goes through
    # here; a backward through a graph that saved the array before the write raises
    # (autograd.note_inplace_write). ``_version`` counts the writes, as in PyTorch.
    _version = 0

    def _bump_version(self, by):
        """Record an in-place write into ``self.data`` made by ``by`` (e.g. 'Adam.step()',
        or a tuple ``(format, *args)`` formatted only for an error message)."""
        self._version += 1
        _autograd.note_inplace_write(self.data, by)


def _to_array(data, dtype, backend: Backend):
    """Turn ``data`` into an array of ``backend`` following dlprimer's dtype rules."""
    dtype = _dtype.as_dtype(dtype)
    if isinstance(data, Tensor):
        arr = data.data
        if data._backend is not backend:
            arr = backend.asarray(data.numpy())
        return arr if dtype is None or arr.dtype == dtype else arr.astype(dtype)
    if backend.is_array(data) or isinstance(data, np.ndarray) or hasattr(data, "__cuda_array_interface__"):
        if not backend.is_array(data):
            data = backend.asarray(data if isinstance(data, np.ndarray) else backend_of_array(data).to_numpy(data))
        if dtype is not None and data.dtype != dtype:
            data = data.astype(dtype)
        return data
    if isinstance(data, (list, tuple, numbers.Number, np.generic)):
        if dtype is None:
            try:
                dtype = _dtype.infer_dtype(data)
            except ValueError as e:
                raise ValueError(f"tensor(): cannot make a tensor from {type(data).__name__} data: {e}") from None
        try:
            arr = np.asarray(data, dtype=dtype)
        except (ValueError, TypeError) as e:
            raise ValueError(f"tensor(): cannot make a {dtype} tensor from this data: {e}") from None
        return backend.asarray(arr)
    raise TypeError(f"tensor(): unsupported data type {type(data).__name__}")


def tensor(data, dtype=None, requires_grad: bool = False, backend=None) -> Tensor:
    """A new leaf tensor from Python data, a NumPy/CuPy array or another Tensor."""
    b = backend_for(backend)
    arr = _to_array(data, dtype, b)
    if isinstance(data, Tensor) and arr is data.data:
        arr = arr.copy()
    t = Tensor(arr, False, b)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _shape(shape) -> tuple:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    try:
        return tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be integers, got {shape!r}") from None


def _filled(fill, shape, dtype, requires_grad, backend):
    b = backend_for(backend)
    dt = _dtype.as_dtype(dtype) or _dtype.DEFAULT_FLOAT
    shape = _shape(shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    arr = fill(b.xp, shape, dt)
    t = Tensor(arr, False, b)
    return t.requires_grad_(True) if requires_grad else t


def zeros(*shape, dtype="float32", requires_grad=False, backend=None) -> Tensor:
    return _filled(lambda xp, s, d: xp.zeros(s, dtype=d), shape, dtype, requires_grad, backend)


def ones(*shape, dtype="float32", requires_grad=False, backend=None) -> Tensor:
    return _filled(lambda xp, s, d: xp.ones(s, dtype=d), shape, dtype, requires_grad, backend)


def empty(*shape, dtype="float32", requires_grad=False, backend=None) -> Tensor:
    return _filled(lambda xp, s, d: xp.empty(s, dtype=d), shape, dtype, requires_grad, backend)


def full(shape, fill_value, dtype="float32", requires_grad=False, backend=None) -> Tensor:
    if not isinstance(shape, (tuple, list)):
        shape = (shape,)
    return _filled(lambda xp, s, d: xp.full(s, fill_value, dtype=d), shape, dtype, requires_grad, backend)


def zeros_like(t: Tensor, dtype=None, requires_grad=False) -> Tensor:
    return zeros(t.shape, dtype=dtype or t.dtype, requires_grad=requires_grad, backend=t.backend)


def ones_like(t: Tensor, dtype=None, requires_grad=False) -> Tensor:
    return ones(t.shape, dtype=dtype or t.dtype, requires_grad=requires_grad, backend=t.backend)


def randn(*shape, dtype="float32", requires_grad=False, backend=None) -> Tensor:
    """Standard-normal samples from the backend's seeded stream."""
    return _filled(lambda xp, s, d: _random(backend, "randn", s, d), shape, dtype, requires_grad, backend)


def rand(*shape, dtype="float32", requires_grad=False, backend=None) -> Tensor:
    """Uniform [0, 1) samples from the backend's seeded stream."""
    return _filled(lambda xp, s, d: _random(backend, "rand", s, d), shape, dtype, requires_grad, backend)


def _random(backend, kind, shape, dtype):
    b = backend_for(backend)
    if dtype.kind != "f":
        raise ValueError(f"{kind}() makes floating-point tensors, not {dtype}")
    if dtype == _dtype.float16:
        return getattr(b, kind)(shape, _dtype.float32).astype(dtype)
    return getattr(b, kind)(shape, dtype)


def arange(start, stop=None, step=1, dtype=None, requires_grad=False, backend=None) -> Tensor:
    if stop is None:
        start, stop = 0, start
    if dtype is None:
        dtype = _dtype.int64 if all(isinstance(v, numbers.Integral) for v in (start, stop, step)) else _dtype.float32
    b = backend_for(backend)
    t = Tensor(b.xp.arange(start, stop, step, dtype=_dtype.as_dtype(dtype)), False, b)
    return t.requires_grad_(True) if requires_grad else t


def from_numpy(a: np.ndarray, backend=None) -> Tensor:
    """Wrap a NumPy array; zero-copy on the CPU backend."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"from_numpy() expects a numpy.ndarray, got {type(a).__name__}")
    b = backend_for(backend if backend is not None else "cpu")
    _dtype.as_dtype(a.dtype)
    return Tensor(b.asarray(a), False, b)  # np.asarray: zero-copy on the CPU


def from_dlpack(obj) -> Tensor:
    """Zero-copy import of any DLPack producer (NumPy, CuPy, PyTorch, ...)."""
    dev_type = obj.__dlpack_device__()[0] if hasattr(obj, "__dlpack_device__") else 1
    b = backend_for("cpu" if int(dev_type) in (1, 3) else "cuda")
    arr = b.from_dlpack(obj)
    return Tensor(arr, False, b)


def manual_seed(seed: int):
    """Seed the random streams of every backend, including ones created later."""
    from .backend import seed_all
    seed_all(seed)


from . import autograd as _autograd  # noqa: E402  (autograd imports Tensor from here)
