"""Every input check of ncgeom. Each message names the argument and shows the bad value.

A wrong type (a float where an integer is needed, a list where an array is)
raises `TypeError`; a wrong value, shape or range raises `ValueError`.
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
from collections.abc import Collection, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .backend import (
    array_device,
    backend_name,
    check_container,
    detach,
    index_dtype,
    is_host_data,
    like,
    namespace,
    on_host,
    quiet_invalid,
    to_host,
    wide_float,
)

#: The checks for plugins and applications, re-exported by `ncgeom.checks`; the
#: others serve ncgeom's own modules.
__all__ = [
    "check_batch",
    "check_bias_decay",
    "check_choice",
    "check_columns",
    "check_container",
    "check_counts",
    "check_device",
    "check_features",
    "check_finite",
    "check_finite_arrays",
    "check_flag",
    "check_float_dtype",
    "check_index",
    "check_instance",
    "check_int_at_least",
    "check_integer",
    "check_labels",
    "check_nonnegative",
    "check_num_classes",
    "check_output_dir",
    "check_output_file",
    "check_positive",
    "check_positive_int",
    "check_real",
    "check_seed",
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
    also_finite: dict[str, Array | None] | None = None,
) -> Array:
    """Shapes, dtypes, label range and (optionally) finiteness of one batch.

    Labels of any integer dtype are accepted (signed or unsigned, 8 to 64
    bits). The value checks cost one device-to-host transfer of a few
    integers; the locations of bad entries are only looked up when a check
    fails. Rows in messages are counted from `first_row` (the batch's first
    row in a larger array).

    Parameters
    ----------
    also_finite : dict of str to array, optional
        More arrays of the same namespace and device (a classifier, a bias)
        whose finiteness is read in the same transfer, whatever
        `check_finite` says; None values are skipped. A non-finite one raises
        the `check_finite` error naming it and its first bad entry.

    Returns
    -------
    array
        `labels` as `index_dtype` (int64; int32 on JAX without its 64-bit
        mode) on the same namespace and device: the object itself when it
        already has that dtype, otherwise a converted copy.
    """
    check_features(features, xp)
    check_labels(labels, features.shape[0], xp)
    wide = index_dtype(xp)
    index = labels if labels.dtype == wide else xp.astype(labels, wide)
    extra = {name: value for name, value in (also_finite or {}).items() if value is not None}
    if features.shape[0] == 0:
        for name, value in extra.items():
            _check_finite(value, name, xp)
        return index
    # uint64 labels >= 2**63 wrap to negative int64 values: the low end finds them.
    parts = [xp.min(index), xp.max(index)]
    parts += [xp.astype(xp.all(xp.isfinite(value)), wide) for value in extra.values()]
    if check_finite:
        # NaN and Inf survive a row sum, so one cheap reduction finds every bad
        # row; a sum that overflows is only a suspect, confirmed below.
        with quiet_invalid():  # finite rows whose sum overflows are confirmed below
            suspect = xp.logical_not(xp.isfinite(xp.sum(features, axis=1)))
        parts.append(xp.sum(xp.astype(suspect, wide)))
    low, high, *rest = (int(v) for v in to_host(xp.stack(parts)))
    if low < 0 or high >= num_classes:
        _raise_label_range(labels, index, low, high, num_classes, xp, first_row)
    for (name, value), good in zip(extra.items(), rest, strict=False):
        if not good:
            _raise_not_finite(value, name, xp)
    rest = rest[len(extra) :]
    if rest and rest[0]:
        bad_rows = xp.logical_not(xp.all(xp.isfinite(features), axis=1))
        count = int(to_host(xp.sum(xp.astype(bad_rows, wide))))
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
    check_container(counts, "counts")
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
    """`dtype` if it is a real floating dtype of `xp`; for None the widest one
    (`wide_float`: float64, float32 on JAX without its 64-bit mode); else TypeError."""
    if dtype is None:
        return wide_float(xp)
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


# ---------------------------------------------------------------------------
# scalars and options


def check_int_at_least(value: Any, name: str, low: int) -> int:
    """An integer (TypeError otherwise) >= `low` (ValueError otherwise)."""
    number = check_integer(value, name)
    _require(number >= low, name, f"an integer >= {low}", repr(value))
    return number


def check_index(value: Any, name: str, size: int) -> int:
    """An integer (TypeError otherwise) in ``[0, size)`` (ValueError otherwise)."""
    number = check_integer(value, name)
    if not 0 <= number < size:
        msg = f"`{name}` must lie in [0, {size}); got {number}"
        raise ValueError(msg)
    return number


def check_flag(value: Any, name: str) -> bool:
    """True or False (a NumPy bool too), else a TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        msg = f"`{name}` must be True or False; got {value!r}"
        raise TypeError(msg)
    return bool(value)


