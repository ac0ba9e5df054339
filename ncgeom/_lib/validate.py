"""Shared input checks. Every message names the argument and shows the bad value."""

from __future__ import annotations

import math
import numbers
from types import ModuleType
from typing import Any

import numpy as np

from .backend import is_host_data, to_host

__all__ = [
    "check_batch",
    "check_bias_decay",
    "check_columns",
    "check_counts",
    "check_device",
    "check_features",
    "check_float_dtype",
    "check_integer",
    "check_labels",
    "check_nonnegative",
    "check_num_classes",
    "check_positive",
    "check_positive_int",
    "check_real",
    "check_weight_decay",
]

Array = Any


_NO_MINIMISER = (
    "without weight decay on both the classifier and the features the UFM+ objective has "
    "no minimiser: growing the unpenalised factor while shrinking the other drives it "
    "towards its infimum 0, never reached"
)


def _require(ok: bool, name: str, condition: str, shown: str) -> None:
    """Raise the ValueError "`name` must be `condition`; got `shown`" unless `ok`."""
    if not ok:
        msg = f"`{name}` must be {condition}; got {shown}"
        raise ValueError(msg)


def check_integer(value: Any, name: str) -> int:
    """An integer (Python or NumPy; not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        msg = f"`{name}` must be an integer; got {value!r}"
        raise TypeError(msg)
    return int(value)


def check_positive_int(value: Any, name: str) -> int:
    """An integer >= 1."""
    number = check_integer(value, name)
    _require(number >= 1, name, "a positive integer", str(number))
    return number


def check_num_classes(num_classes: Any, name: str = "num_classes") -> int:
    """`num_classes` must be an integer >= 2."""
    number = check_integer(num_classes, name)
    _require(number >= 2, name, "at least 2", str(number))
    return number


def check_real(value: Any, name: str) -> float:
    """A finite real number (not a bool or a string)."""
    if isinstance(value, (bool, str, bytes)):
        msg = f"`{name}` must be a real number; got {value!r}"
        raise TypeError(msg)
    try:
        number = float(value)
    except (TypeError, ValueError):
        msg = f"`{name}` must be a real number; got {value!r}"
        raise TypeError(msg) from None
    _require(math.isfinite(number), name, "finite", repr(value))
    return number


def check_bias_decay(lambda_b: Any, has_bias: bool, how: str) -> float:
    """`lambda_b` >= 0, and 0 unless there is a bias (`how` says how to add one)."""
    number = check_nonnegative(lambda_b, "lambda_b")
    if not has_bias and number != 0.0:
        msg = f"`lambda_b` acts on a bias; {how} or leave `lambda_b` at 0; got {lambda_b!r}"
        raise ValueError(msg)
    return number


def check_nonnegative(value: Any, name: str) -> float:
    """A finite real number >= 0."""
    number = check_real(value, name)
    _require(number >= 0, name, ">= 0", repr(value))
    return number


def check_positive(value: Any, name: str, *, reason: str = "") -> float:
    """A finite real number > 0; `reason`, if given, ends the message for one <= 0."""
    number = check_real(value, name)
    _require(number > 0, name, "> 0", repr(value) + (f": {reason}" if reason else ""))
    return number


def check_weight_decay(value: Any, name: str) -> float:
    """Weight decay of the UFM+ minimisation: > 0, else there is no minimiser."""
    return check_positive(value, name, reason=_NO_MINIMISER)


def check_features(
    features: Array, xp: ModuleType, name: str = "features", rows: str = "samples"
) -> None:
    """2-D (`rows`, dim) with a real floating dtype."""
    if features.ndim != 2:
        msg = f"`{name}` must be 2-D ({rows}, dim); got shape {tuple(features.shape)}"
        raise ValueError(msg)
    if not xp.isdtype(features.dtype, "real floating"):
        msg = f"`{name}` must have a real floating dtype; got {features.dtype}"
        raise TypeError(msg)


def check_labels(labels: Array, num_rows: int, xp: ModuleType, name: str = "labels") -> None:
    """1-D integers, one per feature row (the range is checked in `check_batch`)."""
    if labels.ndim != 1:
        msg = f"`{name}` must be 1-D; got shape {tuple(labels.shape)}"
        raise ValueError(msg)
    try:
        integral = xp.isdtype(labels.dtype, "integral")
    except (TypeError, ValueError, AttributeError):  # strings, objects, foreign dtypes
        integral = False
    if not integral:
        msg = f"`{name}` must have an integer dtype; got {labels.dtype}"
        raise TypeError(msg)
    if labels.shape[0] != num_rows:
        msg = (
            f"`{name}` must have one entry per row of `features` ({num_rows}); "
            f"got {labels.shape[0]}"
        )
        raise ValueError(msg)


def check_columns(x: Array, name: str, dim: int, like: str, rows: str = "rows") -> None:
    """2-D with `dim` columns, as many as the array named `like`."""
    if x.ndim != 2 or x.shape[1] != dim:
        msg = (
            f"`{name}` must have shape ({rows}, {dim}), as many columns as `{like}`; "
            f"got {tuple(x.shape)}"
        )
        raise ValueError(msg)


def check_batch(
    features: Array,
    labels: Array,
    num_classes: int,
    xp: ModuleType,
    *,
    check_finite: bool = True,
    first_row: int = 0,
) -> Array:
    """Shapes, dtypes, label range and (optionally) finiteness of one batch.

    Labels of any integer dtype are accepted (signed or unsigned, 8 to 64
    bits). The value checks cost one device-to-host transfer of three
    integers; the locations of bad entries are only looked up when a check
    fails. Rows in messages are counted from `first_row` (the batch's first
    row in a larger array).

    Returns
    -------
    array
        `labels` as int64 on the same namespace and device: the object itself
        when it already is int64, otherwise a converted copy.
    """
    check_features(features, xp)
    check_labels(labels, features.shape[0], xp)
    index = labels if labels.dtype == xp.int64 else xp.astype(labels, xp.int64)
    if features.shape[0] == 0:
        return index
    # uint64 labels >= 2**63 wrap to negative int64 values: the low end finds them.
    parts = [xp.min(index), xp.max(index)]
    if check_finite:
        # NaN and Inf survive a row sum, so one cheap reduction finds every bad
        # row; a sum that overflows is only a suspect, confirmed below.
        suspect = xp.logical_not(xp.isfinite(xp.sum(features, axis=1)))
        parts.append(xp.sum(xp.astype(suspect, xp.int64)))
    low, high, *rest = (int(v) for v in to_host(xp.stack(parts)))
    if low < 0 or high >= num_classes:
        _raise_label_range(labels, index, low, high, num_classes, xp, first_row)
    if rest and rest[0]:
        bad_rows = xp.logical_not(xp.all(xp.isfinite(features), axis=1))
        count = int(to_host(xp.sum(xp.astype(bad_rows, xp.int64))))
        if count:
            row = _first_row(bad_rows, xp) + first_row
            msg = (
                f"`features` must be finite; {count} row(s) hold NaN or Inf, the first is "
                f"row {row} (pass check_finite=False to skip this scan)"
            )
            raise ValueError(msg)
    return index


def _raise_label_range(
    labels: Array,
    index: Array,
    low: int,
    high: int,
    num_classes: int,
    xp: ModuleType,
    first_row: int = 0,
) -> None:
    """The ValueError for labels outside [0, num_classes), with the exact bad value."""
    if low < 0 and not xp.isdtype(labels.dtype, "signed integer"):
        # An unsigned label >= 2**63 wrapped in int64: read its exact value.
        row = _first_row(index < 0, xp)
        value = int(to_host(labels[row]))
        msg = f"`labels` must lie in [0, {num_classes}); got {value} at row {row + first_row}"
        raise ValueError(msg)
    bad = high if high >= num_classes else low
    where = "max" if high >= num_classes else "min"
    row = _first_row(index == bad, xp) + first_row
    msg = f"`labels` must lie in [0, {num_classes}); got {where} {bad} at row {row}"
    raise ValueError(msg)


def _first_row(mask: Array, xp: ModuleType) -> int:
    return int(to_host(xp.argmax(xp.astype(mask, xp.int32))))


#: Largest count and largest total count: int64 holds them without wrapping.
MAX_COUNT = 2**63 - 1


def check_counts(counts: Any) -> np.ndarray:
    """Class counts as a host int64 vector: positive integers, at least two classes.

    Accepts sequences (Python integers of any size are checked exactly),
    NumPy arrays of any integer or floating dtype and arrays of any array-API
    library (one host transfer). Every count and their total must be at most
    ``2**63 - 1``, so that totals computed in int64 never wrap. A
    non-numeric value is a TypeError; a wrong shape or value a ValueError.
    """
    if isinstance(counts, (str, bytes)):
        msg = f"`counts` must be a sequence of positive integers; got {counts!r}"
        raise TypeError(msg)
    try:
        host = np.asarray(counts) if is_host_data(counts) else to_host(counts)
    except (TypeError, ValueError, OverflowError) as err:
        msg = f"`counts` must be a sequence of positive integers; got {_short(counts)}"
        raise TypeError(msg) from err
    if host.dtype == np.object_:
        host = _integers_from_objects(host, counts)
    if host.dtype == np.bool_ or not (
        np.issubdtype(host.dtype, np.integer) or np.issubdtype(host.dtype, np.floating)
    ):
        msg = f"`counts` must hold integers; got dtype {host.dtype} from {_short(counts)}"
        raise TypeError(msg)
    if host.ndim != 1:
        msg = f"`counts` must be 1-D (one count per class); got shape {host.shape}"
        raise ValueError(msg)
    if host.shape[0] < 2:
        msg = f"`counts` must describe at least 2 classes; got {host.shape[0]}"
        raise ValueError(msg)
    if np.issubdtype(host.dtype, np.floating):
        whole = np.isfinite(host) & (host == np.round(host))
        if not whole.all():
            i = int(np.flatnonzero(~whole)[0])
            msg = f"`counts` must be positive integers; got {host[i].item()!r} at index {i}"
            raise ValueError(msg)
        too_big = host >= 2.0**63
    elif host.dtype == np.uint64:
        too_big = host > np.uint64(MAX_COUNT)
    else:
        too_big = np.zeros(host.shape, dtype=bool)
    if too_big.any():
        i = int(np.flatnonzero(too_big)[0])
        msg = (
            f"`counts` must be at most 2**63 - 1 = {MAX_COUNT}; got {host[i].item()!r} "
            f"at index {i}"
        )
        raise ValueError(msg)
    if (host < 1).any():
        i = int(np.flatnonzero(host < 1)[0])
        msg = f"`counts` must be positive integers (>= 1); got {host[i].item()!r} at index {i}"
        raise ValueError(msg)
    exact = host.astype(np.int64)
    # The total in Python integers: int64 sums of large counts would wrap.
    total = sum(int(v) for v in exact.tolist()) if exact.max() > MAX_COUNT // exact.size else 0
    if total > MAX_COUNT:
        msg = f"`counts` must sum to at most 2**63 - 1 = {MAX_COUNT}; got a total of {total}"
        raise ValueError(msg)
    return exact


def _integers_from_objects(host: np.ndarray, counts: Any) -> np.ndarray:
    """Python integers too large for int64 (NumPy stores them as objects): checked exactly."""
    flat = host.reshape(-1).tolist()
    if host.ndim != 1 or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in flat
    ):
        msg = f"`counts` must hold integers; got dtype object from {_short(counts)}"
        raise TypeError(msg)
    for i, value in enumerate(flat):
        if not 1 <= value <= MAX_COUNT:
            condition = "at most 2**63 - 1 = " + str(MAX_COUNT) if value > 0 else ">= 1"
            msg = f"`counts` must be positive integers ({condition}); got {value} at index {i}"
            raise ValueError(msg)
    return np.asarray(flat, dtype=np.int64)


def _short(value: Any, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters (messages stay one readable line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_float_dtype(dtype: Any, xp: ModuleType) -> Any:
    """`dtype` if it is a real floating dtype of `xp`; float64 for None; else TypeError."""
    if dtype is None:
        return xp.float64
    try:
        floating = xp.isdtype(dtype, "real floating")
    except (TypeError, ValueError, AttributeError):
        floating = False
    if not floating:
        msg = f"`dtype` must be a real floating dtype of {xp.__name__}; got {dtype!r}"
        raise TypeError(msg)
    return dtype


def check_device(xp: ModuleType, device: Any, dtype: Any = None) -> None:
    """A device `xp` can allocate on (one element), else a ValueError naming `device`."""
    if device is None:
        return
    try:
        xp.zeros((1,), dtype=dtype, device=device)
    except Exception as error:  # each library has its own exception for a bad device
        text = str(error).strip()
        first = text.splitlines()[0] if text else type(error).__name__
        msg = f"`device` must be a device of {xp.__name__} usable here; got {device!r} ({first})"
        raise ValueError(msg) from None
