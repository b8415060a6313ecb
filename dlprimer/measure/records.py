"""Measurement records as plain JSON values (what ``--json`` files hold)."""
from __future__ import annotations

import math


def to_json(o):
    """``o`` with NumPy scalars as Python numbers, tuples as lists, dict keys as strings,
    records (anything with ``to_dict``) as dicts, and NaN/inf as None."""
    import numpy as np
    if hasattr(o, "to_dict") and callable(o.to_dict):
        return to_json(o.to_dict())
    if isinstance(o, dict):
        return {str(k): to_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [to_json(v) for v in o]
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, (np.floating, float)):
        return float(o) if math.isfinite(float(o)) else None
    if isinstance(o, np.integer):
        return int(o)
    return o