def check_choice(value: Any, name: str, choices: Collection[Any]) -> Any:
    """One of `choices`, else a ValueError listing them."""
    if value not in choices:
        msg = f"`{name}` must be one of {tuple(choices)}; got {value!r}"
        raise ValueError(msg)
    return value


def check_seed(seed: Any) -> int | np.random.Generator | None:
    """A seed of NumPy's generator: None, a Generator, or an integer >= 0."""
    if seed is None or isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        msg = f"`seed` must be an int >= 0, a numpy.random.Generator or None; got {seed!r}"
        raise TypeError(msg)
    _require(seed >= 0, "seed", ">= 0", str(seed))
    return int(seed)


def check_instance(value: Any, kind: type, name: str, *, what: str = "", advice: str = "") -> Any:
    """An instance of `kind` (`what` describes it, by default its name), else a
    TypeError; `advice`, if given, ends the message."""
    if not isinstance(value, kind):
        msg = f"`{name}` must be a {what or kind.__name__}; got {type(value).__name__}"
        raise TypeError(msg + (f"; {advice}" if advice else ""))
    return value


def check_name(value: Any, name: str) -> str:
    """A non-empty string without surrounding spaces (a registry key), else a TypeError."""
    if not isinstance(value, str) or not value or value != value.strip():
        msg = f"`{name}` must be a non-empty string without surrounding spaces; got {value!r}"
        raise TypeError(msg)
    return value


def check_protocol(value: Any, name: str, protocol: str, members: Sequence[str]) -> None:
    """`value` has every attribute of `members` (TypeError otherwise); all but the
    first, a `check_name` string, must be callable."""
    missing = [member for member in members if not hasattr(value, member)]
    if missing:
        msg = (
            f"`{name}` must implement {protocol} ({', '.join(members)}); "
            f"{type(value).__name__} lacks {', '.join(missing)}"
        )
        raise TypeError(msg)
    for member in members[1:]:
        if not callable(getattr(value, member)):
            msg = (
                f"`{name}.{member}` must be callable; got {type(getattr(value, member)).__name__}"
            )
            raise TypeError(msg)
    check_name(getattr(value, members[0]), f"{name}.{members[0]}")


# ---------------------------------------------------------------------------
# arrays


def check_arrays_given(**arrays: Any) -> None:
    """A TypeError naming the first required array that is missing (None)."""
    for name, value in arrays.items():
        if value is None:
            msg = f"`{name}` must be an array; got None"
            raise TypeError(msg)


def check_finite(x: Array, name: str, xp: ModuleType) -> None:
    """Every entry finite, else a ValueError naming `name` and the first bad entry.

    One device reduction and one host read; the bad entry is looked up only
    when there is one.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom._lib.backend import backend_namespace
    >>> xp = backend_namespace("numpy")
    >>> from ncgeom.checks import check_finite
    >>> check_finite(np.array([[1.0, 2.0], [np.inf, np.nan]]), "classifier", xp)
    Traceback (most recent call last):
    ...
    ValueError: `classifier` must be finite; got inf at [1, 0] (NaN or Inf in 2 of 4 entries)
    """
    _check_finite(x, name, xp)


