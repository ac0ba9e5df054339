"""Metrics of class pairs, in one blocked pass over the Gram of the means.

No (K, K) array is formed: each (rows, K) block of the Gram is made once and
read by every metric asked for, so memory stays about `PAIR_BLOCK_ELEMENTS`
entries whatever K is.
"""

from __future__ import annotations

import warnings
from types import ModuleType
from typing import Any

from .._lib.backend import quiet_division
from .._lib.validate import check_positive_int
from .classes import Classes, populated, undefined
from .stats import ClassStats

Array = Any

#: Entries of one (rows, K) block of the pair matrices formed at once: small
#: enough that the block stays in cache while every metric reads it.
PAIR_BLOCK_ELEMENTS = 2**20
#: The four metrics of class pairs, computed together by `pair_metrics`.
PAIR_METRICS = ("cdnv", "etf_error", "equiangularity", "orthogonality_error")


def pair_block_rows(num: int, block_rows: int | None = None) -> int:
    """Rows of the class-pair blocks: `block_rows` if given (>= 1), else about
    `PAIR_BLOCK_ELEMENTS` entries per block."""
    if block_rows is not None:
        return check_positive_int(block_rows, "block_rows")
    return max(1, PAIR_BLOCK_ELEMENTS // max(num, 1))


def pair_metrics(
    view: Classes, names: tuple[str, ...] = PAIR_METRICS, block_rows: int | None = None
) -> tuple[dict[str, Array], dict[str, Array]]:
    """CDNV, ETF error, equiangularity and orthogonality in one blocked pass.

    Each (rows, K) block of the centred Gram ``Mc Mc^T`` is formed once (one
    matrix product) and feeds CDNV, ETF error and equiangularity; orthogonality
    takes the same block of the uncentred Gram (a second product: deriving it
    from the centred one loses short means to rounding). Only the upper
    triangle is formed; memory stays about `PAIR_BLOCK_ELEMENTS` entries
    whatever K is.

    Returns the metric values (0-d arrays, not yet masked for degenerate
    geometry) and the flag ``coincident`` (two means closer than rounding).
    """
    xp, num = view.xp, view.size
    dtype, device = view.means.dtype, view.device
    eps = xp.finfo(dtype).eps
    centred = view.centred
    sq = xp.vecdot(centred, centred)
    zero = xp.zeros((), dtype=dtype, device=device)
    totals = {name: zero for name in names}
    coincident = xp.zeros((), dtype=xp.bool, device=device)
    if "cdnv" in names:
        variances = view.variances
    if "equiangularity" in names:
        inv_c = _inverse_norms(sq, xp)
        minus_etf_cosine = 1 / (num - 1)  # -cos of two vertices of a simplex ETF
    if "orthogonality_error" in names:
        # Rows of unit length (zero rows stay zero): the product is the cosine.
        unit = view.means * _inverse_norms(xp.vecdot(view.means, view.means), xp)[:, None]
    if "etf_error" in names:
        num_k, dim = centred.shape
        small = centred.T @ centred if num_k > dim else centred @ centred.T
        gram_norm = xp.linalg.matrix_norm(small)
        safe_norm = xp.where(gram_norm > 0, gram_norm, xp.ones_like(gram_norm))
        off_target = -1 / (num * (num - 1) ** 0.5)
        diag_target = (1 - 1 / num) / (num - 1) ** 0.5
        diag = sq / safe_norm - diag_target
        totals["etf_error"] = xp.sum(diag * diag)
        # sum (G / |G| - t)^2 = sum (G - t |G|)^2 / |G|^2: one pass fewer a block.
        off_scaled = off_target * safe_norm
        off_sum = zero
    rows = pair_block_rows(num, block_rows)
    for lo in range(0, num - 1, rows):
        hi = min(lo + rows, num)
        # Entry (i, j) is the pair (lo + i, lo + j): columns past the block's
        # own rows are all pairs l > k; the square part keeps its upper triangle.
        gram = centred[lo:hi, ...] @ centred[lo:, ...].T
        width = hi - lo
        steps = xp.arange(width, device=device)
        upper = steps[None, :] > steps[:, None]
        if "cdnv" in names:
            both = sq[lo:hi, None] + sq[None, lo:]
            dist2 = both - 2 * gram
            close = _upper_min(dist2 - 8 * eps * both, upper, xp) <= 0
            coincident = coincident | close
            spread = variances[lo:hi, None] + variances[None, lo:]
            # A pair at distance 0 gives inf or NaN here, and the flag above
            # makes the metric NaN: no guard is needed on every entry.
            with quiet_division():
                totals["cdnv"] = totals["cdnv"] + _upper_sum(spread / dist2, upper, xp)
        if "equiangularity" in names:
            cos = gram * inv_c[lo:hi, None] * inv_c[None, lo:]
            totals["equiangularity"] = totals["equiangularity"] + _upper_sum(
                xp.abs(cos + minus_etf_cosine), upper, xp
            )
        if "orthogonality_error" in names:
            # Its own product: deriving m_k.m_l from the centred Gram would
            # lose the digits of short (collapsed) means to rounding of |g|^2.
            cos = unit[lo:hi, ...] @ unit[lo:, ...].T
            totals["orthogonality_error"] = totals["orthogonality_error"] + _upper_sum(
                xp.abs(cos), upper, xp
            )
        if "etf_error" in names:
            diff = gram - off_scaled
            off_sum = off_sum + _upper_sum(diff * diff, upper, xp)
    pairs = num * (num - 1) / 2
    if "cdnv" in names:
        totals["cdnv"] = totals["cdnv"] / 2
    if "etf_error" in names:
        totals["etf_error"] = totals["etf_error"] + 2 * off_sum / (safe_norm * safe_norm)
    values = {
        name: xp.sqrt(totals[name]) if name == "etf_error" else totals[name] / pairs
        for name in names
    }
    return values, {"coincident": coincident}


def _upper_sum(values: Array, upper: Array, xp: ModuleType) -> Array:
    """Sum of a pair block over the pairs l > k (see `pair_metrics`)."""
    width = upper.shape[0]
    square = values[:, :width]
    inside = xp.sum(xp.where(upper, square, xp.zeros_like(square)))
    return inside + xp.sum(values[:, width:])


def _upper_min(values: Array, upper: Array, xp: ModuleType) -> Array:
    """Smallest entry of a pair block over the pairs l > k."""
    width = upper.shape[0]
    square = values[:, :width]
    big = xp.full_like(square, xp.finfo(square.dtype).max)
    inside = xp.min(xp.where(upper, square, big))
    if values.shape[1] == width:
        return inside
    return xp.minimum(inside, xp.min(values[:, width:]))


def _inverse_norms(sq: Array, xp: ModuleType) -> Array:
    """``1 / sqrt(sq)``, and 0 where `sq` is 0 (a zero vector has cosine 0 with all)."""
    safe = xp.where(sq > 0, sq, xp.ones_like(sq))
    return xp.where(sq > 0, 1 / xp.sqrt(safe), xp.zeros_like(sq))


def _pair_metric(
    stats: ClassStats,
    name: str,
    global_mean: str,
    block_rows: int | None,
    chunk_rows: int | None,
) -> Array:
    """One pair metric; `chunk_rows` is the deprecated name of `block_rows`."""
    if chunk_rows is not None:
        warnings.warn(
            "`chunk_rows` is deprecated; pass `block_rows` (classes per block of class pairs)",
            DeprecationWarning,
            stacklevel=3,
        )
        if block_rows is not None:
            msg = "pass `block_rows` only; `chunk_rows` is its deprecated name"
            raise TypeError(msg)
        block_rows = chunk_rows
    view = populated(stats, global_mean)
    values, flags = pair_metrics(view, (name,), block_rows)
    return undefined(values[name], view, name, flags)


def cdnv(
    stats: ClassStats, *, block_rows: int | None = None, chunk_rows: int | None = None
) -> Array:
    """Class-distance normalised variance, averaged over class pairs.

    ``mean_{k<l} (v_k + v_l) / (2 ||mu_k - mu_l||^2)`` with
    ``v_k = (1/n_k) sum_{i in k} ||x_i - mu_k||^2``. Pairs are processed in
    row blocks of `block_rows` classes (``chunk_rows``, its former name, is
    deprecated), so memory stays bounded for any number of classes. NaN when
    two class means coincide.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> x = np.array([[0.0, 1.0], [0.0, 3.0], [4.0, 0.0], [6.0, 0.0]])
    >>> stats = ClassStats.from_features(x, np.array([0, 0, 1, 1]), 2)
    >>> round(float(metrics.cdnv(stats)), 6)
    0.034483
    """
    return _pair_metric(stats, "cdnv", "samples", block_rows, chunk_rows)


def equiangularity(
    stats: ClassStats,
    *,
    global_mean: str = "samples",
    block_rows: int | None = None,
    chunk_rows: int | None = None,
) -> Array:
    """``mean_{k<l} |cos(mu_k - mu_G, mu_l - mu_G) + 1/(K-1)|`` (0 for a simplex ETF).

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> etf = np.eye(3) - 1 / 3
    >>> stats = ClassStats.from_features(etf, np.arange(3), 3)
    >>> abs(float(metrics.equiangularity(stats))) < 1e-12
    True
    """
    return _pair_metric(stats, "equiangularity", global_mean, block_rows, chunk_rows)


def orthogonality_error(
    stats: ClassStats, *, block_rows: int | None = None, chunk_rows: int | None = None
) -> Array:
    """``mean_{k<l} |cos(mu_k, mu_l)|`` on the uncentred means.

    0 for an orthogonal frame, the optimum of ReLU features; a zero mean (a
    collapsed minority class) has cosine 0 with every other mean. NaN when
    fewer than two means are non-zero (every class but one collapsed, or dead
    features): there is no pair of directions to compare.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> stats = ClassStats.from_features(np.diag([1.0, 2.0, 3.0]), np.arange(3), 3)
    >>> abs(float(metrics.orthogonality_error(stats))) < 1e-12
    True
    """
    return _pair_metric(stats, "orthogonality_error", "samples", block_rows, chunk_rows)


def etf_error(
    stats: ClassStats,
    *,
    global_mean: str = "samples",
    block_rows: int | None = None,
    chunk_rows: int | None = None,
) -> Array:
    """``|| nf(Mc Mc^T) - nf(I - J/K) ||_F`` with Mc the centred means.

    0 exactly when the centred means form a simplex equiangular tight frame
    (of any scale). The (K, K) Gram is formed in row blocks.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> stats = ClassStats.from_features(5 * (np.eye(4) - 1 / 4), np.arange(4), 4)
    >>> abs(float(metrics.etf_error(stats))) < 1e-6
    True
    """
    return _pair_metric(stats, "etf_error", global_mean, block_rows, chunk_rows)
