"""The populated classes of a `ClassStats`, as every metric sees them: `Classes`.

`populated` (and `class_view`) checks the statistics, leaves out classes without
samples with a warning that names them, and centres the means as
`global_mean` says. The flags of `Classes.flags` mark geometry that leaves a
metric undefined; `undefined` turns such a metric into NaN (no host read).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from .._lib.backend import array_device, index_dtype, namespace, to_host
from .._lib.validate import check_choice, check_instance, check_positive_int
from .stats import ClassStats

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
    filtered: tuple[int, ...] = ()  # classes with samples left out by `CountFilter`

    @property
    def size(self) -> int:
        return len(self.index)

    @functools.cached_property
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

    def spread(self, values: Array, axis: int = 0) -> Array:
        """The inverse of `take`: values of the populated classes along `axis`
        (K' entries) as values of all K classes, NaN for the classes left out
        (one upload of their positions when any are)."""
        if not self.excluded:
            return values
        xp = self.xp
        where = np.full(len(self.host_counts), self.size)
        where[list(self.index)] = np.arange(self.size)
        shape = list(values.shape)
        shape[axis] = 1
        nan = xp.full(tuple(shape), xp.nan, dtype=values.dtype, device=self.device)
        position = xp.asarray(where, dtype=index_dtype(xp), device=self.device)
        return xp.take(xp.concat([values, nan], axis=axis), position, axis=axis)

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
    "centred_zero": "a class mean equals the global mean (a zero centred norm has no log)",
    "duality_mean": "the mean of w_k . (mu_k - mu_G) is zero (nothing to divide its spread by)",
    "zero_direction": "a class mean equals the global mean to rounding (its centred mean has "
    "no direction)",
    "same_direction": "two centred class means point the same way (their angle is below "
    "rounding, where the kernel is infinite)",
    "riesz_singular": "two centred class means point the same way (their angle is below "
    "rounding, where the Riesz kernel with s > 0 is infinite)",
    "classifier_row": "a classifier row is zero (it has no direction)",
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
    "nc1_trace_ratio": ("means", "between"),
    "log_equinorm": ("means", "between", "centred_zero"),
    "classifier_equinorm": ("classifier",),
    "uniform_duality": ("means", "between", "classifier", "duality_mean"),
    "distance_norms": ("means", "between", "classifier"),
    "ood_deviation": ("means",),
    "equiangularity_std": ("means", "between", "zero_direction"),
    "interference_mean": ("means", "between", "zero_direction"),
    "interference_min": ("means", "between", "zero_direction"),
    "interference_max": ("means", "between", "zero_direction"),
    "log_energy": ("means", "between", "zero_direction", "same_direction"),
    "log_energy_variance": ("means", "between", "zero_direction", "same_direction"),
    "riesz_log_energy": ("means", "between", "zero_direction", "riesz_singular"),
    "riesz_log_variance": ("means", "between", "zero_direction", "riesz_singular"),
    "classifier_equiangularity": ("classifier", "classifier_row"),
    "classifier_etf_error": ("classifier",),
    "nearest_etf_distance": ("means", "between"),
    "nearest_frame_distance": ("means",),
    "optimum_frame_distance": ("means",),
    "gof_error": ("means",),
    "classifier_gram_error": ("classifier",),
    "logit_structure_error": ("means", "classifier"),
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
    counts_kept: CountFilter | None = None,
) -> Classes:
    """The populated classes of class `counts` (K,) and scaled `means` (K, d).

    One host read: the counts, and whether the means (and the `variances`,
    and the Gram and scale of `stats`, where given) are finite; `what` names
    their source in the error otherwise. Counts must be non-negative
    integers. Classes without samples are left out, with a warning that
    names them (in ranges, the first few when there are many:
    `Classes.excluded` holds them all); at least two classes must have
    samples. `counts_kept` leaves out, without a warning, the classes whose
    count lies outside its bounds (`Classes.filtered`; they are in
    `Classes.excluded` too).
    """
    check_choice(global_mean, "global_mean", GLOBAL_MEANS)
    bounds = counts_kept or CountFilter()
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
    index = tuple(int(k) for k in range(means.shape[0]) if bounds.keeps(int(host_counts[k])))
    kept_ids = set(index)
    excluded = tuple(k for k in range(means.shape[0]) if k not in kept_ids)
    empty = tuple(k for k in excluded if host_counts[k] == 0)
    filtered = tuple(k for k in excluded if host_counts[k] > 0)
    if len(index) < 2:
        named = "stats" if argument == "stats" else "labels"
        held = (
            f"counts {host_counts.tolist()}"
            if len(host_counts) <= 2 * _SHOWN_RUNS
            else f"classes with samples: {_id_ranges(index)} of {len(host_counts):,}"
        )
        if filtered:
            msg = (
                f"{bounds.describe()} must keep at least two classes; it keeps "
                f"{len(index)} ({held})"
            )
        else:
            msg = (
                f"`{named}` must hold at least two classes with samples; got {len(index)} ({held})"
            )
        raise ValueError(msg)
    if empty and warn:
        warnings.warn(_empty_classes_message(empty, len(host_counts)), UserWarning, stacklevel=3)

    def take(rows: Array) -> Array:
        return _take_rows(rows, index, excluded, xp, device)

    n = xp.astype(take(counts), means.dtype)
    kept = take(means)
    host = tuple(int(c) for c in host_counts)
    spread = None if variances is None else take(variances)
    weights = n / xp.sum(n) if global_mean == "samples" else xp.ones_like(n) / len(index)
    view = Classes(
        xp, stats, index, excluded, host, n, kept, kept[0, ...], spread, device, weights, filtered
    )
    return dataclasses.replace(view, global_mean=centre_of(view, global_mean))


def largest_entry(a: Array, xp: ModuleType) -> Array:
    """Largest absolute entry of `a` (0-d), 1 where `a` is all zero: a divisor
    that leaves entries in [-1, 1], whose squares cannot overflow or underflow."""
    largest = xp.max(xp.abs(a))
    return xp.where(largest > 0, largest, xp.ones_like(largest))


@dataclass(frozen=True)
class CountFilter:
    """Keep the classes with ``min_count <= n_k <= max_count`` samples (both inclusive).

    The default keeps every class with samples. The metrics then see only
    the kept classes: K, the global mean over samples and every average
    count them alone.

    Examples
    --------
    >>> from ncgeom.measure.classes import CountFilter
    >>> bounds = CountFilter.of(min_count=10)
    >>> bounds.keeps(9), bounds.keeps(10), bounds.describe()
    (False, True, '`min_count`=10')
    """

    min_count: int = 1
    max_count: int | None = None

    @classmethod
    def of(cls, min_count: int | None = None, max_count: int | None = None) -> CountFilter:
        """Checked bounds: positive integers, `min_count` <= `max_count`."""
        low = 1 if min_count is None else check_positive_int(min_count, "min_count")
        high = None if max_count is None else check_positive_int(max_count, "max_count")
        if high is not None and high < low:
            msg = f"`max_count` must be at least `min_count` ({low}); got max_count={high}"
            raise ValueError(msg)
        return cls(low, high)

    @property
    def active(self) -> bool:
        """Whether it can leave out a class with samples."""
        return self.min_count > 1 or self.max_count is not None

    def keeps(self, count: int) -> bool:
        """Whether a class of `count` samples is kept (never an empty class)."""
        if count < max(self.min_count, 1):
            return False
        return self.max_count is None or count <= self.max_count

    def describe(self) -> str:
        """The bounds as the user gave them, e.g. "`min_count`=10, `max_count`=500"."""
        parts = []
        if self.min_count > 1:
            parts.append(f"`min_count`={self.min_count}")
        if self.max_count is not None:
            parts.append(f"`max_count`={self.max_count}")
        return ", ".join(parts) or "the default class filter"

    def reason(self, count: int) -> str:
        """Why a class of `count` samples is left out."""
        if count == 0:
            return "no samples"
        if count < self.min_count:
            return f"{count} samples, fewer than min_count={self.min_count}"
        return f"{count} samples, more than max_count={self.max_count}"


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
    >>> from ncgeom.measure.classes import _id_ranges
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


def populated(
    stats: ClassStats,
    global_mean: str = "samples",
    *,
    warn: bool = True,
    min_count: int | None = None,
    max_count: int | None = None,
) -> Classes:
    """Restrict statistics to classes with samples (one host read of the counts).

    The statistics are checked first: one floating dtype and consistent
    shapes (no host read), then, in the host read, non-negative integer
    counts and finite means, variances, Gram and scale. `min_count` and
    `max_count` (inclusive) keep only the classes with that many samples
    (`CountFilter`).

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats
    >>> from ncgeom.metrics import populated
    >>> y = np.repeat(np.arange(3), [50, 5, 20])
    >>> stats = ClassStats.from_features(np.eye(3)[y], y, 3)
    >>> view = populated(stats, min_count=10)
    >>> view.index, view.filtered
    ((0, 2), (1,))
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
        counts_kept=CountFilter.of(min_count, max_count),
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


def undefined(value: Array, view: Classes, name: str, extra: dict[str, Array] | None = None):
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