def check_finite_arrays(xp: ModuleType, **arrays: Array | None) -> None:
    """`check_finite` of several arrays of `xp` in one host read (None values
    are skipped); the error names the first bad array and its first bad entry.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom._lib.backend import backend_namespace
    >>> xp = backend_namespace("numpy")
    >>> from ncgeom.checks import check_finite_arrays
    >>> check_finite_arrays(xp, classifier=np.eye(2), bias=np.array([0.0, np.nan]))
    Traceback (most recent call last):
    ...
    ValueError: `bias` must be finite; got nan at [1] (NaN or Inf in 1 of 2 entries)
    """
    given = {name: value for name, value in arrays.items() if value is not None}
    if not given:
        return
    flags = to_host(xp.stack([xp.all(xp.isfinite(value)) for value in given.values()]))
    for (name, value), good in zip(given.items(), flags, strict=True):
        if not good:
            _raise_not_finite(value, name, xp)


def _check_finite(x: Array, name: str, xp: ModuleType) -> None:
    if not bool(to_host(xp.all(xp.isfinite(x)))):
        _raise_not_finite(x, name, xp)


def _raise_not_finite(x: Array, name: str, xp: ModuleType) -> None:
    """The ValueError for an array with NaN or Inf: the first bad entry, its
    index and how many there are."""
    flat = xp.reshape(x, (-1,))
    bad = xp.logical_not(xp.isfinite(flat))
    first = _first_row(bad, xp)
    count = int(to_host(xp.sum(xp.astype(bad, index_dtype(xp)))))
    value = float(to_host(flat[first]))
    shape = tuple(int(n) for n in x.shape)
    where = f" at {[int(i) for i in np.unravel_index(first, shape)]}" if shape else ""
    msg = (
        f"`{name}` must be finite; got {value!r}{where} "
        f"(NaN or Inf in {count} of {math.prod(shape)} entries)"
    )
    raise ValueError(msg)


def check_bias_shape(bias: Array, num_classes: int, *, finite: bool = True) -> None:
    """A bias vector of shape (K,), finite unless `finite` is False.

    ``finite=False`` is for callers that read its finiteness in another
    transfer (`check_batch`'s `also_finite`).
    """
    if tuple(bias.shape) != (num_classes,):
        msg = f"`bias` must have shape ({num_classes},); got {tuple(bias.shape)}"
        raise ValueError(msg)
    if finite:
        _check_finite(bias, "bias", namespace(bias=bias))


def check_bias_vector(
    bias: Array, num_classes: int, xp: ModuleType, *, finite: bool = True
) -> None:
    """A bias vector of shape (K,) with a real floating dtype, finite unless
    `finite` is False (for callers that read its finiteness in another
    transfer, `check_batch`'s `also_finite`)."""
    check_bias_shape(bias, num_classes, finite=False)
    if not xp.isdtype(bias.dtype, "real floating"):
        msg = f"`bias` must have a real floating dtype; got {bias.dtype}"
        raise TypeError(msg)
    if finite:
        _check_finite(bias, "bias", xp)


def check_bias_free(bias: Any) -> None:
    """`bias` False or None: the closed form of the optimum has no bias."""
    if bias is None or bias is False:
        return
    msg = (
        f"`bias` must be False or None; got {bias!r}: the closed form is bias-free, "
        "use ncgeom.solve.solve_ufm(..., bias=True) for the optimum with a bias"
    )
    raise ValueError(msg)


def check_optimum_dim(dim: Any, num_alive: int) -> int:
    """A feature dimension that holds the orthogonal means of `num_alive` classes."""
    dim = check_integer(dim, "dim")
    needed = max(1, num_alive)
    if dim < needed:
        msg = (
            f"`dim` must be at least {needed}, the number of alive classes (the "
            f"optimal means are orthogonal); got {dim}"
            if num_alive >= 1
            else f"`dim` must be at least 1; got {dim}"
        )
        raise ValueError(msg)
    return dim


