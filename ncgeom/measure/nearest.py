"""The nearest simplex ETF and the nearest orthogonal frame, in closed form.

Both are orthogonal Procrustes problems. For rows ``A`` (K, d) and a target
``s T0 Q`` (scale ``s >= 0``, ``Q`` with orthonormal rows):
``||A - s T0 Q||^2 = ||A||^2 - 2 s <T0^T A, Q> + s^2 ||T0||^2``, and the
largest ``<B, Q>`` over orthonormal rows is the nuclear norm ``||B||_*``,
reached at the polar factor ``Q = U V^T`` of ``B = U S V^T``. The best scale
is then ``s = ||B||_* / ||T0||^2`` and the smallest squared distance
``||A||^2 - ||B||_*^2 / ||T0||^2``.

- Simplex ETF: ``E = sqrt(K/(K-1)) (I - 11^T/K)`` has rank K - 1; its null
  direction ``1`` meets no target, so only ``U^T Q`` matters, ``U`` (K, K-1)
  an orthonormal basis of the complement of ``1``, and ``R = U^T Q`` ranges over
  every (K-1, d) matrix with orthonormal rows (hence d >= K - 1 suffices).
  ``U`` is the first K - 1 columns of the reflection ``H = I - 2 v v^T / v^T v``,
  ``v = 1/sqrt(K) + e_K``, applied in O(K d) without forming it:
  ``B = (H A)[:K-1]``, target ``(||B||_* / (K-1)) H [R; 0]``,
  ``s = ||B||_* / sqrt(K (K-1))`` (the length of each target row). The rows of
  the target sum to zero, so the part of ``A`` along ``1`` (the offset of the
  centre from the classes' mean) stays in the distance.
- Orthogonal frame with lengths ``l``: ``T0 = diag(l)``, ``B = diag(l) A``,
  ``s = ||B||_* / sum l^2``. Rows of zero length (collapsed classes) have a
  zero target, so only the r rows of positive length need orthonormal
  directions: d >= r.

Everything is computed on ``A`` divided by its largest entry (no square can
overflow or underflow) and multiplied back in the widest float.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from .._lib.backend import (
    accumulation_dtype,
    array_device,
    detach,
    index_dtype,
    namespace,
    to_host,
    wide_float,
)
from .._lib.lanes import serial_lapack
from .._lib.validate import check_choice, check_class_matrix, check_container, check_finite
from .classes import GLOBAL_MEANS, Classes, largest_entry, populated
from .stats import ClassStats

__all__ = [
    "NEAREST_FLAGS",
    "NearestFrame",
    "nearest_orthogonal_frame",
    "nearest_orthogonal_frame_of",
    "nearest_simplex_etf",
    "nearest_simplex_etf_of",
]

Array = Any

#: The flags of `Classes.flags` that leave each nearest frame of a `ClassStats`
#: undefined (every field NaN), the most specific first.
NEAREST_FLAGS = {
    "nearest_simplex_etf": ("means", "between"),
    "nearest_orthogonal_frame": ("means",),
}


@dataclass(frozen=True, eq=False)
class NearestFrame:
    """The ideal geometry nearest to K rows, and the distance to it.

    Attributes
    ----------
    target : array, shape (K, d)
        The nearest ideal rows, in the rows' units and dtype; NaN rows for
        classes without samples when built from a `ClassStats`.
    scale : array, shape ()
        Its scale ``s``: the length of each row of the nearest simplex ETF or
        equal-length frame, or the factor of the given lengths
        (``||target_k|| = scale * lengths[k]``); in the rows' units (per unit
        of `lengths`), in float64.
    distance : array, shape ()
        ``||rows - target||_F``, in the rows' units, in float64.
    relative_distance : array, shape ()
        ``distance / ||rows||_F``, in [0, 1] (scale 0 is allowed): 0 for the
        ideal geometry; in the rows' dtype.
    """

    target: Array
    scale: Array
    distance: Array
    relative_distance: Array


# ----------------------------------------------------------------------------- public
def nearest_simplex_etf(
    source: ClassStats | Array, *, global_mean: str = "samples"
) -> NearestFrame:
    """The simplex ETF nearest to the centred class means, or to K rows.

    Minimises ``||A - s E Q||_F`` over scales ``s >= 0`` and partial isometries
    ``Q`` (orthonormal rows on the span of E), with
    ``E = sqrt(K/(K-1)) (I - 11^T/K)`` the standard simplex ETF (unit rows,
    pairwise cosines -1/(K-1)); closed form by orthogonal Procrustes (see the
    module). The target's rows sum to zero: the component of ``A`` along the
    all-ones direction counts in the distance.

    Parameters
    ----------
    source : ClassStats or array, shape (K, d)
        Statistics: ``A`` holds the centred means ``mu_k - mu_G`` of the
        classes with samples, in the features' units. An array (e.g. the
        classifier W): its rows, as given.
    global_mean : {"samples", "classes"}
        The centre ``mu_G`` of statistics: the mean of all samples, or the
        unweighted mean of the class means (then the rows of ``A`` sum to zero).

    Returns
    -------
    NearestFrame
        On the source's namespace and device. From statistics, every field is
        NaN when the class means coincide or are all zero.

    Raises
    ------
    ValueError
        If d < K - 1 (a simplex of K vertices spans K - 1 dimensions), or an
        array is all zero, not finite, or has fewer than 2 rows.
    TypeError
        If `source` is neither statistics nor a real floating array.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom.measure.nearest import nearest_simplex_etf
    >>> etf = 3.0 * (np.eye(3) - 1 / 3) * np.sqrt(3 / 2)  # a simplex ETF of row length 3
    >>> fit = nearest_simplex_etf(etf @ np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0, 0, 1]]))
    >>> round(float(fit.scale), 12), round(float(fit.distance), 12)
    (3.0, 0.0)
    >>> fit = nearest_simplex_etf(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    >>> round(float(fit.relative_distance), 4)
    0.6148
    """
    check_choice(global_mean, "global_mean", GLOBAL_MEANS)
    if isinstance(source, ClassStats):
        view = populated(source, global_mean)
        fit = nearest_simplex_etf_of(view)
        return _for_stats(fit, view, "nearest_simplex_etf")
    rows = _checked_rows(source)
    _check_etf_dim(rows.shape[0], rows.shape[1])
    return _etf(rows, None)


def nearest_orthogonal_frame(
    source: ClassStats | Array, *, lengths: Any = "equal"
) -> NearestFrame:
    """The orthogonal frame nearest to the class means, or to K rows.

    Minimises ``||A - s diag(l) Q||_F`` over scales ``s >= 0`` and ``Q`` with
    orthonormal rows q_k: row k of the target is ``s l_k q_k``. The geometry
    of the UFM+ optimum (`ncgeom.ufm_relu_optimum`): orthogonal, uncentred
    means whose lengths are its ``feature_norms``, zero for collapsed classes.
    Closed form by orthogonal Procrustes (see the module).

    Parameters
    ----------
    source : ClassStats or array, shape (K, d)
        Statistics: ``A`` holds the uncentred class means of the classes with
        samples, in the features' units. An array: its rows, as given.
    lengths : "equal" or array, shape (K,)
        The relative lengths ``l_k`` of the frame's rows (only their ratios
        count; the scale is fitted), one per class of `source` (for
        statistics, classes without samples included; their entries are not
        used): e.g. ``optimum.feature_norms``. Finite and >= 0, positive for at
        least one class; zero lengths give zero rows (collapsed classes). Read
        on the host, from any array library.

    Returns
    -------
    NearestFrame
        On the source's namespace and device; ``scale`` is per unit of
        `lengths`. From statistics, every field is NaN when every class mean
        is zero.

    Raises
    ------
    ValueError
        If d is smaller than the number of classes with positive length (their
        directions are orthonormal), `lengths` has the wrong shape or a
        negative, non-finite or no positive entry, or an array is all zero,
        not finite, or has fewer than 2 rows.
    TypeError
        If `source` is neither statistics nor a real floating array, or
        `lengths` holds no real numbers.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom.measure.nearest import nearest_orthogonal_frame
    >>> from ncgeom.theory import ufm_relu_optimum
    >>> opt = ufm_relu_optimum([30, 20, 3, 1], 2e-2, 2e-2)
    >>> fit = nearest_orthogonal_frame(opt.means(), lengths=opt.feature_norms)
    >>> round(float(fit.scale), 12), round(float(fit.distance), 12)
    (1.0, 0.0)
    >>> round(float(nearest_orthogonal_frame(opt.means()).relative_distance), 4)
    0.5004
    """
    if isinstance(source, ClassStats):
        view = populated(source)
        fit = nearest_orthogonal_frame_of(view, lengths)
        return _for_stats(fit, view, "nearest_orthogonal_frame")
    rows = _checked_rows(source)
    weights, largest = _checked_lengths(lengths, rows.shape[0], None)
    _check_frame_dim(weights, rows.shape[1])
    return _frame(rows, weights, largest, None)


# ----------------------------------------------------------------------------- kernels
def nearest_simplex_etf_of(view: Classes) -> NearestFrame:
    """`nearest_simplex_etf` of a class view's centred means (the kernel).

    The target has one row per class of the view (no NaN rows); degenerate
    geometry is not masked (`NEAREST_FLAGS` says which flags to apply).
    """
    _check_etf_dim(view.size, view.means.shape[1])
    return _etf(view.centred, _unit(view))


def nearest_orthogonal_frame_of(view: Classes, lengths: Any = "equal") -> NearestFrame:
    """`nearest_orthogonal_frame` of a class view's means (the kernel).

    `lengths` as in `nearest_orthogonal_frame`: "equal", or one per class of
    the statistics (classes without samples included). The target has one row
    per class of the view; degenerate geometry is not masked.
    """
    stats = view.stats
    num = view.size if stats is None else stats.num_classes
    weights, largest = _checked_lengths(lengths, num, view)
    _check_frame_dim(weights, view.means.shape[1])
    return _frame(view.means, weights, largest, _unit(view))


# ----------------------------------------------------------------------------- checks
def _checked_rows(source: Any) -> Array:
    """A finite, not all-zero (K, d) real floating array (K >= 2), detached and
    in its accumulation dtype; one host read."""
    try:
        check_container(source, "source")
        xp = namespace(source=source)
    except TypeError as error:
        if "must be an array of" not in str(error):
            raise
        msg = (
            "`source` must be a ClassStats or a (num_classes, dim) array; got "
            f"{type(source).__name__}"
        )
        raise TypeError(msg) from None
    check_class_matrix(source, "source", xp)
    rows = detach(source)
    rows = xp.astype(rows, accumulation_dtype(xp, rows.dtype))
    finite, nonzero = (
        bool(v) for v in to_host(xp.stack([xp.all(xp.isfinite(rows)), xp.any(rows != 0)]))
    )
    if not finite:
        check_finite(rows, "source", xp)
    if not nonzero:
        msg = (
            "`source` must have a non-zero entry (a zero matrix has no nearest "
            f"direction); got a {tuple(rows.shape)} array of zeros"
        )
        raise ValueError(msg)
    return rows


def _check_etf_dim(num: int, dim: int) -> None:
    if dim < num - 1:
        msg = (
            f"`source` must have dim >= num_classes - 1 = {num - 1} (a simplex ETF of {num} "
            f"classes spans {num - 1} dimensions); got dim {dim}"
        )
        raise ValueError(msg)


def _check_frame_dim(weights: np.ndarray, dim: int) -> None:
    needed = int(np.count_nonzero(weights))
    if dim < needed:
        msg = (
            f"`source` must have dim >= {needed}, the number of classes with positive "
            f"`lengths` (their frame directions are orthonormal); got dim {dim}"
        )
        raise ValueError(msg)


def host_lengths(lengths: Any, num: int, alternative: str = "", rows: str = "") -> np.ndarray:
    """`lengths` on the host as float64: shape (num,), finite and >= 0 (the
    messages offer `alternative` before "an array" and name the `rows`)."""
    try:
        host = np.asarray(lengths if isinstance(lengths, (list, tuple)) else to_host(lengths))
    except (TypeError, ValueError, RuntimeError):
        host = None
    if host is None or host.dtype.kind not in "iuf":
        kind = type(lengths).__name__ if host is None else f"dtype {host.dtype}"
        msg = f"`lengths` must be {alternative}an array of real numbers; got {kind}"
        raise TypeError(msg)
    if host.shape != (num,):
        msg = (
            f"`lengths` must be {alternative}an array of shape ({num},){rows}; "
            f"got shape {host.shape}"
        )
        raise ValueError(msg)
    host = host.astype(np.float64)
    bad = ~(np.isfinite(host) & (host >= 0))
    if bad.any():
        first = int(np.argmax(bad))
        msg = (
            f"`lengths` must be finite and >= 0; got {float(host[first])!r} at [{first}] "
            f"({int(bad.sum())} of {num} entries)"
        )
        raise ValueError(msg)
    return host


def _checked_lengths(lengths: Any, num: int, view: Classes | None) -> tuple[np.ndarray, float]:
    """Lengths of the rows (of the view's classes) on the host divided by the
    largest (float64 in [0, 1]; "equal" gives ones), and the largest."""
    rows = num if view is None else view.size
    if isinstance(lengths, str):
        if lengths != "equal":
            msg = f'`lengths` must be "equal" or an array of shape ({num},); got {lengths!r}'
            raise ValueError(msg)
        return np.ones(rows), 1.0
    check_container(lengths, "lengths")
    host = host_lengths(lengths, num, '"equal" or ')
    if view is not None:
        host = host[list(view.index)]
    largest = host.max()
    if not largest > 0:
        which = "class" if view is None else "class with samples"
        msg = f"`lengths` must be positive for at least one {which}; got all zero"
        raise ValueError(msg)
    return host / largest, float(largest)


# ----------------------------------------------------------------------------- fits
def _unit(view: Classes) -> Array | None:
    """The statistics' scale (None: 1)."""
    return None if view.stats is None else view.stats.unit_scale


def _scale_free(rows: Array, xp: ModuleType) -> tuple[Array, Array]:
    """`rows` over their largest absolute entry (1 if all zero), and that entry."""
    largest = largest_entry(rows, xp)
    return rows / largest, largest


def _polar(b: Array, xp: ModuleType) -> tuple[Array, Array]:
    """The polar factor ``U V^T`` of ``b`` (r, d), r <= d (orthonormal rows), and
    its nuclear norm."""
    with serial_lapack(xp, b.shape):
        u, sv, vh = xp.linalg.svd(b, full_matrices=False)
    return u @ vh, xp.sum(sv)


def _etf(rows: Array, unit: Array | None) -> NearestFrame:
    xp = namespace(rows=rows)
    # Every product of a small fit on one BLAS thread (`serial_lapack`).
    with serial_lapack(xp, rows.shape):
        return _etf_fit(rows, unit, xp)


def _etf_fit(rows: Array, unit: Array | None, xp: ModuleType) -> NearestFrame:
    a, largest = _scale_free(rows, xp)
    num, dim = a.shape
    dtype, device = a.dtype, array_device(a)
    # H = I - coef v v^T with v = 1/sqrt(K) + e_K maps 1/sqrt(K) to -e_K; its
    # first K - 1 columns span the complement of the all-ones direction.
    last = xp.arange(num, device=device) == num - 1
    v = xp.full((num,), 1 / math.sqrt(num), dtype=dtype, device=device) + xp.astype(last, dtype)
    coef = 1 / (1 + 1 / math.sqrt(num))  # 2 / (v^T v)

    def reflect(x: Array) -> Array:
        return x - (coef * v)[:, None] * (v @ x)[None, :]

    rotation, nuclear = _polar(reflect(a)[: num - 1, ...], xp)
    padded = xp.concat([rotation, xp.zeros((1, dim), dtype=dtype, device=device)])
    target = (nuclear / (num - 1)) * reflect(padded)
    return _result(a, target, nuclear / math.sqrt(num * (num - 1)), largest, unit)


def _frame(rows: Array, weights: np.ndarray, longest: float, unit: Array | None) -> NearestFrame:
    xp = namespace(rows=rows)
    with serial_lapack(xp, rows.shape):
        return _frame_fit(rows, weights, longest, unit, xp)


def _frame_fit(
    rows: Array, weights: np.ndarray, longest: float, unit: Array | None, xp: ModuleType
) -> NearestFrame:
    a, largest = _scale_free(rows, xp)
    dtype, device = a.dtype, array_device(a)
    positive = np.flatnonzero(weights > 0)
    if np.all(weights == 1):  # equal lengths: nothing to upload
        wanted = xp.ones((weights.size,), dtype=dtype, device=device)
    else:
        wanted = xp.asarray(weights, dtype=dtype, device=device)
    weighted = wanted[:, None] * a
    if positive.size == weights.size:
        directions, nuclear = _polar(weighted, xp)
    else:
        # Zero-length rows have zero targets: fit the others, then place their
        # rows and a zero row for each of the rest.
        kept = xp.asarray(positive, dtype=index_dtype(xp), device=device)
        fitted, nuclear = _polar(xp.take(weighted, kept, axis=0), xp)
        slot = np.full(weights.size, positive.size)
        slot[positive] = np.arange(positive.size)
        padded = xp.concat([fitted, xp.zeros((1, a.shape[1]), dtype=dtype, device=device)])
        directions = xp.take(
            padded, xp.asarray(slot, dtype=index_dtype(xp), device=device), axis=0
        )
    scale = nuclear / float(np.sum(weights * weights))
    target = scale * (wanted[:, None] * directions)
    return _result(a, target, scale, largest, unit, longest)


def _result(
    a: Array,
    target: Array,
    scale: Array,
    largest: Array,
    unit: Array | None,
    per: float = 1.0,
) -> NearestFrame:
    """The fit of scale-free rows `a` back in the rows' units (the scale per
    unit of lengths whose largest is `per`)."""
    xp = namespace(a=a)
    wide = wide_float(xp)
    distance = xp.linalg.matrix_norm(a - target)
    norm = xp.linalg.matrix_norm(a)
    relative = distance / xp.where(norm > 0, norm, xp.ones_like(norm))
    relative = xp.where(norm > 0, relative, xp.full_like(relative, xp.nan))
    factor = xp.astype(largest, wide)
    target = target * largest
    if unit is not None:
        factor = factor * xp.astype(unit, wide)
        target = target * unit
    return NearestFrame(
        target=target,
        scale=xp.astype(scale, wide) * factor / per,
        distance=xp.astype(distance, wide) * factor,
        relative_distance=relative,
    )


def _for_stats(fit: NearestFrame, view: Classes, name: str) -> NearestFrame:
    """A view's fit with every field NaN where the geometry leaves it undefined,
    and NaN target rows for classes without samples."""
    xp = view.xp
    flags = view.flags()
    bad = None
    for flag in NEAREST_FLAGS[name]:
        bad = flags[flag] if bad is None else bad | flags[flag]

    def mask(value: Array) -> Array:
        return xp.where(bad, xp.full_like(value, xp.nan), value)

    return NearestFrame(
        target=view.spread(mask(fit.target)),
        scale=mask(fit.scale),
        distance=mask(fit.distance),
        relative_distance=mask(fit.relative_distance),
    )
