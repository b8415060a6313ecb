"""Training checkpoints: atomic, checksummed, pickle-free.

A checkpoint is one safetensors file. Every array (parameters, optimizer
moments, RNG key tables) is a tensor in it; everything else (step, learning
rates, the data loader's position, RNG counters) is JSON in the header's
metadata, where arrays appear as references ``{"__array__": name}``. Nothing is
pickled, so loading a checkpoint cannot run code.

Integrity: the metadata carries a SHA-256 over the canonical header (without
the checksum itself) and the data section; :func:`load_checkpoint` recomputes it
and raises :class:`CheckpointError` naming the file when they differ.

Atomicity (:func:`atomic_write`): the bytes go to a temporary file in the same
directory, which is fsync'ed, then ``os.replace``'d over the target, then the
directory is fsync'ed so the rename itself survives a power cut. A process
killed at any moment leaves either the old file or the new one, never a mix; at
worst a stale ``.*.tmp-*`` file, which :class:`CheckpointManager` removes.

What a training checkpoint holds (so a resumed run equals the uninterrupted one
bit for bit on the CPU): model and optimizer state, the scheduler, the step,
every backend's random stream (seed, counter), NumPy's and Python's global
generators, the data loader's (seed, epoch, position), and any ``extra`` state
the training loop keeps (running sums, early-stopping counters).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import re
import secrets
import time
import warnings

import numpy as np

FORMAT = "dlprimer-checkpoint"
VERSION = 1
_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupted or of the wrong kind."""