def check_class_matrix(x: Array, name: str, xp: ModuleType) -> None:
    """A real floating (K, d) matrix, one row per class, K >= 2 (finiteness:
    `check_finite_arrays`, read together with the other arrays of the call)."""
    check_features(x, xp, name=name, rows="classes")
    if x.shape[0] < 2:
        msg = f"`{name}` must have a row for each of at least 2 classes; got {x.shape[0]}"
        raise ValueError(msg)


def check_classifier_and_means(classifier: Array, means: Array, xp: ModuleType) -> None:
    """Two `check_class_matrix` matrices of one shape and dtype."""
    check_class_matrix(classifier, "classifier", xp)
    check_class_matrix(means, "means", xp)
    if tuple(classifier.shape) != tuple(means.shape):
        msg = (
            f"`classifier` and `means` must have the same shape (classes, dim); got "
            f"{tuple(classifier.shape)} and {tuple(means.shape)}"
        )
        raise ValueError(msg)
    if classifier.dtype != means.dtype:
        msg = (
            f"`classifier` and `means` must have the same dtype; got "
            f"{classifier.dtype} and {means.dtype}"
        )
        raise TypeError(msg)


def check_classifier_and_rows(
    classifier: Array, rows: Array, rows_name: str, xp: ModuleType
) -> tuple[int, Any]:
    """A finite, non-empty (K, d) classifier and 2-D floating `rows`: K and their
    common dtype."""
    check_features(classifier, xp, name="classifier", rows="classes")
    check_features(rows, xp, name=rows_name)
    if classifier.shape[0] < 1 or classifier.shape[1] < 1:
        msg = f"`classifier` must have at least one row and column; got {tuple(classifier.shape)}"
        raise ValueError(msg)
    check_finite(classifier, "classifier", xp)
    return classifier.shape[0], xp.result_type(classifier.dtype, rows.dtype)


def check_classifier(
    classifier: Array,
    shape: tuple[int, int],
    dtype: Any,
    xp: ModuleType,
    name: str = "classifier",
    *,
    finite: bool = True,
) -> Array:
    """A (K, d) = `shape` floating classifier, finite, detached, cast to at least `dtype`.

    The finiteness costs one device reduction and one host read;
    ``finite=False`` is for callers that read it in another transfer
    (`check_batch`'s `also_finite`).
    """
    got = tuple(classifier.shape)
    if got != shape:
        hint = "; it looks transposed (rows must be classes)" if got == shape[::-1] else ""
        msg = f"`{name}` must have shape (num_classes, dim) = {shape}; got {got}{hint}"
        raise ValueError(msg)
    if not xp.isdtype(classifier.dtype, "real floating"):
        msg = f"`{name}` must have a real floating dtype; got {classifier.dtype}"
        raise TypeError(msg)
    if finite:
        _check_finite(classifier, name, xp)
    return xp.astype(detach(classifier), xp.result_type(classifier.dtype, dtype))


def check_stats_classifier(
    classifier: Array, stats: Any, name: str = "classifier", *, finite: bool = True
) -> Array:
    """`check_classifier` against `ClassStats` `stats`: their shape, namespace and device."""
    if getattr(stats, "shift", None) is None or not hasattr(stats, "num_classes"):
        msg = f"`stats` must be a ClassStats; got {type(stats).__name__}"
        raise TypeError(msg)
    xp = namespace(stats=stats.shift, **{name: classifier})
    return check_classifier(
        classifier, (stats.num_classes, stats.dim), stats.dtype, xp, name, finite=finite
    )


