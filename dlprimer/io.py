"""Model files: ``dp.save(state_dict, path)`` and ``dp.load(path)`` in safetensors.

safetensors stores a JSON header (names, dtypes, shapes, byte ranges) and the raw
bytes; reading it executes nothing, unlike pickle, which is used nowhere here.
Writes go to a temporary file in the same directory that is then renamed over
``path``, so a crash never leaves a half-written model file; the file gets the
mode a plain ``open(path, "w")`` would give it (the user's umask), and errors name
``path``, never the temporary file. Every failure to read names the file and what
is wrong with it; only regular files are opened (a FIFO would block forever).
"""
from __future__ import annotations

import json
import os
import stat
import tempfile
from collections import OrderedDict

import numpy as np
import safetensors
import safetensors.numpy

from .backend import backend_for
from .tensor import Tensor

__all__ = ["save", "load", "ModelFileError", "LoadedStateDict"]

_ORDER_KEY = "dlprimer.keys"
_RESERVED_PREFIX = "dlprimer."      # metadata keys dlprimer writes itself
_RESERVED_NAME = "__metadata__"     # the safetensors header's own metadata field
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

    ``metadata`` is an optional dict of strings stored in the header; keys starting
    with ``dlprimer.`` are reserved. The key order is kept, so :func:`load` returns
    the names in the order they were saved. The name ``__metadata__`` is refused
    (safetensors keeps its header's metadata under it).
    """
    path = os.fspath(path)
    if not hasattr(state_dict, "items"):
        raise TypeError(f"save({path}): expected a mapping of names to tensors, "
                        f"got {type(state_dict).__name__}")
    arrays = {}
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise TypeError(f"save({path}): names must be strings, got {name!r}")
        if name == _RESERVED_NAME:
            raise ValueError(f"save({path}): the name {name!r} is reserved by the safetensors "
                             "format for the header's metadata; rename that entry")
        arrays[name] = _host_array(name, value, path)
    meta = {}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"save({path}): metadata must map strings to strings, got {k!r}: {v!r}")
        if k.startswith(_RESERVED_PREFIX):
            raise ValueError(f"save({path}): metadata key {k!r} is reserved (keys starting "
                             f"with {_RESERVED_PREFIX!r} are dlprimer's own); use another name")
        meta[k] = v
    meta[_ORDER_KEY] = json.dumps(list(arrays))
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"save({path}): directory {directory} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"save({path}): {path} is a directory")
    _write_atomically(path, directory, lambda tmp: safetensors.numpy.save_file(arrays, tmp, metadata=meta))


def _file_mode(path):
    """The mode ``path`` keeps (when it exists) or would get from open(): 0o666 & ~umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mask = os.umask(0o022)
        os.umask(mask)
        return 0o666 & ~mask


def _write_atomically(path, directory, write):
    """``write(tmp)`` into a temporary file of ``directory``, then rename it over ``path``.
    Errors name ``path`` (the temporary name means nothing to the user)."""
    mode = _file_mode(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".dlprimer-", suffix=".tmp", dir=directory)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as e:
        why = e.strerror or str(e).replace(str(tmp), path)
        msg = f"save({path}): cannot write the file: {why}"
        raise (type(e)(e.errno, msg) if e.errno is not None else type(e)(msg)) from None
    except safetensors.SafetensorError as e:
        raise ModelFileError(f"save({path}): cannot write the file: "
                             f"{str(e).replace(str(tmp), path)}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
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
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ModelFileError(f"load: {path} is not a regular file (a FIFO, socket or device); "
                             "a safetensors model file must be a regular file")
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
