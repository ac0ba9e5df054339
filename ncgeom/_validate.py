"""Shared input checks. Every message names the argument and shows the bad value."""

from __future__ import annotations

import math
import numbers
from types import ModuleType
from typing import Any

from ._array import to_host

__all__ = [
    "check_batch",
    "check_features",
    "check_labels",
    "check_num_classes",
    "check_positive",
]

Array = Any


def check_num_classes(num_classes: Any, name: str = "num_classes") -> int:
    """`num_classes` must be an integer >= 2."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        msg = f"`{name}` must be an integer; got {num_classes!r}"
        raise TypeError(msg)
    if num_classes < 2:
        msg = f"`{name}` must be at least 2; got {num_classes}"
        raise ValueError(msg)
    return int(num_classes)


def check_positive(value: Any, name: str) -> float:
    """A finite real number > 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        msg = f"`{name}` must be a real number; got {value!r}"
        raise TypeError(msg) from None
    if not math.isfinite(number) or number <= 0:
        msg = f"`{name}` must be finite and > 0; got {value!r}"
        raise ValueError(msg)
    return number


def check_features(features: Array, xp: ModuleType, name: str = "features") -> None:
    """2-D with a real floating dtype."""
    if features.ndim != 2:
        msg = f"`{name}` must be 2-D (samples, dim); got shape {tuple(features.shape)}"
        raise ValueError(msg)
    if not xp.isdtype(features.dtype, "real floating"):
        msg = f"`{name}` must have a real floating dtype; got {features.dtype}"
        raise TypeError(msg)


def check_labels(labels: Array, num_rows: int, xp: ModuleType, name: str = "labels") -> None:
    """1-D integers, one per feature row (the range is checked in `check_batch`)."""
    if labels.ndim != 1:
        msg = f"`{name}` must be 1-D; got shape {tuple(labels.shape)}"
        raise ValueError(msg)
    if not xp.isdtype(labels.dtype, "integral"):
        msg = f"`{name}` must have an integer dtype; got {labels.dtype}"
        raise TypeError(msg)
    if labels.shape[0] != num_rows:
        msg = (
            f"`{name}` must have one entry per row of `features` ({num_rows}); "
            f"got {labels.shape[0]}"
        )
        raise ValueError(msg)


def check_batch(
    features: Array,
    labels: Array,
    num_classes: int,
    xp: ModuleType,
    *,
    check_finite: bool = True,
) -> None:
    """Shapes, dtypes, label range and (optionally) finiteness of one batch.

    The value checks cost one device-to-host transfer of three integers; the
    locations of bad entries are only looked up when a check fails.
    """
    check_features(features, xp)
    check_labels(labels, features.shape[0], xp)
    if features.shape[0] == 0:
        return
    parts = [xp.astype(xp.min(labels), xp.int64), xp.astype(xp.max(labels), xp.int64)]
    if check_finite:
        # NaN and Inf survive a row sum, so one cheap reduction finds every bad
        # row; a sum that overflows is only a suspect, confirmed below.
        suspect = xp.logical_not(xp.isfinite(xp.sum(features, axis=1)))
        parts.append(xp.sum(xp.astype(suspect, xp.int64)))
    low, high, *rest = (int(v) for v in to_host(xp.stack(parts)))
    if low < 0 or high >= num_classes:
        bad = high if high >= num_classes else low
        where = "max" if high >= num_classes else "min"
        row = _first_row(labels == bad, xp)
        msg = f"`labels` must lie in [0, {num_classes}); got {where} {bad} at row {row}"
        raise ValueError(msg)
    if rest and rest[0]:
        bad_rows = xp.logical_not(xp.all(xp.isfinite(features), axis=1))
        count = int(to_host(xp.sum(xp.astype(bad_rows, xp.int64))))
        if count:
            row = _first_row(bad_rows, xp)
            msg = (
                f"`features` must be finite; {count} row(s) hold NaN or Inf, the first is "
                f"row {row} (pass check_finite=False to skip this scan)"
            )
            raise ValueError(msg)


def _first_row(mask: Array, xp: ModuleType) -> int:
    return int(to_host(xp.argmax(xp.astype(mask, xp.int32))))
