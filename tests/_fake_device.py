"""A second backend for tests without a GPU: NumPy memory posing as device memory.

``FakeDevice`` is registered as backend ``"cuda"`` (:func:`installed`). Its arrays
are :class:`DeviceArray` (a NumPy subclass) and its ``xp`` refuses plain NumPy
arrays, the way CuPy refuses NumPy arrays, so code that mixes the arrays of two
backends fails here as it would on a GPU. Turning a device array into a Python
number (``float``, ``int``, ``bool``, ``.item()``) or a NumPy array
(``to_numpy``) counts as a host synchronisation in ``DeviceArray.syncs``; reductions and integer
indexing give 0-d device arrays (as CuPy does), not NumPy scalars that would hide one.
"""
import contextlib
import functools

import numpy as np

import dlprimer.backend as backend_mod
from dlprimer.backend.base import Backend
from dlprimer.backend.cpu import CPUBackend


class DeviceArray(np.ndarray):
    syncs = 0

    def _sync(self):
        DeviceArray.syncs += 1
        return self.view(np.ndarray)

    def __float__(self):
        return float(self._sync())

    def __int__(self):
        return int(self._sync())

    def __index__(self):
        return self._sync().__index__()

    def __bool__(self):
        return bool(self._sync())

    def item(self, *args):
        return self._sync().item(*args)

    def tolist(self):
        return self._sync().tolist()

    # A full reduction or an integer index returns a 0-d device array, as CuPy does,
    # never a NumPy scalar: turning it into a Python number then counts as a sync.
    def __array_wrap__(self, arr, context=None, return_scalar=False):
        return np.asarray(arr).view(DeviceArray)

    def __getitem__(self, key):
        return _on_device(super().__getitem__(key))

    @property
    def base(self):
        """None for a device array over a whole host buffer only it sees (as a fresh CuPy
        array), else the array it views."""
        b = np.ndarray.base.__get__(self)
        if (type(b) is np.ndarray and b.base is None and b.nbytes == self.nbytes
                and b.ctypes.data == self.ctypes.data):
            return None
        return b


def _on_device(a):
    if type(a) is np.ndarray:
        return a.view(DeviceArray)
    if isinstance(a, np.generic):
        return np.asarray(a).view(DeviceArray)
    return a


#: set while a fused op runs: what it does inside (host blocks, xp calls on them) stands for
#: one device kernel, so it is not checked for host arrays
_INSIDE_OP = [False]


def _check(args):
    if _INSIDE_OP[0]:
        return
    for a in args:
        if type(a) is np.ndarray:
            raise TypeError("the fake device backend got a NumPy (host) array; "
                            "CuPy refuses implicit conversion the same way")
        if isinstance(a, (list, tuple)):
            _check(a)


class StrictXP:
    """NumPy whose functions take only device arrays (and scalars) and return device arrays."""

    def __getattr__(self, name):
        f = getattr(np, name)
        if not callable(f) or isinstance(f, type):
            return f

        @functools.wraps(f)
        def call(*args, **kwargs):
            _check(args)
            _check(kwargs.values())
            out = f(*args, **kwargs)
            return tuple(map(_on_device, out)) if isinstance(out, tuple) else _on_device(out)
        return call


_FUSED = [n for n, f in vars(Backend).items() if callable(f) and n.endswith(
    ("_forward", "_backward", "_update", "_keep"))]


class FakeDevice(CPUBackend):
    name = "cuda"
    xp = StrictXP()
    device_queue = True  # checks in a step become device flags, as on CUDA
    fused_classifier = True  # cross-entropy saves lse only, as on CUDA
    class_range = Backend.class_range   # a device's one-transfer check, not the CPU's shortcut

    def __init__(self):
        super().__init__()
        for n in _FUSED:  # the CPU's fused ops, checked and returning device arrays
            if n in vars(FakeDevice):
                continue
            setattr(self, n, self._device_op(getattr(CPUBackend, n)))

    def softmax_cross_entropy_forward(self, logits, target, label_smoothing=0.0):
        """As the CUDA kernel: a target outside [0, C) gives its row a NaN loss (no raise:
        the range check is a deferred device flag)."""
        _check((logits, target))
        t = np.asarray(target)
        bad = (t < 0) | (t >= logits.shape[1])
        loss, probs = CPUBackend.softmax_cross_entropy_forward(
            self, np.asarray(logits), np.where(bad, 0, t), label_smoothing)
        loss[bad] = np.nan
        return _on_device(loss), _on_device(probs)

    def _device_op(self, f):
        def op(*args, **kwargs):
            if _INSIDE_OP[0]:   # a fused op running others on its own host blocks, as
                return f(self, *args, **kwargs)   # backend/half.py does (one kernel on CUDA)
            _check(args)
            _INSIDE_OP[0] = True
            try:
                out = f(self, *args, **kwargs)
            finally:
                _INSIDE_OP[0] = False
            return tuple(map(_on_device, out)) if isinstance(out, tuple) else _on_device(out)
        return op

    def asarray(self, data, dtype=None):
        if isinstance(data, DeviceArray) and (dtype is None or data.dtype == dtype):
            return data
        return np.array(data, dtype=dtype).view(DeviceArray)

    def to_numpy(self, a):
        if isinstance(a, DeviceArray):
            return np.array(a._sync())
        return np.asarray(a)

    def is_array(self, a):
        return isinstance(a, DeviceArray)

    def randn(self, shape, dtype, key=None):
        return _on_device(super().randn(shape, dtype, key))

    def rand(self, shape, dtype, key=None):
        return _on_device(super().rand(shape, dtype, key))


@contextlib.contextmanager
def installed(monkeypatch, make_lazily=False):
    """Register a FakeDevice as backend "cuda" (created by ``backend_for`` on first
    use when ``make_lazily``); yields the instance, or None when lazy."""
    monkeypatch.setattr(backend_mod, "_instances", dict(backend_mod._instances))
    monkeypatch.setattr(backend_mod, "_current", backend_mod._current)
    monkeypatch.setattr(CPUBackend, "is_array", lambda self, a: type(a) is np.ndarray)
    real_make = backend_mod._make
    monkeypatch.setattr(backend_mod, "_make",
                        lambda name: FakeDevice() if name == "cuda" else real_make(name))
    if make_lazily:
        backend_mod._instances.pop("cuda", None)
        yield None
    else:
        dev = backend_mod._instances["cuda"] = FakeDevice()
        yield dev
