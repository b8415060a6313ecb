"""Build and call the host compilation of the CUDA kernels' math (not a test module).

``build(tmpdir)`` compiles ``kernel_host_driver.cpp`` with the kernel headers from
the installed package into a shared library and returns a :class:`HostMath`
whose methods take and return NumPy arrays, looping as the kernels do.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from dlprimer.backend import _kernels

DRIVER = Path(__file__).with_name("kernel_host_driver.cpp")
ACTS = ("relu", "leaky_relu", "elu", "gelu_erf", "gelu_tanh", "silu", "sigmoid", "tanh")
CXXFLAGS = ("-std=c++17", "-O2", "-shared", "-fPIC", "-fno-fast-math", "-ffp-contract=off",
            "-Wall", "-Wextra", "-Werror")


def find_compiler() -> str | None:
    for cand in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def build(tmpdir: Path) -> "HostMath":
    cxx = find_compiler()
    if cxx is None:
        raise FileNotFoundError("no host C++ compiler (c++, g++, clang++ or $CXX)")
    lib = Path(tmpdir) / "libdlp_kernel_host.so"
    cmd = [cxx, *CXXFLAGS, f"-I{_kernels.KERNEL_DIR}", str(DRIVER), "-o", str(lib)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"host compilation of the kernel headers failed:\n{' '.join(cmd)}\n"
                           f"{res.stdout}{res.stderr}")
    return HostMath(ctypes.CDLL(str(lib)))


def _ptr(a):
    return None if a is None else a.ctypes.data_as(ctypes.c_void_p)


def packed_head(*arrays):
    """The ``head`` CUDABackend._head passes a packed kernel: elements before the first
    16-byte boundary, or -1 when the arrays' offsets from a boundary differ or they are
    not float32 (only float is packed)."""
    item = arrays[0].itemsize
    mis = {a.ctypes.data % 16 for a in arrays}
    if item != 4 or len(mis) != 1:
        return -1
    m = mis.pop()
    return -1 if m % item else (16 - m) % 16 // item


class HostMath:
    """Typed wrappers over the driver; arrays are float32 or float64, C-contiguous."""

    def __init__(self, lib):
        self.lib = lib
        i64, u64, f32, f64, p = (ctypes.c_int64, ctypes.c_uint64, ctypes.c_float,
                                 ctypes.c_double, ctypes.c_void_p)
        for sfx, t in (("f32", f32), ("f64", f64)):
            sig = {
                "act_fwd": [ctypes.c_int, p, p, i64, t, i64],
                "act_bwd": [ctypes.c_int, p, p, p, i64, t, i64],
                "bias_gelu_fwd": [p, p, p, i64, i64, ctypes.c_int],
                "bias_gelu_bwd": [p, p, p, p, p, i64, i64, i64, ctypes.c_int, ctypes.c_int],
                "dropout_apply": [p, p, i64, u64, u64, f32, t],
                "sce_fwd": [p, p, i64, i64, t, t, p, p],
                "sce_bwd": [p, p, p, p, i64, i64, t, t],
                "sgd": [p, p, p, i64, t, t, t, t, ctypes.c_int, ctypes.c_int],
                "adam": [p, p, p, p, i64, t, t, t, t, t, t, t, ctypes.c_int, i64],
                "lamb": [p, p, p, p, p, i64, p, f64, t, t, t, t, t, t, t],
                "lars": [p, p, p, p, i64, p, t, t, t, f64, f64],
                "norm": [p, i64, f64, ctypes.c_int],
                "classifier_fwd": [p, p, i64, i64, t, t, p, p],
                "classifier_bwd": [p, p, p, p, p, i64, i64, t, t],
            }
            for name, argtypes in sig.items():
                fn = getattr(lib, f"{name}_{sfx}")
                fn.argtypes = argtypes
                fn.restype = f64 if name == "norm" else None
        for sfx in ("f16", "bf16"):
            for name, argtypes in {
                    "to_float": [p, p, i64], "from_float": [p, p, i64],
                    "act_fwd": [ctypes.c_int, p, p, i64, f32],
                    "act_bwd": [ctypes.c_int, p, p, p, i64, f32],
                    "classifier_fwd": [p, p, i64, i64, f32, f32, p, p],
                    "classifier_bwd": [p, p, p, p, p, i64, i64, f32, f32],
                    "bias_gelu_fwd": [p, p, p, i64, i64, ctypes.c_int],
                    "bias_gelu_bwd": [p, p, p, p, p, i64, i64, i64, ctypes.c_int, ctypes.c_int],
                    "dropout_apply": [p, p, i64, u64, u64, f32, f32]}.items():
                fn = getattr(lib, f"{name}_{sfx}")
                fn.argtypes = argtypes
                fn.restype = None
        lib.splitmix64_hash_all.argtypes = [u64, u64, p, i64]
        lib.counter_uniform_all.argtypes = [u64, u64, p, i64]
        lib.dropout_keep_all.argtypes = [u64, u64, f32, p, i64]
        lib.packed_visits_f32.argtypes = [i64, i64, p]
        lib.clip_coef.argtypes = [f64, f64, f64]
        lib.clip_coef.restype = f64
        lib.is_finite_f32.argtypes = [f32]
        lib.quiet_nan_f64.restype = f64
        lib.quiet_nan_f32.restype = f32

    def _fn(self, name, dtype):
        sfx = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16"}
        return getattr(self.lib, f"{name}_{sfx[np.dtype(dtype).name]}")

    # -- half precision (kernels/half.cuh) ---------------------------------------------------
    def to_float(self, h):
        """The float each half value loads as (to_acc)."""
        h = self._arr(h)
        out = np.empty(h.shape, np.float32)
        self._fn("to_float", h.dtype)(_ptr(h), _ptr(out), h.size)
        return out

    def from_float(self, x, dtype):
        """float32 values rounded to ``dtype`` as the kernels' store does (from_acc)."""
        x = self._arr(x, np.float32)
        out = np.empty(x.shape, dtype)
        self._fn("from_float", dtype)(_ptr(x), _ptr(out), x.size)
        return out

    def act_forward_half(self, name, x, a=0.0):
        x = self._arr(x)
        y = np.empty_like(x)
        self._fn("act_fwd", x.dtype)(ACTS.index(name), _ptr(x), _ptr(y), x.size, a)
        return y

    def act_backward_half(self, name, xy, gy, a=0.0):
        xy, gy = self._arr(xy), self._arr(gy, xy.dtype)
        gx = np.empty_like(xy)
        self._fn("act_bwd", xy.dtype)(ACTS.index(name), _ptr(xy), _ptr(gy), _ptr(gx), xy.size, a)
        return gx

    def classifier_forward_half(self, logits, target, label_smoothing=0.0):
        x, t = self._arr(logits), self._arr(target, np.int64)
        rows, c = x.shape
        loss, stats = np.empty(rows, np.float32), np.empty((rows, 2), np.float32)
        self._fn("classifier_fwd", x.dtype)(_ptr(x), _ptr(t), rows, c, 1.0 - label_smoothing,
                                            label_smoothing, _ptr(loss), _ptr(stats))
        return loss, stats

    def classifier_backward_half(self, logits, stats, target, gy, label_smoothing=0.0):
        x = self._arr(logits)
        st, t = self._arr(stats, np.float32), self._arr(target, np.int64)
        gy = self._arr(gy, np.float32)
        rows, c = x.shape
        gx = np.empty_like(x)
        self._fn("classifier_bwd", x.dtype)(_ptr(x), _ptr(st), _ptr(t), _ptr(gy), _ptr(gx), rows,
                                            c, 1.0 - label_smoothing, label_smoothing / c)
        return gx

    @staticmethod
    def _arr(a, dtype=None):
        return np.ascontiguousarray(a, dtype=dtype)

    # -- activations -------------------------------------------------------------------
    def act_forward(self, name, x, a=0.0):
        x = self._arr(x)
        y = np.empty_like(x)
        self._fn("act_fwd", x.dtype)(ACTS.index(name), _ptr(x), _ptr(y), x.size, a,
                                     packed_head(x, y))
        return y

    def act_backward(self, name, xy, gy, a=0.0):
        xy, gy = self._arr(xy), self._arr(gy, xy.dtype)
        gx = np.empty_like(xy)
        self._fn("act_bwd", xy.dtype)(ACTS.index(name), _ptr(xy), _ptr(gy), _ptr(gx), xy.size, a,
                                      packed_head(xy, gy, gx))
        return gx

    @staticmethod
    def _acc(dtype):
        """The math type of a kernel over ``dtype`` (half.cuh's acc_t)."""
        half = np.dtype(dtype).name in _kernels.HALF_CTYPES
        return np.dtype(np.float32) if half else np.dtype(dtype)

    def bias_gelu_forward(self, x, b, approximate="none"):
        """A half ``x`` takes its bias in float32, as the kernel's acc_t<T> bias."""
        x = self._arr(x)
        b = self._arr(b, self._acc(x.dtype))
        y = np.empty_like(x)
        self._fn("bias_gelu_fwd", x.dtype)(_ptr(x), _ptr(b), _ptr(y), x.size, b.size,
                                           int(approximate == "tanh"))
        return y

    def bias_gelu_backward(self, x, b, gy, approximate="none", rows_per_chunk=None, warps=8):
        """gx and gb as the kernel makes them: per-chunk column partials (float32 for a
        half ``x``), then their sum."""
        x, gy = self._arr(x), self._arr(gy, x.dtype)
        b = self._arr(b, self._acc(x.dtype))
        gx = np.empty_like(x)
        rows = x.size // b.size
        per = rows_per_chunk or max(1, -(-rows // 3))
        partial = np.full((-(-rows // per), b.size), np.nan, b.dtype)
        self._fn("bias_gelu_bwd", x.dtype)(_ptr(x), _ptr(b), _ptr(gy), _ptr(gx), _ptr(partial),
                                           rows, b.size, per, int(approximate == "tanh"), warps)
        return gx, partial.sum(axis=0)

    # -- random / dropout --------------------------------------------------------------
    def splitmix64_hash(self, key, n):
        out = np.empty(n, np.uint64)
        self.lib.splitmix64_hash_all(key[0] % 2**64, key[1] % 2**64, _ptr(out), n)
        return out

    def counter_uniform(self, key, n):
        out = np.empty(n, np.float32)
        self.lib.counter_uniform_all(key[0] % 2**64, key[1] % 2**64, _ptr(out), n)
        return out

    def dropout_keep(self, shape, p, key):
        out = np.empty(shape, np.uint8)
        self.lib.dropout_keep_all(key[0] % 2**64, key[1] % 2**64, p, _ptr(out), out.size)
        return out.astype(bool)

    def dropout_apply(self, x, p, key):
        x = self._arr(x)
        y = np.empty_like(x)
        self._fn("dropout_apply", x.dtype)(_ptr(x), _ptr(y), x.size, key[0] % 2**64,
                                           key[1] % 2**64, p, self._acc(x.dtype).type(
                                               1.0 / (1.0 - p)))
        return y

    # -- softmax cross-entropy ----------------------------------------------------------
    def sce_forward(self, logits, target, label_smoothing=0.0):
        x = self._arr(logits)
        t = self._arr(target, np.int64)
        rows, c = x.shape
        loss = np.empty(rows, x.dtype)
        probs = np.empty_like(x)
        T = x.dtype.type
        self._fn("sce_fwd", x.dtype)(_ptr(x), _ptr(t), rows, c, T(1.0 - label_smoothing),
                                     T(label_smoothing), _ptr(loss), _ptr(probs))
        return loss, probs

    def sce_backward(self, probs, target, gy, label_smoothing=0.0):
        probs = self._arr(probs)
        t, gy = self._arr(target, np.int64), self._arr(gy, probs.dtype)
        rows, c = probs.shape
        gx = np.empty_like(probs)
        T = probs.dtype.type
        self._fn("sce_bwd", probs.dtype)(_ptr(probs), _ptr(t), _ptr(gy), _ptr(gx), rows, c,
                                         T(1.0 - label_smoothing), T(label_smoothing / c))
        return gx

    # -- optimizers (in place, like the Backend methods) ---------------------------------
    def sgd_update(self, param, grad, buf, lr, momentum=0.0, dampening=0.0, nesterov=False,
                   weight_decay=0.0, first_step=False):
        T = param.dtype.type
        self._fn("sgd", param.dtype)(_ptr(param), _ptr(grad), _ptr(buf if momentum else None),
                                     param.size, T(lr),
                                     T(momentum), T(1.0 - dampening), T(weight_decay),
                                     int(nesterov), int(first_step))

    def adam_update(self, param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step,
                    decoupled=False):
        T = param.dtype.type
        bc1, bc2_sqrt = 1.0 - beta1 ** step, (1.0 - beta2 ** step) ** 0.5
        self._fn("adam", param.dtype)(
            _ptr(param), _ptr(grad), _ptr(m), _ptr(v), param.size, T(1.0 - beta1), T(beta2),
            T(1.0 - beta2), T(eps * bc2_sqrt), T(weight_decay), T(1.0 - lr * weight_decay),
            T(-lr * bc2_sqrt / bc1), int(decoupled), packed_head(param, grad, m, v))

    def lamb_update(self, param, grad, m, v, offsets, lr, beta1, beta2, eps, weight_decay, step):
        T = param.dtype.type
        off = np.asarray(offsets, np.int64)
        sums = np.zeros(2 * (off.size - 1))
        self._fn("lamb", param.dtype)(
            _ptr(param), _ptr(grad), _ptr(m), _ptr(v), _ptr(off), off.size - 1, _ptr(sums),
            float(lr), T(1.0 - beta1), T(beta2), T(1.0 - beta2), T(1.0 / (1.0 - beta1 ** step)),
            T(1.0 / (1.0 - beta2 ** step) ** 0.5), T(eps), T(weight_decay))

    def lars_update(self, param, grad, buf, offsets, lr, momentum, weight_decay,
                    trust_coefficient, eps=1e-9):
        T = param.dtype.type
        off = np.asarray(offsets, np.int64)
        sums = np.zeros(2 * (off.size - 1))
        self._fn("lars", param.dtype)(
            _ptr(param), _ptr(grad), _ptr(buf if momentum else None), _ptr(off), off.size - 1, _ptr(sums), T(lr),
            T(momentum), T(weight_decay), float(trust_coefficient), float(eps))

    def norm(self, x, norm_type=2.0):
        x = self._arr(x)
        inf = norm_type == float("inf")
        return self._fn("norm", x.dtype)(_ptr(x), x.size, 0.0 if inf else float(norm_type),
                                         int(inf))

    def packed_visits(self, n, head):
        count = np.zeros(n, np.int32)
        self.lib.packed_visits_f32(n, head, _ptr(count))
        return count

    def clip_coef(self, total, ord, max_norm):
        return self.lib.clip_coef(total, ord, max_norm)

    def is_finite(self, x):
        return bool(self.lib.is_finite_f32(x))

    # -- the fused classifier (online softmax) ---------------------------------------------
    def classifier_forward(self, logits, target, label_smoothing=0.0):
        x, t = self._arr(logits), self._arr(target, np.int64)
        rows, c = x.shape
        loss, stats = np.empty(rows, x.dtype), np.empty((rows, 2), x.dtype)
        T = x.dtype.type
        self._fn("classifier_fwd", x.dtype)(_ptr(x), _ptr(t), rows, c, T(1.0 - label_smoothing),
                                            T(label_smoothing), _ptr(loss), _ptr(stats))
        return loss, stats

    def classifier_backward(self, logits, stats, target, gy, label_smoothing=0.0):
        x = self._arr(logits)
        st, t, gy = self._arr(stats, x.dtype), self._arr(target, np.int64), self._arr(gy, x.dtype)
        rows, c = x.shape
        gx = np.empty_like(x)
        T = x.dtype.type
        self._fn("classifier_bwd", x.dtype)(_ptr(x), _ptr(st), _ptr(t), _ptr(gy), _ptr(gx), rows,
                                            c, T(1.0 - label_smoothing), T(label_smoothing / c))
        return gx
