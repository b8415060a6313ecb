"""Module: the base class of layers and models (PyTorch's ``nn.Module`` semantics).

Assigning a :class:`Parameter` or a Module as an attribute registers it;
``register_buffer`` registers a Tensor that is state but not trained (BatchNorm's
running statistics). ``state_dict`` holds parameters and buffers under dotted
names; ``load_state_dict`` checks every name, shape and dtype first and only then
copies, in place, so a failed load leaves the model untouched and views held
elsewhere (an optimizer's flat arena) stay valid.

Forward hooks (``register_forward_pre_hook``, ``register_forward_hook``) run
around ``forward`` on every call; the profiler times each layer through them.
"""
from __future__ import annotations

import itertools
from collections import OrderedDict, namedtuple

import numpy as np

from .. import _dtype
from ..backend import Backend, backend_for
from ..tensor import Tensor
from .parameter import Parameter

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class StateDictError(RuntimeError):
    """A state dict does not fit a module (names, shapes or dtypes); nothing was changed."""


class RemovableHandle:
    """Returned by the ``register_*_hook`` methods; ``remove()`` detaches the hook."""

    _ids = itertools.count()

    def __init__(self, hooks: dict):
        self._hooks = hooks
        self.id = next(self._ids)

    def remove(self):
        self._hooks.pop(self.id, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False


class Module:
    """Base class for all layers; subclasses define ``forward``."""

    training: bool

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_pre_hooks", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())
        object.__setattr__(self, "training", True)

    # -- registration ------------------------------------------------------------------
    def _registries(self):
        try:
            return self.__dict__["_parameters"], self.__dict__["_buffers"], self.__dict__["_modules"]
        except KeyError:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                               "before assigning attributes") from None

    def __setattr__(self, name, value):
        params, buffers, modules = self._registries()
        if isinstance(value, Parameter):
            buffers.pop(name, None)
            modules.pop(name, None)
            self.__dict__.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None)
            buffers.pop(name, None)
            self.__dict__.pop(name, None)
            modules[name] = value
        elif name in params or name in modules or name in buffers:
            reg, need = ((params, "a Parameter") if name in params else
                         (modules, "a Module") if name in modules else (buffers, "a Tensor"))
            ok = value is None or (reg is buffers and isinstance(value, Tensor))
            if not ok:
                raise TypeError(f"cannot assign {type(value).__name__} to {name!r} of "
                                f"{type(self).__name__} ({need} or None is required)")
            reg[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        d = self.__dict__
        for reg in ("_parameters", "_buffers", "_modules"):
            r = d.get(reg)
            if r is not None and name in r:
                return r[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for reg in ("_parameters", "_buffers", "_modules"):
            r = self.__dict__[reg]
            if name in r:
                del r[name]
                return
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Parameter | None):
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter({name!r}): expected a Parameter or None, "
                            f"got {type(param).__name__}")
        self._check_name(name)
        self.__dict__["_parameters"][name] = param

    def register_buffer(self, name: str, tensor: Tensor | None):
        """Register state that is saved and moved with the module but not trained."""
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"register_buffer({name!r}): expected a Tensor or None, "
                            f"got {type(tensor).__name__}")
        self._check_name(name)
        self.__dict__.pop(name, None)
        self.__dict__["_buffers"][name] = tensor

    def add_module(self, name: str, module: "Module | None"):
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module({name!r}): expected a Module, got {type(module).__name__}")
        self._check_name(name)
        self.__dict__["_modules"][name] = module

    @staticmethod
    def _check_name(name):
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"invalid attribute name {name!r} (a non-empty string without '.')")

    # -- calling ------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        if not (self._forward_pre_hooks or self._forward_hooks):  # the usual call: no hooks
            return self.forward(*args, **kwargs)
        if self._forward_pre_hooks:
            for hook in list(self._forward_pre_hooks.values()):
                r = hook(self, args)
                if r is not None:
                    args = r if isinstance(r, tuple) else (r,)
        out = self.forward(*args, **kwargs)
        if self._forward_hooks:
            for hook in list(self._forward_hooks.values()):
                r = hook(self, args, out)
                if r is not None:
                    out = r
        return out

    def register_forward_pre_hook(self, hook) -> RemovableHandle:
        """``hook(module, args)`` runs before ``forward``; a non-None result replaces args."""
        h = RemovableHandle(self._forward_pre_hooks)
        self._forward_pre_hooks[h.id] = hook
        return h

    def register_forward_hook(self, hook) -> RemovableHandle:
        """``hook(module, args, output)`` runs after ``forward``; a non-None result
        replaces the output."""
        h = RemovableHandle(self._forward_hooks)
        self._forward_hooks[h.id] = hook
        return h

    # -- traversal ------------------------------------------------------------------------
    def named_modules(self, prefix: str = "", memo=None):
        """(name, module) for this module and every descendant, each once."""
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is not None:
                yield from m.named_modules(f"{prefix}.{name}" if prefix else name, memo)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        seen = set()
        for name, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def _named(self, reg, prefix, recurse):
        seen = set()
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mp, m in mods:
            for name, t in getattr(m, reg).items():
                if t is None or id(t) in seen:
                    continue
                seen.add(id(t))
                yield (f"{mp}.{name}" if mp else name), t

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        """(dotted name, Parameter) pairs; a parameter shared by two layers appears once."""
        return self._named("_parameters", prefix, recurse)

    def parameters(self, recurse: bool = True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True):
        return self._named("_buffers", prefix, recurse)

    def buffers(self, recurse: bool = True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def apply(self, fn):
        """Call ``fn(module)`` on every descendant, then on this module."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # -- modes and gradients ------------------------------------------------------------------
    def train(self, mode: bool = True):
        if not isinstance(mode, bool):
            raise ValueError(f"train(mode): mode must be a bool, got {mode!r}")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, flag: bool = True):
        for p in self.parameters():
            p.requires_grad_(flag)
        return self

    def zero_grad(self, set_to_none: bool = True):
        """Clear every parameter's gradient (to None, or to zeros in place)."""
        for p in self.parameters():
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.data[...] = 0

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Total number of parameter elements (each shared parameter counted once)."""
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    # -- state ------------------------------------------------------------------------------
    def _state_items(self):
        """(name, owner module, local name, kind) for each parameter and buffer."""
        out = []
        for mp, m in self.named_modules():
            for kind in ("_parameters", "_buffers"):
                for name, t in getattr(m, kind).items():
                    if t is not None:
                        out.append((f"{mp}.{name}" if mp else name, m, name, kind))
        return out

    def state_dict(self) -> "OrderedDict[str, Tensor]":
        """Parameters and buffers by dotted name, as detached Tensors sharing their data."""
        sd = OrderedDict()
        for name, m, local, kind in self._state_items():
            sd[name] = getattr(m, kind)[local].detach()
        return sd

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy ``state_dict``'s values into this module's parameters and buffers, in place.

        Every value is checked before anything is written: a name missing from or
        unknown to the module (under ``strict``), a shape that differs, or a value of
        a non-numeric dtype raises :class:`StateDictError` listing all the problems,
        naming the file when the dict came from :func:`dlprimer.load`, and the
        module is left as it was. Values are cast to each parameter's dtype and
        moved to its backend. Returns (missing_keys, unexpected_keys).
        """
        if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
            raise TypeError(f"load_state_dict: expected a mapping of names to tensors, got "
                            f"{type(state_dict).__name__}")
        source = getattr(state_dict, "source", None)
        items = self._state_items()
        own = {name for name, *_ in items}
        given = set(state_dict.keys())
        missing = [name for name, *_ in items if name not in given]
        unexpected = sorted(k for k in given if k not in own)
        problems = []
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(map(str, unexpected)))
        staged = []
        for name, m, local, kind in items:
            if name not in given:
                continue
            target = getattr(m, kind)[local]
            value = state_dict[name]
            if isinstance(value, Tensor):
                arr = value.data if value.backend is target.backend else value.numpy()
            elif hasattr(value, "shape") and hasattr(value, "dtype"):
                arr = value
            else:
                try:
                    arr = np.asarray(value)
                except Exception:
                    problems.append(f"{name}: not an array ({type(value).__name__})")
                    continue
            if tuple(arr.shape) != tuple(target.shape):
                problems.append(f"{name}: shape {tuple(arr.shape)} in the state dict, "
                                f"{tuple(target.shape)} in the model")
                continue
            if np.dtype(arr.dtype).kind not in "biuf":
                problems.append(f"{name}: dtype {arr.dtype} is not numeric")
                continue
            if np.dtype(arr.dtype).kind == "f" and target.dtype.kind != "f":
                problems.append(f"{name}: floating-point values for a {target.dtype} buffer")
                continue
            staged.append((name, target, arr))
        if problems:
            where = f" from {source}" if source else ""
            raise StateDictError(f"load_state_dict{where} into {type(self).__name__}: "
                                 + "; ".join(problems))
        for name, target, arr in staged:
            if not target.backend.is_array(arr):
                arr = target.backend.asarray(np.asarray(arr))
            target.data[...] = arr
            target._bump_version(f"{type(self).__name__}.load_state_dict() writing {name!r}")
        return IncompatibleKeys(missing, unexpected)

    # -- devices and dtypes -------------------------------------------------------------------
    def to(self, target):
        """Move every parameter and buffer to a backend ('cpu', 'cuda', a Backend), or
        cast the floating-point ones to a dtype; returns self. Parameters stay the same
        objects (their ``.data`` and ``.grad`` are replaced)."""
        is_backend = isinstance(target, Backend) or (
            isinstance(target, str) and target.lower() in ("cpu", "cuda", "auto"))
        if is_backend:
            dst = backend_for(target)
            for t in itertools.chain(self.parameters(), self.buffers()):
                if t.backend is not dst:
                    src = t.backend
                    t.data = dst.asarray(src.to_numpy(t.data))
                    if t.grad is not None:
                        t.grad = Tensor(dst.asarray(src.to_numpy(t.grad.data)), False, dst)
                    t._backend = dst
                    # an optimizer arena's gradient slot stays on the old backend
                    t.__dict__.pop("_grad_buffer", None)
                    t.__dict__.pop("_grad_arena", None)
            return self
        dt = _dtype.as_dtype(target)
        if dt.kind != "f":
            raise ValueError(f"Module.to: can only cast to a floating-point dtype, got {dt}")
        for t in itertools.chain(self.parameters(), self.buffers()):
            if t.dtype.kind == "f" and t.dtype != dt:
                t.data = t.data.astype(dt)
                if t.grad is not None:
                    t.grad = Tensor(t.grad.data.astype(dt), False, t.backend)
        return self

    # -- printing -------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = []
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"({name}): {sub}")
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"
