"""dtype names and the rules that turn Python data into arrays.

dlprimer's dtypes are NumPy dtype objects (CuPy uses the same ones), so
``t.dtype == dp.float32`` works on either backend. ``bfloat16`` is ml_dtypes'
NumPy dtype (1 sign, 8 exponent, 7 mantissa bits: float32's range, 3 significant
digits); CuPy 14 accepts the same dtype object, so it names bfloat16 on both
backends. NumPy reports its kind as "V", so test floating point with
:func:`is_float`, never ``dtype.kind == "f"``.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

float16 = np.dtype("float16")
bfloat16 = np.dtype(ml_dtypes.bfloat16)
float32 = np.dtype("float32")
float64 = np.dtype("float64")
int8 = np.dtype("int8")
int16 = np.dtype("int16")
int32 = np.dtype("int32")
int64 = np.dtype("int64")
uint8 = np.dtype("uint8")
bool_ = np.dtype("bool")

VALID = {
    "float16": float16, "bfloat16": bfloat16, "float32": float32, "float64": float64,
    "int8": int8, "int16": int16, "int32": int32, "int64": int64, "uint8": uint8, "bool": bool_,
}
DEFAULT_FLOAT = float32
DEFAULT_INT = int64


def as_dtype(dtype) -> np.dtype | None:
    """Return the NumPy dtype for ``dtype`` (a name, a NumPy dtype, a scalar type) or None.

    Raises ValueError listing the valid names for anything else.
    """
    if dtype is None:
        return None
    if isinstance(dtype, str) and dtype in VALID:
        return VALID[dtype]
    try:
        d = np.dtype(dtype)
    except TypeError:
        d = None
    if d is None or d.name not in VALID:
        raise ValueError(
            f"unknown dtype {dtype!r}; valid dtypes are: {', '.join(VALID)}")
    return d


def infer_dtype(data) -> np.dtype:
    """The dtype dlprimer gives Python data: floats float32, ints int64, bools bool."""
    if isinstance(data, (bool, np.bool_)):
        return bool_
    if isinstance(data, int):
        return int64
    if isinstance(data, float):
        return float32
    arr = np.asarray(data)
    if arr.dtype == np.float64:
        return float32
    if arr.dtype.kind in "iu":
        return int64
    if arr.dtype.kind == "b":
        return bool_
    return as_dtype(arr.dtype)


HALF = (float16, bfloat16)


def is_float(dtype) -> bool:
    """True for float16/32/64 and bfloat16 (whose NumPy kind is "V")."""
    d = dtype if isinstance(dtype, np.dtype) else np.dtype(dtype)
    return d.kind == "f" or d == bfloat16


def is_half(dtype) -> bool:
    """True for the two 16-bit floating-point dtypes, float16 and bfloat16."""
    return np.dtype(dtype) in HALF
# -- type promotion (PyTorch's rules, float32 the default float) ----------------------
_KIND_RANK = {"b": 0, "u": 1, "i": 1, "f": 2}


def _promote_pair(a: np.dtype, b: np.dtype) -> np.dtype:
    """Two tensors' dtypes: the higher category wins (int64 with float16 gives float16,
    as in PyTorch, where NumPy gives float64); within one category, NumPy's table."""
    if a == b:
        return a
    ra, rb = _KIND_RANK.get(a.kind, 2), _KIND_RANK.get(b.kind, 2)
    if ra != rb:
        return a if ra > rb else b
    return np.promote_types(a, b)


def _scalar_dtype(x) -> np.dtype:
    if isinstance(x, (bool, np.bool_)):
        return bool_
    if isinstance(x, (int, np.integer)):
        return int64
    return DEFAULT_FLOAT


def result_type(*operands) -> np.dtype:
    """The dtype of an elementwise op over ``operands`` (tensors/arrays and Python
    numbers), as PyTorch computes it: tensors with dimensions decide; a 0-d tensor or a
    Python number only raises the category (bool < integer < float), to float32 for a
    float. So int64 + float32 is float32, an int tensor + 2.5 is float32, and a float32
    tensor + a float64 0-d tensor stays float32."""
    dim = zero = wrapped = None
    for x in operands:
        d = getattr(x, "dtype", None)
        if d is None:
            wrapped = _scalar_dtype(x) if wrapped is None else _promote_pair(wrapped, _scalar_dtype(x))
        elif getattr(x, "ndim", 0) == 0:
            zero = d if zero is None else _promote_pair(zero, d)
        else:
            dim = d if dim is None else _promote_pair(dim, d)
    return _combine(dim, _combine(zero, wrapped))


def _combine(higher, lower):
    """PyTorch's combine_categories: ``lower`` counts only when of a higher category."""
    if higher is None:
        return lower
    if lower is None or _KIND_RANK.get(lower.kind, 2) <= _KIND_RANK.get(higher.kind, 2):
        return higher
    if lower.kind == "f":
        return lower if higher.kind != "f" else higher
    return _promote_pair(higher, lower)