def check_stream_batch(
    features: Array,
    labels: Array,
    num_classes: int,
    xp: ModuleType,
    check_finite: bool,
    *,
    also_finite: dict[str, Array | None] | None = None,
) -> tuple[Array, Array]:
    """`check_batch` for the statistics engine: at least one column; framework
    tensors come back detached.

    On the host, NaN and Inf are found later through the class means (K
    numbers that they reach) instead of a scan of the features; on a device
    that would cost a second host read, so the batch check scans first.
    `also_finite` is passed to `check_batch`.
    """
    scan = check_finite and not on_host(xp, array_device(features))
    labels = check_batch(
        features, labels, num_classes, xp, check_finite=scan, also_finite=also_finite
    )
    if features.shape[1] == 0:
        msg = f"`features` must have at least one column; got shape {tuple(features.shape)}"
        raise ValueError(msg)
    return detach(features), labels


def check_placed(value: Array, name: str, xp: ModuleType, device: Any) -> Array:
    """An array of `xp` on `device` (TypeError for another library, ValueError for
    another device); host data is the caller's to copy (see `is_host_data`)."""
    other = namespace(**{name: value})
    if other is not xp:
        msg = (
            f"`{name}` must be host data or a {backend_name(xp)} array like the "
            f"other arrays; got a {backend_name(other)} array"
        )
        raise TypeError(msg)
    if array_device(value) != device:
        msg = f"`{name}` must be on device {device}; got {array_device(value)}"
        raise ValueError(msg)
    return value


def check_class_vector(
    value: Any,
    name: str,
    size: int,
    xp: ModuleType,
    device: Any,
    dtype: Any,
    *,
    positive: bool = False,
    hint: str = "",
) -> Array:
    """A per-class vector as an array of `xp` on `device` in `dtype`.

    Host data (a sequence, a NumPy array) is copied there; an array must
    already be there (`check_placed`). Entries must be real, finite and >= 0
    (> 0 with `positive`); `hint` follows the name in that message. Anything
    that is not numbers (None, strings, objects, booleans) is a TypeError.
    """
    if is_host_data(value):
        arr = xp.asarray(_host_numbers(value, name), device=device)
    else:
        arr = check_placed(value, name, xp, device)
    if arr.ndim != 1 or arr.shape[0] != size:
        msg = f"`{name}` must have shape ({size},); got {tuple(arr.shape)}"
        raise ValueError(msg)
    if not (xp.isdtype(arr.dtype, "real floating") or xp.isdtype(arr.dtype, "integral")):
        msg = f"`{name}` must hold real numbers; got dtype {arr.dtype}"
        raise TypeError(msg)
    arr = arr if arr.dtype == dtype else xp.astype(arr, dtype)
    host = np.asarray(to_host(arr), dtype=np.float64)
    ok = np.isfinite(host) & ((host > 0) if positive else (host >= 0))
    if not ok.all():
        need = "> 0" if positive else ">= 0"
        msg = f"`{name}`{hint} must be finite and {need}; got {host.tolist()}"
        raise ValueError(msg)
    return arr


def _host_numbers(value: Any, name: str) -> np.ndarray:
    """Host data as a NumPy array of real numbers, else a TypeError naming `name`."""
    check_container(value, name)
    try:
        host = np.asarray(value)
    except (TypeError, ValueError):
        host = None
    if host is None or host.dtype.kind not in "iuf":
        msg = f"`{name}` must be an array or a sequence of real numbers; got {_short(value)}"
        raise TypeError(msg)
    return host


def check_values_like(value: Any, name: str, reference: Array, xp: ModuleType) -> Array:
    """`value` in the namespace, device and dtype of `reference`.

    Host data (lists, tuples, NumPy arrays) is copied to the device of
    `reference` and must be finite numbers; an array must already be there
    (`check_placed`).
    """
    if not is_host_data(value):
        return xp.astype(check_placed(value, name, xp, array_device(reference)), reference.dtype)
    check_container(value, name)
    try:
        host = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        msg = f"`{name}` must be a UFMOptimum or a vector of numbers; got {value!r}"
        raise TypeError(msg) from None
    if not np.all(np.isfinite(host)):
        msg = f"`{name}` must be finite; got {host.tolist()}"
        raise ValueError(msg)
    return like(host, reference)


