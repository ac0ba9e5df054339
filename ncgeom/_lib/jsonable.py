"""Turn results into strict JSON: NaN and infinities become null."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["jsonable"]


def jsonable(value: Any) -> Any:
    """A copy of `value` that `json.dumps` writes as strict JSON.

    Non-finite floats become None, tuples become lists, mapping keys become
    strings, and NumPy scalars and arrays become Python numbers and lists.

    Examples
    --------
    >>> jsonable({"a": float("nan"), "b": (1.0, float("inf")), 2: np.float32(0.5)})
    {'a': None, 'b': [1.0, None], '2': 0.5}
    """
    if isinstance(value, (np.generic, np.ndarray)):
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    return value
