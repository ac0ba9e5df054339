"""Neural-collapse metrics: pure functions of `ClassStats` (and a classifier).

Conventions: rows are classes (means and classifier are (K, d)); ``mu_G`` is
the mean of all samples unless ``global_mean="classes"`` (the unweighted mean
of class means); ``nf(A) = A / ||A||_F``. Classes without samples are left out
of every metric with a warning that names them; at least two populated classes
are needed. Every function returns a 0-d array on the statistics' namespace and
device.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .._lib.backend import (
    accumulation_dtype,
    array_device,
    detach,
    index_dtype,
    namespace,
    quiet_division,
    to_host,
)
from .._lib.validate import (
    check_bias_shape,
    check_choice,
    check_features,
    check_instance,
    check_positive_int,
    check_stats_classifier,
)
from .stats import ClassStats, row_chunks, rows_per_chunk, warn_nc1_rounding

__all__ = [
    "Classes",
    "DEGENERATE_METRICS",
    "DEGENERATE_REASONS",
    "GLOBAL_MEANS",
    "NCCAgreement",
    "NearestCentre",
    "PAIR_BLOCK_ELEMENTS",
    "PAIR_METRICS",
    "between_basis",
    "cdnv",
    "centre_of",
    "class_view",
    "classifier_flags",
    "equiangularity",
    "equinorm",
    "equinorm_of",
    "etf_error",
    "nc1",
    "nc1_and_rounding_of",
    "nc1_from_scatter",
    "nc1_of",
    "ncc_agreement",
    "orthogonality_error",
    "pair_block_rows",
    "pair_metrics",
    "populated",
    "scale_free",
    "scaled_alignment_error",
    "scaled_alignment_error_of",
    "self_duality_error",
    "self_duality_error_of",
]

Array = Any

#: Accepted values of the `global_mean` option.
GLOBAL_MEANS = ("samples", "classes")


@dataclass(frozen=True)
class Classes:
    """The populated classes of a `ClassStats`, as every metric sees them.

    Means, centre and variances are in units of the statistics' `scale`, so
    their squares stay in range: every metric here is scale-invariant.
    `centre_weights` are the weights of `global_mean` over the rows of
    `means` (summing to 1); replace them together.
    """

    xp: ModuleType
    stats: ClassStats | None
    index: tuple[int, ...]
    excluded: tuple[int, ...]
    host_counts: tuple[int, ...]  # (K,) all classes, on the host
    counts: Array  # (K',) float
    means: Array  # (K', d)
    global_mean: Array  # (d,)
    variances: Array | None  # (K',)
    device: Any = None
    centre_weights: Array | None = None  # (K',)

    @property
    def size(self) -> int:
        return len(self.index)

    @property
    def centred(self) -> Array:
        """``means - global_mean``, centred again with `centre_weights`.

        The stored centre is off the exact weighted mean by its rounding,
        about eps times the size of the means, the same for every row: far
        from the origin (a common offset 1e10 times the spread) that breaks
        the exact dependence ``sum_k w_k c_k = 0`` of the rows and gives
        Sigma_B a spurious direction whose eigenvalue is that rounding
        squared, far above the pseudo-inverse cut-off. The second centring
        subtracts the weighted mean of the differences, which are of the size
        of the spread and exact to their own rounding.
        """
        first = self.means - self.global_mean
        if self.centre_weights is None:
            return first
        return first - self.centre_weights @ first

    def take(self, rows: Array) -> Array:
        """Rows of a (K, ...) array that belong to the populated classes."""
        return _take_rows(rows, self.index, self.excluded, self.xp, self.device)

    def flags(self) -> dict[str, Array]:
        """0-d boolean arrays (no host read) that mark degenerate geometry.

        ``between``: the centred means are zero or below rounding (dead
        features, all class means equal): every metric of the between-class
        spread is undefined. ``means``: every class mean is zero.
        ``alive``: fewer than two class means are non-zero (all classes but
        one collapsed to the origin): no pair of directions, so the
        orthogonality of the means is undefined (a zero mean's cosine counts
        as 0, which would report such means as perfectly orthogonal).
        ``scaled``: the sqrt(n)-scaled means ``sqrt(n_k) mu_k`` coincide, so
        the target of the scaled alignment has no direction.
        """
        xp = self.xp
        eps = xp.finfo(self.means.dtype).eps
        sq = xp.vecdot(self.means, self.means)
        largest_mean = xp.max(sq)
        largest_centred = xp.max(xp.vecdot(self.centred, self.centred))
        scaled = xp.sqrt(self.counts)[:, None] * self.means
        scaled_centred = scaled - xp.mean(scaled, axis=0)
        largest_scaled = xp.max(xp.vecdot(scaled, scaled))
        return {
            "between": largest_centred <= (16 * eps) ** 2 * largest_mean,
            "means": largest_mean == 0,
            # The rule of `pair_metrics`: a mean whose square is 0 has no direction.
            "alive": xp.sum(xp.astype(sq > 0, index_dtype(xp))) < 2,
            "scaled": xp.max(xp.vecdot(scaled_centred, scaled_centred))
            <= (16 * eps) ** 2 * largest_scaled,
        }


#: Why a metric is undefined, by flag of `Classes.flags` (and of `pair_metrics`).
DEGENERATE_REASONS = {
    "between": "the class means coincide (between-class spread zero or below rounding)",
    "means": "every class mean is zero (dead features)",
    "alive": "fewer than two class means are non-zero (no pair of directions to compare)",
    "coincident": "two class means coincide (their distance is below rounding)",
    "scaled": "the sqrt(n)-scaled class means coincide (no direction to align with)",
    "classifier": "the classifier is zero on the classes with samples (no direction)",
}
#: The flags that make each metric undefined, the most specific reason first.
DEGENERATE_METRICS = {
    "nc1": ("means", "between"),
    "cdnv": ("means", "between", "coincident"),
    "etf_error": ("means", "between"),
    "equinorm": ("means", "between"),
    "equiangularity": ("means", "between"),
    "orthogonality_error": ("means", "alive"),
    "self_duality_error": ("means", "between", "classifier"),
    "scaled_alignment_error": ("means", "scaled", "classifier"),
}


def _take_rows(
    rows: Array, index: tuple[int, ...], excluded: tuple[int, ...], xp: ModuleType, device: Any
) -> Array:
    if not excluded:
        return rows
    return xp.take(rows, xp.asarray(index, dtype=index_dtype(xp), device=device), axis=0)


def class_view(
    counts: Array,
    means: Array,
    variances: Array | None = None,
    global_mean: str = "samples",
    *,
    stats: ClassStats | None = None,
    warn: bool = True,
    what: str = "statistics",
) -> Classes:
    """The populated classes of class `counts` (K,) and scaled `means` (K, d).

    One host read: the counts, and whether the means (and the `variances`,
    and the Gram and scale of `stats`, where given) are finite; `what` names
    their source in the error otherwise. Counts must be non-negative
    integers. Classes without samples are left out, with a warning that
    names them (in ranges, the first few when there are many:
    `Classes.excluded` holds them all); at least two classes must have
    samples.
    """
    check_choice(global_mean, "global_mean", GLOBAL_MEANS)
    xp = namespace(counts=counts, means=means)
    device = array_device(means)
    # The argument the user passed: the statistics, or the features and labels.
    argument = {"statistics": "stats", "features": "features"}.get(what, what)
    counted = "stats.counts" if argument == "stats" else "counts"
    if not xp.isdtype(counts.dtype, "integral"):
        msg = f"`{counted}` must have an integer dtype; got {counts.dtype}"
        raise TypeError(msg)
    checks = _finite_parts(counts, means, variances, stats, xp)
    host = to_host(
        xp.concat(
            [
                xp.astype(counts, index_dtype(xp)),
                xp.stack([xp.astype(ok, index_dtype(xp)) for ok in checks.values()]),
            ]
        )
    )
    host_counts = host[: counts.shape[0]]
    for part, ok in zip(checks, host[counts.shape[0] :], strict=True):
        if not ok:
            raise ValueError(_not_finite_message(argument, part, stats))
    if host_counts.min(initial=0) < 0:
        first = int(host_counts.argmin())
        msg = f"`{counted}` must be non-negative; got {int(host_counts[first])} for class {first}"
        raise ValueError(msg)
    index = tuple(int(k) for k in range(means.shape[0]) if host_counts[k] > 0)
    excluded = tuple(int(k) for k in range(means.shape[0]) if host_counts[k] == 0)
    if len(index) < 2:
        named = "stats" if argument == "stats" else "labels"
        held = (
            f"counts {host_counts.tolist()}"
            if len(host_counts) <= 2 * _SHOWN_RUNS
            else f"classes with samples: {_id_ranges(index)} of {len(host_counts):,}"
        )
        msg = f"`{named}` must hold at least two classes with samples; got {len(index)} ({held})"
        raise ValueError(msg)
    if excluded and warn:
        warnings.warn(
            _empty_classes_message(excluded, len(host_counts)), UserWarning, stacklevel=3
        )

    def take(rows: Array) -> Array:
        return _take_rows(rows, index, excluded, xp, device)

    n = xp.astype(take(counts), means.dtype)
    kept = take(means)
    host = tuple(int(c) for c in host_counts)
    spread = None if variances is None else take(variances)
    weights = n / xp.sum(n) if global_mean == "samples" else xp.ones_like(n) / len(index)
    view = Classes(
        xp, stats, index, excluded, host, n, kept, kept[0, ...], spread, device, weights
    )
    return dataclasses.replace(view, global_mean=centre_of(view, global_mean))


def _finite_parts(
    counts: Array, means: Array, variances: Array | None, stats: ClassStats | None, xp: ModuleType
) -> dict[str, Array]:
    """0-d booleans (no host read): is each part that the metrics read finite?"""
    present = counts > 0
    checks = {"class means": xp.all(xp.isfinite(means) | ~present[:, None])}
    if variances is not None:
        checks["class variances"] = xp.all(xp.isfinite(variances) | ~present)
    if stats is not None:
        if stats.gram is not None:
            checks["Gram"] = xp.all(xp.isfinite(stats.gram))
        scale = stats.unit_scale
        checks["scale"] = xp.isfinite(scale) & (scale > 0)
    return checks


def _not_finite_message(argument: str, part: str, stats: ClassStats | None) -> str:
    """Which part of the statistics `class_view` found NaN/Inf (or a bad scale) in."""
    if part == "scale" and stats is not None:
        value = float(to_host(stats.unit_scale))
        return f"`{argument}.scale` must be a finite positive number; got {value!r}"
    held = {
        "class means": "class means hold NaN or Inf (check_finite=False skipped the "
        "check that would have located them)",
        "class variances": "class variances (from `sqnorms`) hold NaN or Inf",
        "Gram": "Gram holds NaN or Inf",
    }[part]
    return f"`{argument}` are not finite: their {held}"


#: Runs of class ids a warning shows before it says how many more there are.
_SHOWN_RUNS = 8


def _runs(ids: tuple[int, ...]) -> list[list[int]]:
    """Runs of consecutive ids, as [first, last] pairs."""
    runs: list[list[int]] = []
    for k in ids:
        if runs and k == runs[-1][1] + 1:
            runs[-1][1] = k
        else:
            runs.append([k, k])
    return runs


def _id_ranges(ids: tuple[int, ...], limit: int = _SHOWN_RUNS) -> str:
    """Sorted class ids in range form, the first `limit` runs: ``[0-3, 5, 7-9, ...]``.

    Examples
    --------
    >>> from ncgeom.measure.metrics import _id_ranges
    >>> _id_ranges((0, 1, 2, 3, 5, 7, 8))
    '[0-3, 5, 7, 8]'
    >>> _id_ranges(tuple(range(0, 40, 2)), limit=3)
    '[0, 2, 4, ... 17 more]'
    """
    runs = _runs(ids)
    parts = []
    for first, last in runs[:limit]:
        if first == last:
            parts.append(str(first))
        elif last == first + 1:
            parts.append(f"{first}, {last}")
        else:
            parts.append(f"{first}-{last}")
    shown = sum(last - first + 1 for first, last in runs[:limit])
    if shown < len(ids):
        parts.append(f"... {len(ids) - shown:,} more")
    return "[" + ", ".join(parts) + "]"


def _empty_classes_message(excluded: tuple[int, ...], num_classes: int) -> str:
    """The warning about classes without samples: their ids in ranges, and
    their number when there are many."""
    text = f"classes {_id_ranges(excluded)} have no samples and are left out of the metrics"
    if len(excluded) > _SHOWN_RUNS:
        text += (
            f" ({len(excluded):,} of {num_classes:,} classes; NCReport.excluded and "
            "metrics.populated(stats).excluded list them all)"
        )
    return text


def centre_of(view: Classes, global_mean: str) -> Array:
    """The centre of the between-class spread: the mean of all samples, or of the class means."""
    xp = view.xp
    if global_mean == "samples":
        return (view.counts @ view.means) / xp.sum(view.counts)
    return xp.mean(view.means, axis=0)


def populated(stats: ClassStats, global_mean: str = "samples", *, warn: bool = True) -> Classes:
    """Restrict statistics to classes with samples (one host read of the counts).

    The statistics are checked first: one floating dtype and consistent
    shapes (no host read), then, in the host read, non-negative integer
    counts and finite means, variances, Gram and scale.
    """
    check_instance(stats, ClassStats, "stats")
    check_choice(global_mean, "global_mean", GLOBAL_MEANS)
    _check_fields(stats)
    return class_view(
        stats.counts,
        stats.scaled_means,
        stats.scaled_variances(),
        global_mean,
        stats=stats,
        warn=warn,
    )


def _check_fields(stats: ClassStats) -> None:
    """Shapes (K,), (K, d), (K,), (d, d), () and one floating dtype, else an error
    naming the field: a broadcast or a cast would silently change the metrics."""
    shift = stats.shift
    if getattr(shift, "ndim", None) != 2:
        shape = tuple(getattr(shift, "shape", ()))
        msg = f"`stats.shift` must have shape (num_classes, dim); got {shape}"
        raise ValueError(msg)
    k, d = shift.shape
    shapes = {
        "counts": (k,),
        "sums": (k, d),
        "sqnorms": (k,),
        "gram": (d, d),
        "scale": (),
    }
    for field, shape in shapes.items():
        value = getattr(stats, field)
        if value is None:
            continue
        if tuple(value.shape) != shape:
            msg = (
                f"`stats.{field}` must have shape {shape} to match `stats.shift` {(k, d)}; "
                f"got {tuple(value.shape)}"
            )
            raise ValueError(msg)
        if field != "counts" and value.dtype != shift.dtype:
            msg = (
                f"`stats.{field}` must have the dtype of `stats.shift`, {shift.dtype}; "
                f"got {value.dtype}"
            )
            raise TypeError(msg)


def _undefined(value: Array, view: Classes, name: str, extra: dict[str, Array] | None = None):
    """`value`, or NaN where the geometry leaves metric `name` undefined (no host read)."""
    xp = view.xp
    flags = {**view.flags(), **(extra or {})}
    bad = None
    for flag in DEGENERATE_METRICS.get(name, ()):
        if flag in flags:
            bad = flags[flag] if bad is None else bad | flags[flag]
    if bad is None:
        return value
    return xp.where(bad, xp.full_like(value, xp.nan), value)


# ----------------------------------------------------------------------------- NC1
def between_basis(centred: Array, xp: ModuleType) -> tuple[Array, Array]:
    """Orthonormal directions of the centred means and their inverse weights.

    Returns V (d, r) and w (r,) with ``pinv(Mc^T Mc) = V diag(w) V^T``:
    eigenpairs of ``Mc^T Mc`` whose eigenvalue is at most
    ``max(d, K) * eps * largest`` get weight 0 (NumPy's `pinv` default rule
    applied to Sigma_B). Works on the smaller of the (K, K) and (d, d) Grams, so
    no (d, d) matrix is formed when K <= d.
    """
    num, dim = centred.shape
    eps = xp.finfo(centred.dtype).eps
    if num <= dim:
        lam, u = xp.linalg.eigh(centred @ centred.T)
    else:
        lam, u = xp.linalg.eigh(centred.T @ centred)
    keep = lam > max(num, dim) * eps * xp.max(lam)
    safe = xp.where(keep, lam, xp.ones_like(lam))
    weights = xp.where(keep, 1 / safe, xp.zeros_like(lam))
    if num <= dim:
        basis = (centred.T @ u) * xp.where(keep, 1 / xp.sqrt(safe), xp.zeros_like(lam))
    else:
        basis = u * xp.astype(keep, u.dtype)
    return basis, weights


def nc1_from_scatter(scatter_along: Array, weights: Array, num_samples: Array) -> Array:
    """``tr(Sigma_W Sigma_B^+) / K`` from the within scatter along the basis."""
    xp = namespace(scatter=scatter_along)
    return xp.sum(scatter_along * weights) / num_samples


def nc1(stats: ClassStats, *, global_mean: str = "samples") -> Array:
    """Within-class variability relative to between-class spread.

    ``nc1 = tr(Sigma_W Sigma_B^+) / K`` with
    ``Sigma_W = (1/N) sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})^T`` and
    ``Sigma_B = (1/K) sum_k (mu_k - mu_G)(mu_k - mu_G)^T``. Singular values of
    Sigma_B at most ``max(d, K) * eps * largest`` count as zero. Computed inside
    the span of the centred means (rank <= K - 1): no (d, d) pseudo-inverse.
    NaN when the class means coincide (see `ncgeom.nc_report` for the reason).
    Needs statistics with the Gram (streamed or `ClassStats.from_features`);
    for in-memory features without a Gram use `ncgeom.nc_report`.

    Parameters
    ----------
    stats : ClassStats
    global_mean : {"samples", "classes"}
        Centre Sigma_B at the mean of all samples (default) or at the
        unweighted mean of the class means.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> x = np.array([[0.0, 1.0], [0.0, 3.0], [4.0, 0.0], [6.0, 0.0]])
    >>> stats = ClassStats.from_features(x, np.array([0, 0, 1, 1]), 2)
    >>> round(float(metrics.nc1(stats)), 6)
    0.034483
    """
    view = populated(stats, global_mean)
    value, rounding = nc1_and_rounding_of(view)
    xp = view.xp
    bound, host_value = (float(v) for v in to_host(xp.stack([rounding, value])))
    warn_nc1_rounding(bound, stats.dtype, nc1=host_value)
    return _undefined(value, view, "nc1")


def nc1_of(view: Classes) -> Array:
    """NC1 of a class view whose statistics keep the Gram (the kernel of `nc1`)."""
    return nc1_and_rounding_of(view)[0]


def nc1_and_rounding_of(view: Classes) -> tuple[Array, Array]:
    """NC1 of a class view whose statistics keep the Gram, and the relative
    bound on its error from the rounding of the Gram
    (`ncgeom.stats.ClassStats.scatter_along`; no host read)."""
    stats = view.stats
    if stats is None or stats.gram is None:
        msg = (
            "nc1 needs the within-class Gram: build the statistics with gram=True, "
            "or pass in-memory (features, labels) to nc_report"
        )
        raise ValueError(msg)
    xp = view.xp
    basis, weights = between_basis(view.centred, xp)
    along, rounding = stats.scatter_along(basis, weights)
    return nc1_from_scatter(along, weights, xp.astype(stats.num_samples, stats.dtype)), rounding


# ----------------------------------------------------------------------------- pairs
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
    return _undefined(values[name], view, name, flags)


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


def equinorm(stats: ClassStats, *, global_mean: str = "samples") -> Array:
    """Coefficient of variation (std / mean, ddof 0) of ``||mu_k - mu_G||``.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> stats = ClassStats.from_features(np.eye(3) - 1 / 3, np.arange(3), 3)
    >>> abs(float(metrics.equinorm(stats))) < 1e-12
    True
    """
    view = populated(stats, global_mean)
    return _undefined(equinorm_of(view), view, "equinorm")


def equinorm_of(view: Classes) -> Array:
    """Equinorm of a class view (the kernel of `equinorm`)."""
    xp = view.xp
    norms = xp.linalg.vector_norm(view.centred, axis=1)
    mean = xp.mean(norms)
    return xp.std(norms) / xp.where(mean > 0, mean, xp.ones_like(mean))


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


# ----------------------------------------------------------------------------- classifier
def scale_free(a: Array, xp: ModuleType) -> Array:
    """`a` divided by its largest absolute entry (unchanged if all zero): the
    squares of the result cannot overflow or underflow."""
    largest = xp.max(xp.abs(a))
    return a / xp.where(largest > 0, largest, xp.ones_like(largest))


def _normalised_distance(a: Array, b: Array, xp: ModuleType) -> Array:
    """``|| a/||a||_F - b/||b||_F ||_F``, scale-free."""
    a, b = scale_free(a, xp), scale_free(b, xp)
    norm_a, norm_b = xp.linalg.matrix_norm(a), xp.linalg.matrix_norm(b)
    # A zero matrix has no direction: NaN, without a division warning.
    nan = xp.full_like(norm_a, xp.nan)
    ok = (norm_a > 0) & (norm_b > 0)
    one = xp.ones_like(norm_a)
    diff = a / xp.where(ok, norm_a, one) - b / xp.where(ok, norm_b, one)
    return xp.where(ok, xp.linalg.matrix_norm(diff), nan)


def self_duality_error(
    classifier: Array, stats: ClassStats, *, global_mean: str = "samples"
) -> Array:
    """``|| nf(W) - nf(Mc) ||_F``: the classifier against the centred means.

    `classifier` is W with shape (K, d), one row per class (as in PyTorch's
    ``nn.Linear(d, K).weight``). NaN when W is zero on the classes with
    samples, or the centred means are (`classifier_flags`, `Classes.flags`).

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> means = np.eye(3) - 1 / 3
    >>> stats = ClassStats.from_features(means, np.arange(3), 3)
    >>> abs(float(metrics.self_duality_error(2 * means, stats))) < 1e-12
    True
    """
    weights = check_stats_classifier(classifier, stats)
    view = populated(stats, global_mean)
    value = self_duality_error_of(weights, view)
    return _undefined(value, view, "self_duality_error", classifier_flags(weights, view))


def classifier_flags(classifier: Array, view: Classes) -> dict[str, Array]:
    """0-d boolean flags (no host read) of a checked classifier (K, d).

    ``classifier``: its rows of the populated classes are all zero, so it has
    no direction to compare with the means (`self_duality_error` and
    `scaled_alignment_error` are undefined); see `DEGENERATE_REASONS`.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> view = metrics.populated(ClassStats.from_features(np.eye(2), np.arange(2), 2))
    >>> bool(metrics.classifier_flags(np.zeros((2, 2)), view)["classifier"])
    True
    """
    return {"classifier": view.xp.all(view.take(classifier) == 0)}


def self_duality_error_of(classifier: Array, view: Classes) -> Array:
    """Self-duality error of a checked classifier against a class view."""
    return _normalised_distance(view.take(classifier), view.centred, view.xp)


def scaled_alignment_error(classifier: Array, stats: ClassStats) -> Array:
    """``|| nf(W) - nf(S) ||_F`` with ``S_k = K sqrt(n_k) mu_k - sum_j sqrt(n_j) mu_j``.

    The imbalanced generalisation of self-duality: at the optimum of the
    ReLU unconstrained-feature model, W is aligned with the sqrt(n)-scaled
    class means, centred at their unweighted mean (S_k / K is
    ``sqrt(n_k) mu_k`` minus the mean of those rows). With equal counts, S is
    a multiple of the means centred at their mean, so the error equals
    `self_duality_error` (whose centre, the mean of all samples, is then the
    same point). NaN when W is zero on the classes with samples, or the
    sqrt(n)-scaled means coincide.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> means, counts = np.eye(2), np.array([4, 1])
    >>> x, y = np.repeat(means, counts, axis=0), np.repeat(np.arange(2), counts)
    >>> stats = ClassStats.from_features(x, y, 2)
    >>> w = 2 * np.sqrt(counts)[:, None] * means - (np.sqrt(counts)[:, None] * means).sum(0)
    >>> abs(float(metrics.scaled_alignment_error(w, stats))) < 1e-12
    True
    """
    weights = check_stats_classifier(classifier, stats)
    view = populated(stats)
    value = scaled_alignment_error_of(weights, view)
    return _undefined(value, view, "scaled_alignment_error", classifier_flags(weights, view))


def scaled_alignment_error_of(classifier: Array, view: Classes) -> Array:
    """Scaled alignment error of a checked classifier against a class view."""
    xp = view.xp
    scaled = xp.sqrt(view.counts)[:, None] * view.means
    target = view.size * scaled - xp.sum(scaled, axis=0)
    return _normalised_distance(view.take(classifier), target, xp)


# ----------------------------------------------------------------------------- NCC
@dataclass(frozen=True, eq=False)
class NCCAgreement:
    """How often the classifier agrees with the nearest-class-centre rule.

    ``matches`` and ``total`` are 0-d int64 arrays on the features' device;
    agreements of several batches `merge` exactly.
    """

    matches: Array
    total: Array

    @property
    def fraction(self) -> float:
        """``matches / total`` as a Python float (NaN when no rows were seen)."""
        matches, total = (
            int(v) for v in to_host(namespace(m=self.matches).stack([self.matches, self.total]))
        )
        return matches / total if total else float("nan")

    def merge(self, other: NCCAgreement) -> NCCAgreement:
        """Agreement over the rows of both."""
        return NCCAgreement(self.matches + other.matches, self.total + other.total)


@dataclass(frozen=True, eq=False)
class NearestCentre:
    """The nearest-class-centre rule in the span of the centred means.

    ``||x - mu_k||^2 = ||x - g||^2 - 2 (x - g).c_k + ||c_k||^2`` with
    ``c_k = mu_k - g``: only the coordinates of ``x - g`` along an orthonormal
    basis V of the centred means matter, so each row costs one product with
    V (d, r), r <= K - 1, instead of one with all K means.

    Attributes
    ----------
    basis : array (d, r)
    centred_along : array (K', r)
        Coordinates of the centred means along `basis`.
    sq : array (K',)
        Their squared norms.
    classes : array (K',), int64
        Class id of each row (the classes with a mean).
    """

    basis: Array
    centred_along: Array
    sq: Array
    classes: Array

    @classmethod
    def of(cls, centred: Array, classes: Array, basis: Array | None = None) -> NearestCentre:
        """The rule for centred means (K', d) of classes `classes` (K',)."""
        xp = namespace(centred=centred)
        if basis is None:
            basis, _ = between_basis(centred, xp)
        along = centred @ basis
        return cls(basis, along, xp.vecdot(along, along), classes)

    def nearest(self, along: Array) -> Array:
        """Class ids of the rows whose coordinates ``(x - g) V`` are `along`."""
        xp = namespace(along=along)
        scores = self.sq - 2 * (along @ self.centred_along.T)
        return xp.take(self.classes, xp.argmin(scores, axis=1))

    def matches(self, along: Array, logits: Array) -> Array:
        """Number of rows (0-d int64) where ``argmax(logits)`` is the nearest centre."""
        xp = namespace(along=along)
        agree = xp.argmax(logits, axis=1) == self.nearest(along)
        return xp.sum(xp.astype(agree, index_dtype(xp)))


def ncc_agreement(
    features: Array,
    classifier: Array,
    means: Array,
    bias: Array | None = None,
    *,
    chunk_size: int | None = None,
) -> NCCAgreement:
    """Rows where ``argmax_k (W x + b)_k`` equals ``argmin_k ||x - mu_k||``.

    Rows of `means` that are all NaN (classes without samples) are never the
    nearest. Features, classifier and bias must be finite. Rows are processed
    in chunks; the nearest centre is found in the span of the centred means
    (`NearestCentre`, the kernel `ncgeom.nc_report` uses too), scale-free.

    Parameters
    ----------
    features : array, shape (N, d)
    classifier : array, shape (K, d)
    means : array, shape (K, d)
    bias : array, shape (K,), optional
    chunk_size : int, optional
        Rows per chunk (>= 1).

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom.metrics import ncc_agreement
    >>> means = np.eye(2)
    >>> x = np.array([[0.9, 0.1], [0.2, 0.7], [0.6, 0.5]])
    >>> agreement = ncc_agreement(x, np.array([[1.0, 0.0], [0.0, 2.0]]), means)
    >>> int(agreement.matches), int(agreement.total), round(agreement.fraction, 3)
    (2, 3, 0.667)
    """
    xp = namespace(features=features, classifier=classifier, means=means, bias=bias)
    check_features(features, xp)
    num, dim = features.shape
    if dim == 0:
        msg = f"`features` must have at least one column; got shape {tuple(features.shape)}"
        raise ValueError(msg)
    for name, value in (("classifier", classifier), ("means", means)):
        if value.ndim != 2 or value.shape[1] != dim:
            msg = f"`{name}` must have shape (num_classes, {dim}); got {tuple(value.shape)}"
            raise ValueError(msg)
        check_features(value, xp, name, "num_classes")
    if classifier.shape[0] != means.shape[0]:
        msg = (
            f"`classifier` and `means` must have one row per class; got {classifier.shape[0]} "
            f"and {means.shape[0]}"
        )
        raise ValueError(msg)
    if bias is not None:
        check_bias_shape(bias, classifier.shape[0], finite=False)  # read below with the rest
    features, classifier, means = detach(features), detach(classifier), detach(means)
    bias = None if bias is None else detach(bias)
    # The dtype rule of the statistics: half precision in float32, longdouble
    # in float64 (with a warning), float64 off on JAX without x64 (likewise).
    dtype = accumulation_dtype(xp, xp.result_type(features.dtype, classifier.dtype, means.dtype))
    means = xp.astype(means, dtype)
    missing = xp.all(xp.isnan(means), axis=1)
    finite = [
        ("features", xp.all(xp.isfinite(features))),
        ("classifier", xp.all(xp.isfinite(classifier))),
        ("means", xp.all(xp.isfinite(means) | missing[:, None])),
        ("present means", xp.sum(xp.astype(~missing, index_dtype(xp))) >= 1),
    ]
    if bias is not None:
        finite.append(("bias", xp.all(xp.isfinite(bias))))
    ok = to_host(xp.stack([xp.astype(f, index_dtype(xp)) for _, f in finite]))
    for (name, _), good in zip(finite, ok, strict=True):
        if not good:
            if name == "present means":
                msg = "`means` must have at least one row without NaN; got none"
            else:
                what = "finite, or NaN in whole rows (classes without samples)"
                need = what if name == "means" else "finite"
                msg = f"`{name}` must be {need}; got NaN or Inf entries"
            raise ValueError(msg)
    present = xp.asarray(
        [int(k) for k, gone in enumerate(to_host(missing)) if not gone],
        dtype=index_dtype(xp),
        device=array_device(features),
    )
    kept = xp.take(means, present, axis=0)
    # One scale for features and means (the rule is scale-free), and one for
    # the classifier and bias (argmax is too): no square can overflow.
    largest = xp.max(xp.abs(kept))
    scale = xp.where(largest > 0, largest, xp.ones_like(largest))
    weight = xp.astype(classifier, dtype)
    w_largest = xp.max(xp.abs(weight))
    w_scale = xp.where(w_largest > 0, w_largest, xp.ones_like(w_largest))
    weight = weight / w_scale
    shift = None if bias is None else xp.astype(bias, dtype) / w_scale
    kept = kept / scale
    centre = xp.mean(kept, axis=0)
    rule = NearestCentre.of(kept - centre, present)
    rows = rows_per_chunk(
        num, max(dim, classifier.shape[0]), dtype, xp, chunk_size, array_device(features)
    )
    matches = xp.zeros((), dtype=index_dtype(xp), device=array_device(features))
    for part_rows in row_chunks(num, rows):
        x = xp.astype(features[part_rows, ...], dtype) / scale
        logits = x @ weight.T
        if shift is not None:
            logits = logits + shift / scale
        matches = matches + rule.matches((x - centre) @ rule.basis, logits)
    total = xp.asarray(num, dtype=index_dtype(xp), device=array_device(features))
    return NCCAgreement(matches, total)