def check_class_count(found: int, expected: int, name: str, measured: str) -> None:
    """`name` describes `expected` classes; `measured` says where that number comes from."""
    if found != expected:
        msg = (
            f"`{name}` describes {found} classes but {measured} {expected}; both must "
            "describe the same classes"
        )
        raise ValueError(msg)


# ---------------------------------------------------------------------------
# output paths (command-line options)


def check_output_file(
    path: str | os.PathLike[str],
    option: str,
    *,
    suffixes: Sequence[str] | None = None,
    default_suffix: str | None = None,
) -> Path:
    """The file an option names, checked to be writable before any work starts.

    Parameters
    ----------
    path : str or path-like
        The file name given.
    option : str
        The option's name for messages, e.g. ``"--plot"``.
    suffixes : sequence of str, optional
        Accepted suffixes (lower case, with the dot); any when omitted.
    default_suffix : str, optional
        Appended to a name without a suffix (the file really written, as
        matplotlib does); the returned path includes it.

    Returns
    -------
    pathlib.Path
        The path that will be written.

    Raises
    ------
    ValueError
        If the path is a folder, has a suffix not in `suffixes`, or its
        folder does not exist or is not writable.

    Examples
    --------
    >>> import tempfile
    >>> from ncgeom.cli import check_output_file
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     check_output_file(f"{folder}/fig", "--plot", default_suffix=".png").name
    'fig.png'
    >>> check_output_file("/", "--plot")
    Traceback (most recent call last):
    ...
    ValueError: `--plot` must name a file, not a folder; got '/'
    """
    text = os.fspath(path)
    target = Path(text)
    if not text or text.endswith(("/", os.sep)) or target.is_dir():
        msg = f"`{option}` must name a file, not a folder; got {text!r}"
        raise ValueError(msg)
    if not target.suffix and default_suffix:
        target = target.with_name(target.name + default_suffix)
    if suffixes is not None and target.suffix.lower() not in suffixes:
        msg = (
            f"`{option}` must end in one of {', '.join(suffixes)}; got {text!r} "
            f"(suffix {target.suffix or 'none'!r})"
        )
        raise ValueError(msg)
    if target.is_dir():
        msg = f"`{option}` must name a file, not a folder; got {str(target)!r}"
        raise ValueError(msg)
    folder = target.parent
    if not folder.is_dir():
        msg = (
            f"`{option}` must be in an existing folder; {str(folder)!r} is not one (got {text!r})"
        )
        raise ValueError(msg)
    _probe_writable(folder, option, text)
    if target.exists() and not os.access(target, os.W_OK):
        msg = f"`{option}` must be a writable file; {str(target)!r} is read-only"
        raise ValueError(msg)
    return target


def check_output_dir(path: str | os.PathLike[str], option: str) -> Path:
    """A folder an option names (created later if missing), checked to be writable.

    Raises
    ------
    ValueError
        If the path is an existing file, or the folder (or, when it does not
        exist yet, its nearest existing parent) is not writable.

    Examples
    --------
    >>> import tempfile
    >>> from ncgeom.cli import check_output_dir
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     check_output_dir(f"{folder}/new/out", "--out").name
    'out'
    """
    text = os.fspath(path)
    target = Path(text or ".")
    existing = target
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        what = "must name a folder" if existing == target else "must be inside a folder"
        msg = f"`{option}` {what}; {str(existing)!r} is a file (got {text!r})"
        raise ValueError(msg)
    _probe_writable(existing, option, text)
    return target


def _probe_writable(folder: Path, option: str, text: str) -> None:
    """Create and remove a temporary file in `folder`: the honest test of writability."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ncgeom-probe-"):
            pass
    except OSError as err:
        msg = (
            f"`{option}` must be writable; cannot create a file in {str(folder)!r} "
            f"({err.strerror or err}; got {text!r})"
        )
        raise ValueError(msg) from None