# -- atomic file writes ----------------------------------------------------------------
def _write_all(fd: int, data) -> None:
    """Write ``data`` to ``fd`` in 1 MiB chunks (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view[:_CHUNK])
        view = view[n:]


def fsync_dir(directory: str) -> None:
    """fsync a directory so a rename inside it is durable (no-op where unsupported)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, data) -> None:
    """Replace ``path`` with ``data`` (bytes) atomically and durably.

    temp file in the same directory -> write -> fsync -> os.replace -> fsync(dir).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path!r}: directory {directory!r} does not exist")
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)


# -- encoding nested state (dicts, lists, arrays) into JSON + named arrays ---------------
def _is_marker_key(k) -> bool:
    return isinstance(k, str) and k.startswith("__") and k.endswith("__")


class _Encoder:
    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def array(self, a, path):
        from ..backend import backend_of_array
        host = np.ascontiguousarray(backend_of_array(a).to_numpy(a))
        if host.dtype.kind not in "biuf":
            raise TypeError(f"checkpoint: cannot store an array of dtype {host.dtype} at {path}")
        key = path
        i = 1
        while key in self.arrays:
            key = f"{path}#{i}"
            i += 1
        self.arrays[key] = host
        return key

    def encode(self, obj, path):
        from ..tensor import Tensor
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, (int, float)) and not isinstance(obj, np.generic):
            return obj
        if isinstance(obj, Tensor):
            return {"__tensor__": self.array(obj.data, path)}
        if isinstance(obj, np.generic):
            if obj.dtype.kind not in "biuf":
                raise TypeError(f"checkpoint: cannot store a {obj.dtype} scalar at {path}")
            return {"__np__": obj.dtype.str, "v": obj.item()}
        if isinstance(obj, np.ndarray) or hasattr(obj, "__cuda_array_interface__"):
            return {"__array__": self.array(obj, path)}
        if isinstance(obj, tuple):
            return {"__tuple__": [self.encode(v, f"{path}/{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [self.encode(v, f"{path}/{i}") for i, v in enumerate(obj)]
        if isinstance(obj, dict):
            if all(isinstance(k, str) and not _is_marker_key(k) for k in obj):
                return {k: self.encode(v, f"{path}/{k}") for k, v in obj.items()}
            return {"__dict__": [[self.encode(k, f"{path}/<key>"), self.encode(v, f"{path}/{k}")]
                                 for k, v in obj.items()]}
        raise TypeError(f"checkpoint: cannot store a {type(obj).__name__} at {path or '/'} "
                        "(only arrays, tensors, numbers, strings, lists, tuples and dicts)")


def _decode(obj, arrays, backend=None):
    """Inverse of _Encoder.encode; arrays go to ``backend`` (None: NumPy)."""
    from ..tensor import Tensor
    if isinstance(obj, list):
        return [_decode(v, arrays, backend) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj or "__array__" in obj:
        key = obj.get("__tensor__", obj.get("__array__"))
        try:
            a = arrays[key]
        except KeyError:
            raise CheckpointError(f"checkpoint refers to array {key!r}, which it does not hold") from None
        if backend is not None:
            a = backend.asarray(a)  # no copy on the CPU
        if "__tensor__" in obj:
            from ..backend import backend_for
            return Tensor(a, False, backend if backend is not None else backend_for("cpu"))
        return a
    if "__np__" in obj:
        return np.dtype(obj["__np__"]).type(obj["v"])
    if "__tuple__" in obj:
        return tuple(_decode(v, arrays, backend) for v in obj["__tuple__"])
    if "__dict__" in obj:
        return {_freeze(_decode(k, arrays, backend)): _decode(v, arrays, backend)
                for k, v in obj["__dict__"]}
    return {k: _decode(v, arrays, backend) for k, v in obj.items()}


def _freeze(k):
    return tuple(k) if isinstance(k, list) else k


# -- the file format ---------------------------------------------------------------------
def _header(buf: bytes, path: str):
    if len(buf) < 8:
        raise CheckpointError(f"checkpoint {path!r} is truncated ({len(buf)} bytes)")
    n = int.from_bytes(buf[:8], "little")
    if n <= 0 or 8 + n > len(buf):
        raise CheckpointError(f"checkpoint {path!r} is truncated or not a safetensors file "
                              f"(header length {n}, file length {len(buf)})")
    try:
        header = json.loads(buf[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path!r} has a corrupted header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"checkpoint {path!r} has a corrupted header")
    return header, 8 + n


def _digest(header: dict, data: bytes) -> str:
    h = dict(header)
    meta = dict(h.get("__metadata__") or {})
    meta.pop("sha256", None)
    h["__metadata__"] = meta
    d = hashlib.sha256(json.dumps(h, sort_keys=True, separators=(",", ":")).encode())
    d.update(data)
    return d.hexdigest()


def encode_checkpoint(state: dict) -> bytes:
    """Serialise a nested ``state`` (dicts, lists, arrays, numbers) to checkpoint bytes."""
    import safetensors.numpy as stn
    enc = _Encoder()
    tree = enc.encode(state, "")
    meta = {"format": FORMAT, "version": str(VERSION), "state": json.dumps(tree)}
    raw = stn.save(enc.arrays, metadata=meta)
    header, start = _header(raw, "<memory>")
    meta["sha256"] = _digest(header, memoryview(raw)[start:])
    return stn.save(enc.arrays, metadata=meta)


def decode_checkpoint(buf: bytes, path: str = "<bytes>", backend=None) -> dict:
    """Verify and parse checkpoint bytes; raises :class:`CheckpointError` when corrupted."""
    import safetensors.numpy as stn
    header, start = _header(buf, path)
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a dlprimer training checkpoint "
                              f"(format {meta.get('format')!r}); model files load with dp.load")
    if int(meta.get("version", "0")) > VERSION:
        raise CheckpointError(f"checkpoint {path!r} has format version {meta.get('version')}, "
                              f"newer than this dlprimer reads ({VERSION})")
    try:
        need = max((int(v["data_offsets"][1]) for k, v in header.items()
                    if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v),
                   default=0)
    except (TypeError, ValueError, KeyError, IndexError):
        raise CheckpointError(f"checkpoint {path!r} has a corrupted header (bad data offsets)") from None
    if len(buf) - start < need:
        raise CheckpointError(f"checkpoint {path!r} is truncated: its header describes {need} "
                              f"bytes of data, the file holds {len(buf) - start}")
    want = meta.get("sha256")
    got = _digest(header, memoryview(buf)[start:])
    if want != got:
        raise CheckpointError(f"checkpoint {path!r} is corrupted: checksum mismatch "
                              f"(stored {str(want)[:12]}..., computed {got[:12]}...)")
    try:
        arrays = stn.load(bytes(buf))
        tree = json.loads(meta["state"])
    except Exception as e:
        raise CheckpointError(f"checkpoint {path!r} cannot be parsed ({type(e).__name__}: {e})") from None
    return _decode(tree, arrays, backend)


def read_checkpoint(path, backend=None) -> dict:
    """The verified contents of a checkpoint file as a nested dict (arrays as NumPy)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            buf = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path!r} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {path!r} is a directory; pass a checkpoint file "
                              "(or use CheckpointManager(directory).latest())") from None
    return decode_checkpoint(buf, path, backend)


