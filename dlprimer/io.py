"""Model files: ``dp.save(state_dict, path)`` and ``dp.load(path)`` in safetensors.

safetensors stores a JSON header (names, dtypes, shapes, byte ranges) and the raw
bytes; reading it executes nothing, unlike pickle, which is used nowhere here.
Writes go to a temporary file in the same directory that is then renamed over
``path``, so a crash never leaves a half-written model file. Every failure to
read names the file and what is wrong with it.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict

import numpy as np
import safetensors
import safetensors.numpy

from .backend import backend_for
from .tensor import Tensor

__all__ = ["save", "load", "ModelFileError", "LoadedStateDict"]

_ORDER_KEY = "dlprimer.keys"
_SUPPORTED = {"bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
              "float16", "float32", "float64"}


class ModelFileError(ValueError):
    """A model file is missing, truncated, malformed or not a safetensors file."""


class LoadedStateDict(OrderedDict):
    """The dict :func:`load` returns: name -> Tensor, plus ``source`` (the file) and
    ``metadata`` (the file's string metadata). ``Module.load_state_dict`` names
    ``source`` in its errors."""

    source: str | None = None
    metadata: dict | None = None


def _host_array(name, value, path):
    if isinstance(value, Tensor):
        arr = value.numpy()
    elif isinstance(value, np.ndarray):
        arr = value
    else:
        raise TypeError(f"save({path}): value of {name!r} is a {type(value).__name__}, "
                        "not a Tensor or a NumPy array")
    if arr.dtype.name not in _SUPPORTED:
        raise TypeError(f"save({path}): {name!r} has dtype {arr.dtype}, which safetensors "
                        f"cannot store (supported: {', '.join(sorted(_SUPPORTED))})")
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def save(state_dict, path, metadata: dict | None = None):
    """Write ``state_dict`` (name -> Tensor or NumPy array) to ``path`` as safetensors.

    ``metadata`` is an optional dict of strings stored in the header. The key order
    is kept, so :func:`load` returns the names in the order they were saved.
    """
    path = os.fspath(path)
    if not hasattr(state_dict, "items"):
        raise TypeError(f"save({path}): expected a mapping of names to tensors, "
                        f"got {type(state_dict).__name__}")
    arrays = {}
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise TypeError(f"save({path}): names must be strings, got {name!r}")
        arrays[name] = _host_array(name, value, path)
    meta = {}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"save({path}): metadata must map strings to strings, got {k!r}: {v!r}")
        meta[k] = v
    meta[_ORDER_KEY] = json.dumps(list(arrays))
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"save({path}): directory {directory} does not exist")
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        safetensors.numpy.save_file(arrays, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load(path, backend=None) -> LoadedStateDict:
    """Read a safetensors file into an ordered dict of Tensors on ``backend``
    (default: the current backend).

    Raises FileNotFoundError for a missing file and :class:`ModelFileError` naming
    the file for anything unreadable (truncated, malformed header, not safetensors).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load: no such model file: {path}")
    if os.path.isdir(path):
        raise ModelFileError(f"load: {path} is a directory, not a safetensors model file")
    b = backend_for(backend)
    try:
        with safetensors.safe_open(path, framework="numpy") as f:
            meta = dict(f.metadata() or {})
            names = list(f.keys())
            arrays = {k: f.get_tensor(k) for k in names}
    except safetensors.SafetensorError as e:
        size = os.path.getsize(path)
        raise ModelFileError(f"load: {path} ({size} bytes) is not a readable safetensors "
                             f"file: {e}") from None
    except (OSError, ValueError, TypeError) as e:
        raise ModelFileError(f"load: cannot read {path}: {type(e).__name__}: {e}") from None
    order = names
    try:
        saved = json.loads(meta.get(_ORDER_KEY, "null"))
        if isinstance(saved, list) and sorted(saved) == sorted(names):
            order = saved
    except ValueError:
        pass
    meta.pop(_ORDER_KEY, None)
    out = LoadedStateDict()
    for k in order:
        arr = arrays[k]
        out[k] = Tensor(b.asarray(arr), False, b)
    out.source = path
    out.metadata = meta
    return out