# -- random state ----------------------------------------------------------------------
def rng_state() -> dict:
    """Every random stream dlprimer and its loaders draw from."""
    from .. import backend as _b
    return {
        "backends": {name: b.get_rng_state() for name, b in _b.live_backends().items()},
        "global_seed": _b.global_seed(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    from .. import backend as _b
    if state.get("global_seed") is not None:
        _b.set_global_seed(state["global_seed"])
    for name, s in state.get("backends", {}).items():
        if name == "cuda" and not _b.cuda_available():
            continue
        _b.backend_for(name).set_rng_state(s)
    if "numpy" in state:
        np.random.set_state(tuple(state["numpy"]))
    if "python" in state:
        v, internal, gauss = state["python"]
        random.setstate((v, tuple(internal), gauss))


# -- public API --------------------------------------------------------------------------
def _state_of(obj, what):
    if obj is None:
        return None
    fn = getattr(obj, "state_dict", None)
    if fn is None:
        raise TypeError(f"save_checkpoint: {what} has no state_dict() ({type(obj).__name__})")
    return fn()


def _model_backend(model):
    try:
        for p in model.parameters():
            return p.backend
    except Exception:
        pass
    return None


def save_checkpoint(path, model=None, optimizer=None, scheduler=None, step: int | None = None,
                    loader=None, extra: dict | None = None, rng: bool = True,
                    run_id: str | None = None) -> str:
    """Write a training checkpoint to ``path`` atomically; returns the path.

    model / optimizer / scheduler / loader: anything with ``state_dict()``.
    step: the number of optimizer steps taken. extra: more state (JSON-able values
    and arrays). rng: save every random stream (backends, NumPy, Python). run_id: the
    training run the checkpoint belongs to (:class:`CheckpointManager`).
    """
    state = {
        "step": None if step is None else int(step),
        "run_id": run_id,
        "model": _state_of(model, "model"),
        "optimizer": _state_of(optimizer, "optimizer"),
        "scheduler": _state_of(scheduler, "scheduler"),
        "loader": _state_of(loader, "loader"),
        "rng": rng_state() if rng else None,
        "extra": extra,
        "time": time.time(),
        "types": {k: type(o).__name__ for k, o in (("optimizer", optimizer),
                                                    ("scheduler", scheduler)) if o is not None},
    }
    from .. import __version__
    state["dlprimer_version"] = __version__
    atomic_write(path, encode_checkpoint(state))
    return os.fspath(path)


def load_checkpoint(path, model=None, optimizer=None, scheduler=None, loader=None,
                    restore_rng: bool = True, strict: bool = True) -> dict:
    """Verify ``path`` and load its state into the objects given; returns the state.

    The returned dict has ``step``, ``extra`` and the raw parts (``model``,
    ``optimizer``, ...). Arrays go to the model's backend. Raises
    :class:`CheckpointError` for a missing or corrupted file or a part the file lacks.
    """
    backend = _model_backend(model) if model is not None else None
    state = read_checkpoint(path, backend=backend)
    for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler")):
        saved = (state.get("types") or {}).get(key)
        if obj is not None and saved is not None and saved != type(obj).__name__:
            raise CheckpointError(f"checkpoint {os.fspath(path)!r} holds {key} state of a "
                                  f"{saved}, not of a {type(obj).__name__}; resume with the "
                                  f"same {key}")
    for obj, key in ((model, "model"), (optimizer, "optimizer"), (scheduler, "scheduler"),
                     (loader, "loader")):
        if obj is None:
            continue
        part = state.get(key)
        if part is None:
            raise CheckpointError(f"checkpoint {os.fspath(path)!r} holds no {key} state")
        if key == "model":
            obj.load_state_dict(part, strict=strict)
        else:
            obj.load_state_dict(part)
    if restore_rng and state.get("rng"):
        set_rng_state(state["rng"])
    return state


class CheckpointWarning(RuntimeWarning):
    """A checkpoint was unusable and was moved aside (one readable line each)."""


class CheckpointManager:
    """The checkpoints of training runs in one directory.

    Each run has an id (8 hex digits, new for every fresh run; a resumed run keeps the
    id of the checkpoint it resumed from); its checkpoints are named
    ``ckpt-<run>-<step>.safetensors`` and hold the id too (``state["run_id"]``).
    Files from before run ids (``ckpt-<step>.safetensors``) belong to run "".

    ``save(step, ...)`` writes atomically, then prunes the *current run's* checkpoints
    to the newest ``keep`` (other runs' files are never touched, and the one just
    written, the run's newest good checkpoint, is never deleted). ``latest()``
    returns the most recently written checkpoint that verifies, whatever its run;
    a file that does not verify is renamed ``<name>.corrupt`` (so it no longer
    counts) with one :class:`CheckpointWarning`, and the one before is tried.
    """

    PATTERN = re.compile(r"^ckpt-(?:(?P<run>[0-9a-f]{8})-)?(?P<step>\d+)\.safetensors$")

    def __init__(self, directory, keep: int = 3, run_id: str | None = None):
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be >= 1 (or None for all), got {keep}")
        if run_id is not None and not re.fullmatch(r"[0-9a-f]{8}|", run_id):
            raise ValueError(f"run_id must be 8 hex digits, got {run_id!r}")
        self.directory = os.fspath(directory)
        self.keep = keep
        self.run_id = secrets.token_hex(4) if run_id is None else run_id
        self.moved_aside: list[str] = []
        os.makedirs(self.directory, exist_ok=True)

    def path_for(self, step: int, run_id: str | None = None) -> str:
        run = self.run_id if run_id is None else run_id
        name = f"ckpt-{run}-{int(step):08d}" if run else f"ckpt-{int(step):08d}"
        return os.path.join(self.directory, name + ".safetensors")

    def all_checkpoints(self) -> list[tuple[str, int, str]]:
        """(run id, step, path) of every checkpoint file, oldest written first."""
        out = []
        for name in os.listdir(self.directory):
            m = self.PATTERN.match(name)
            if m:
                path = os.path.join(self.directory, name)
                try:
                    mtime = os.stat(path).st_mtime_ns
                except FileNotFoundError:
                    continue
                out.append((mtime, int(m.group("step")), m.group("run") or "", path))
        return [(run, step, path) for _, step, run, path in sorted(out)]

    def checkpoints(self, run_id: str | None = None) -> list[tuple[int, str]]:
        """(step, path) of one run's checkpoint files (default: this run's), by step."""
        run = self.run_id if run_id is None else run_id
        return sorted((step, path) for r, step, path in self.all_checkpoints() if r == run)

    def clean_temporaries(self):
        """Remove temp files left by writes that were killed."""
        for p in glob.glob(os.path.join(self.directory, ".ckpt-*.tmp-*")):
            try:
                pid = int(os.path.basename(p).split(".tmp-")[1].split("-")[0])
            except (IndexError, ValueError):
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                try:
                    os.unlink(p)
                except OSError:
                    pass

    def save(self, step: int, **objects) -> str:
        path = save_checkpoint(self.path_for(step), step=step, run_id=self.run_id, **objects)
        if self.keep is not None:
            for _, old in self.checkpoints()[:-self.keep]:
                if old != path:
                    try:
                        os.unlink(old)
                    except OSError:
                        pass
        return path

    def move_aside(self, path: str, error: Exception) -> str:
        """Rename an unusable checkpoint to ``<name>.corrupt`` and warn in one line."""
        aside = path + ".corrupt"
        i = 1
        while os.path.exists(aside):
            aside, i = f"{path}.corrupt{i}", i + 1
        try:
            os.replace(path, aside)
        except OSError:
            aside = None
        self.moved_aside.append(path)
        where = f"moved it aside to {os.path.basename(aside)}" if aside else "could not move it aside"
        warnings.warn(f"{error}; {where} and tried the checkpoint before it", CheckpointWarning,
                      stacklevel=3)
        return aside

    def latest(self) -> str | None:
        """The most recently written checkpoint that verifies (any run), or None."""
        for _, _, path in reversed(self.all_checkpoints()):
            try:
                read_checkpoint(path)
                return path
            except CheckpointError as e:
                self.move_aside(path, e)
        return None

    def adopt(self, path: str) -> None:
        """Continue the run that wrote ``path`` (its id names the next checkpoints)."""
        m = self.PATTERN.match(os.path.basename(os.fspath(path)))
        if m and os.path.dirname(os.path.abspath(path)) == os.path.abspath(self.directory):
            self.run_id = m.group("run") or ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
