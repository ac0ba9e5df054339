"""Variants of the collapse metrics that need no pass over class pairs.

The trace-ratio NC1, the spread of the log norms of the centred means, the
classifier's equinorm, bias collapse, uniform duality (the spread of
``s_k = w_k . (mu_k - mu_G)``), per-class distance norms and the deviation
from orthogonality to an out-of-distribution mean. Each public metric takes a
`ClassStats` (and a classifier) and returns a 0-d array on the statistics'
namespace and device (`distance_norms`: one value per class); each has a
kernel ``<name>_of`` that works on an existing `Classes` view (`populated`)
without checking it again: ``<name>_of(view)`` for the means,
``<name>_of(classifier, view)`` for a checked classifier (as
`self_duality_error_of`), ``bias_collapse_of(classifier, bias, view)`` and
``ood_deviation_of(view, ood_mean)``. The kernels leave degenerate geometry
unmasked: `undefined` with the flags of `Classes.flags`, the classifier flag
and `variant_flags` makes it NaN.

Every metric is computed from the statistics in units of their scale. The
scale-free ones normalise each row by its largest entry before any square, so
nothing overflows or underflows at any feature scale; the two with units
(`bias_collapse`, `uniform_duality_variance`) are multiplied back by the
scale in float64 (`wide_float`). Classes without samples are left out.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from .._lib.backend import detach, namespace, to_host, wide_float
from .._lib.validate import (
    check_bias_vector,
    check_class_matrix,
    check_container,
    check_finite,
    check_finite_arrays,
    check_instance,
    check_stats_classifier,
)
from .classes import Classes, largest_entry, populated, undefined
from .stats import ClassStats

__all__ = [
    "VARIANT_FLAGS",
    "bias_collapse",
    "bias_collapse_of",
    "check_ood_mean",
    "check_ood_vector",
    "classifier_equinorm",
    "classifier_equinorm_of",
    "distance_norms",
    "distance_norms_of",
    "log_equinorm",
    "log_equinorm_of",
    "nc1_trace_ratio",
    "nc1_trace_ratio_of",
    "ood_deviation",
    "ood_deviation_of",
    "uniform_duality",
    "uniform_duality_of",
    "uniform_duality_variance",
    "uniform_duality_variance_of",
    "variant_flags",
]

Array = Any

#: The flags `variant_flags` adds to those of `Classes.flags` and
#: `classifier_flags` (their reasons are in `DEGENERATE_REASONS`).
VARIANT_FLAGS = ("centred_zero", "duality_mean")


# ----------------------------------------------------------------------------- helpers
def _safe(value: Array, ok: Array, xp: ModuleType) -> Array:
    """`value` where `ok`, else 1 (a divisor that cannot warn)."""
    return xp.where(ok, value, xp.ones_like(value))


def _scaled_rows(rows: Array, xp: ModuleType) -> tuple[Array, Array]:
    """Each row's largest absolute entry m (K,), and the rows over m (zero
    rows stay zero): entries in [-1, 1], whose squares cannot overflow."""
    top = xp.max(xp.abs(rows), axis=1)
    return top, rows / _safe(top, top > 0, xp)[:, None]


def _row_norms(rows: Array, xp: ModuleType) -> tuple[Array, Array]:
    """Each row's largest absolute entry m (K,) and the norm r of the row over
    m, in [1, sqrt(d)] (0 for a zero row): ``||row|| = m r`` with no square
    that could overflow or underflow."""
    top, scaled = _scaled_rows(rows, xp)
    return top, xp.linalg.vector_norm(scaled, axis=1)


def _unit_rows(rows: Array, xp: ModuleType) -> tuple[Array, Array]:
    """Rows divided by their norms, and which rows are non-zero (zero rows stay zero)."""
    top, scaled = _scaled_rows(rows, xp)
    alive = top > 0
    rest = xp.linalg.vector_norm(scaled, axis=1)
    return scaled / _safe(rest, alive, xp)[:, None], alive


def _mean_and_variance(values: Array, xp: ModuleType, ddof: int = 0) -> tuple[Array, Array]:
    """Mean and variance (two passes) of a vector in its own dtype."""
    mean = xp.mean(values)
    dev = values - mean
    return mean, xp.sum(dev * dev) / (values.shape[0] - ddof)


def _scale_of(view: Classes, xp: ModuleType) -> Array:
    """The statistics' scale as a 0-d wide float (1 for a view without statistics)."""
    if view.stats is None:
        return xp.ones((), dtype=wide_float(xp), device=view.device)
    return xp.astype(view.stats.unit_scale, wide_float(xp))


def _duality_scores(view: Classes, classifier: Array) -> tuple[Array, Array]:
    """``s_k = w_k . c_k`` of the populated classes over ``a = max |W|`` (in
    units of the statistics' scale), as wide floats, and ``a`` (0-d wide)."""
    xp = view.xp
    rows = view.take(classifier)
    largest = largest_entry(rows, xp)
    scores = xp.vecdot(rows / largest, xp.astype(view.centred, rows.dtype, copy=False))
    return xp.astype(scores, wide_float(xp)), xp.astype(largest, wide_float(xp))


def variant_flags(view: Classes, classifier: Array | None = None) -> dict[str, Array]:
    """0-d boolean flags (no host read) of the geometry that leaves a variant undefined.

    ``centred_zero``: a class mean equals the global mean, so its centred
    norm is zero and its log is undefined (`log_equinorm`).
    ``duality_mean``: with a checked classifier (K, d), the mean of
    ``s_k = w_k . c_k`` is zero, so their coefficient of variation is
    undefined (`uniform_duality`). See `DEGENERATE_REASONS`.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats
    >>> from ncgeom.measure.classes import populated
    >>> from ncgeom.measure.variants import variant_flags
    >>> x = np.array([[-1.0], [0.0], [1.0]])
    >>> view = populated(ClassStats.from_features(x, np.arange(3), 3))
    >>> bool(variant_flags(view)["centred_zero"])
    True
    """
    xp = view.xp
    flags = {"centred_zero": xp.any(xp.all(view.centred == 0, axis=1))}
    if classifier is not None:
        scores, _ = _duality_scores(view, classifier)
        flags["duality_mean"] = xp.mean(scores) == 0
    return flags


# ----------------------------------------------------------------------------- NC1
def nc1_trace_ratio(stats: ClassStats, *, global_mean: str = "samples") -> Array:
    """NC1 as a quotient of traces: ``tr(Sigma_W) / tr(Sigma_B)``.

    ``tr(Sigma_W) = (1/N) sum_k n_k v_k`` (the pooled within-class variance,
    ``v_k = (1/n_k) sum_i ||x_i - mu_k||^2``) and
    ``tr(Sigma_B) = (1/K) sum_k ||mu_k - mu_G||^2``. Needs no Gram and no
    pseudo-inverse; scale-free. NaN when the class means coincide.

    Parameters
    ----------
    stats : ClassStats
    global_mean : {"samples", "classes"}
        Centre of Sigma_B: the mean of all samples, or of the class means.

    Returns
    -------
    array, shape ()
        In the statistics' dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats
    >>> from ncgeom.measure.variants import nc1_trace_ratio
    >>> x = np.array([[0.0, 1.0], [0.0, 3.0], [4.0, 0.0], [6.0, 0.0]])
    >>> stats = ClassStats.from_features(x, np.array([0, 0, 1, 1]), 2)
    >>> round(float(nc1_trace_ratio(stats)), 6)
    0.137931
    """
    view = populated(stats, global_mean)
    return undefined(nc1_trace_ratio_of(view), view, "nc1_trace_ratio")


def nc1_trace_ratio_of(view: Classes) -> Array:
    """The trace-ratio NC1 of a class view (the kernel of `nc1_trace_ratio`)."""
    xp = view.xp
    wide = wide_float(xp)
    counts = xp.astype(view.counts, wide)
    within = xp.sum(counts * xp.astype(view.variances, wide)) / xp.sum(counts)
    centred = view.centred
    between = xp.mean(xp.astype(xp.vecdot(centred, centred), wide))
    ratio = within / _safe(between, between > 0, xp)
    return xp.astype(ratio, view.means.dtype)


# ----------------------------------------------------------------------------- norms
def log_equinorm(stats: ClassStats, *, global_mean: str = "samples") -> Array:
    """Population standard deviation (ddof 0) of ``log ||mu_k - mu_G||``.

    Natural logarithm; scale-free (a common factor of the features shifts
    every log by the same amount). For norms close to each other it is about
    `equinorm` (std/mean of the norms). NaN when a class mean equals the
    global mean (a zero norm has no log) or the class means coincide.

    Parameters
    ----------
    stats : ClassStats
    global_mean : {"samples", "classes"}
        Centre of the means: the mean of all samples, or of the class means.

    Returns
    -------
    array, shape ()
        In the statistics' dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats
    >>> from ncgeom.measure.variants import log_equinorm
    >>> x = np.array([[1.0, 0.0], [0.0, 4.0], [-1.0, -4.0]])
    >>> stats = ClassStats.from_features(x, np.arange(3), 3)
    >>> norms = np.linalg.norm(x - x.mean(axis=0), axis=1)
    >>> bool(np.isclose(float(log_equinorm(stats)), np.log(norms).std()))
    True
    """
    view = populated(stats, global_mean)
    return undefined(log_equinorm_of(view), view, "log_equinorm", variant_flags(view))


def log_equinorm_of(view: Classes) -> Array:
    """Log equinorm of a class view (the kernel of `log_equinorm`; not masked
    for zero norms: see `variant_flags`)."""
    xp = view.xp
    wide = wide_float(xp)
    top, rest = _row_norms(view.centred, xp)
    alive = top > 0
    # log ||c|| = log m + log r, in the wide float: no square, no rounding of log m.
    logs = xp.log(xp.astype(_safe(top, alive, xp), wide)) + xp.log(
        xp.astype(_safe(rest, alive, xp), wide)
    )
    _, variance = _mean_and_variance(logs, xp)
    return xp.astype(xp.sqrt(variance), view.means.dtype)


def classifier_equinorm(classifier: Array, stats: ClassStats | None = None) -> Array:
    """Coefficient of variation (std/mean, ddof 0) of the classifier's row norms ``||w_k||``.

    With `stats`, over the rows of the classes with samples; without, over
    every row. Scale-free. NaN when those rows are all zero.

    Parameters
    ----------
    classifier : array, shape (K, d)
        Last-layer weights W, one row per class.
    stats : ClassStats, optional
        Statistics of the same K and d, on the same namespace and device.

    Returns
    -------
    array, shape ()
        On the classifier's namespace and device.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom.measure.variants import classifier_equinorm
    >>> w = np.array([[3.0, 4.0], [0.0, 10.0]])
    >>> round(float(classifier_equinorm(w)), 6)
    0.333333
    """
    if stats is not None:
        weights = check_stats_classifier(classifier, stats)
        view = populated(stats)
        value = classifier_equinorm_of(weights, view)
        return undefined(value, view, "classifier_equinorm", _zero_classifier(view, weights))
    xp = namespace(classifier=classifier)
    check_class_matrix(classifier, "classifier", xp)
    check_finite(classifier, "classifier", xp)
    rows = detach(classifier)
    value = _row_norm_spread(rows, xp)
    zero = xp.all(rows == 0)
    return xp.where(zero, xp.full_like(value, xp.nan), value)


def classifier_equinorm_of(classifier: Array, view: Classes) -> Array:
    """Classifier equinorm over the populated classes of a view, for a checked
    classifier (K, d) (the kernel of `classifier_equinorm`)."""
    return _row_norm_spread(view.take(classifier), view.xp)


def _zero_classifier(view: Classes, classifier: Array) -> dict[str, Array]:
    """The ``classifier`` flag: W is zero on the populated classes."""
    return {"classifier": view.xp.all(view.take(classifier) == 0)}


def _row_norm_spread(rows: Array, xp: ModuleType) -> Array:
    """std/mean (ddof 0) of the row norms, from norms over their largest."""
    wide = wide_float(xp)
    top, rest = _row_norms(rows, xp)
    norms = xp.astype(top, wide) * xp.astype(rest, wide)
    norms = norms / largest_entry(norms, xp)
    mean, variance = _mean_and_variance(norms, xp)
    return xp.astype(xp.sqrt(variance) / _safe(mean, mean > 0, xp), rows.dtype)


# ----------------------------------------------------------------------------- classifier
def bias_collapse(
    classifier: Array,
    bias: Array | None,
    stats: ClassStats,
    *,
    global_mean: str = "samples",
) -> Array:
    """``|| W mu_G + b ||_2`` over the rows of the classes with samples.

    The logits of the global mean: zero when the bias cancels the global
    mean's logits. In logit units (W times features), computed in units of
    the statistics' scale and multiplied back in float64, so it is right at
    any feature scale. The product ``W mu_G`` is taken in the statistics'
    dtype: its error is about ``d eps sum_i |w_ki mu_G,i|`` per row, the
    size of the rounding of ``mu_G`` itself.

    Parameters
    ----------
    classifier : array, shape (K, d)
        Last-layer weights W, one row per class.
    bias : array, shape (K,), or None
        Last-layer bias b; None for a bias-free classifier (``b = 0``).
    stats : ClassStats
    global_mean : {"samples", "classes"}
        mu_G: the mean of all samples, or of the class means.

    Returns
    -------
    array, shape ()
        float64 (`wide_float`), on the statistics' device.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats
    >>> from ncgeom.measure.variants import bias_collapse
    >>> stats = ClassStats.from_features(np.eye(2), np.arange(2), 2)
    >>> w = np.array([[2.0, 0.0], [0.0, 4.0]])
    >>> float(bias_collapse(w, np.array([-1.0, -2.0]), stats))
    0.0
    >>> round(float(bias_collapse(w, None, stats)), 6)
    2.236068
    """
    weights = check_stats_classifier(classifier, stats, finite=False)
    xp = namespace(stats=stats.shift, classifier=classifier, bias=bias)
    if bias is not None:
        check_bias_vector(bias, stats.num_classes, xp, finite=False)
        bias = detach(bias)
    check_finite_arrays(xp, classifier=weights, bias=bias)
    view = populated(stats, global_mean)
    return bias_collapse_of(weights, bias, view)


def bias_collapse_of(classifier: Array, bias: Array | None, view: Classes) -> Array:
    """Bias collapse of a checked classifier (K, d) and bias (K,) against a
    class view (the kernel of `bias_collapse`; float64)."""
    xp = view.xp
    wide = wide_float(xp)
    rows = view.take(classifier)
    largest = largest_entry(rows, xp)
    logits = (rows / largest) @ xp.astype(view.global_mean, rows.dtype)
    logits = xp.astype(logits, wide) * (xp.astype(largest, wide) * _scale_of(view, xp))
    if bias is not None:
        logits = logits + xp.astype(view.take(bias), wide)
    top = largest_entry(logits, xp)
    return top * xp.linalg.vector_norm(logits / top)


def uniform_duality(
    classifier: Array, stats: ClassStats, *, global_mean: str = "samples"
) -> Array:
    """Coefficient of variation of ``s_k = w_k . (mu_k - mu_G)``: ``std(s) / |mean(s)|``.

    Population std (ddof 0). Zero when every class has the same similarity
    of its classifier row and centred mean (uniform duality); scale-free in
    W and in the features. NaN when the mean of ``s_k`` is zero, W is zero on
    the classes with samples, or the class means coincide.

    Parameters
    ----------
    classifier : array, shape (K, d)
        Last-layer weights W, one row per class.
    stats : ClassStats
    global_mean : {"samples", "classes"}
        mu_G: the mean of all samples, or of the class means.

    Returns
    -------
    array, shape ()
        In the dtype of the classifier and statistics together.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats
    >>> from ncgeom.measure.variants import uniform_duality
    >>> x = np.eye(3) - 1 / 3
    >>> stats = ClassStats.from_features(x, np.arange(3), 3)
    >>> abs(float(uniform_duality(2 * x, stats))) < 1e-12
    True
    >>> round(float(uniform_duality(np.diag([1.0, 2.0, 3.0]), stats)), 6)
    0.408248
    """
    weights = check_stats_classifier(classifier, stats)
    view = populated(stats, global_mean)
    value = uniform_duality_of(weights, view)
    extra = {**_zero_classifier(view, weights), **variant_flags(view, weights)}
    return undefined(value, view, "uniform_duality", extra)


def uniform_duality_of(classifier: Array, view: Classes) -> Array:
    """Uniform duality of a checked classifier (K, d) against a class view
    (the kernel of `uniform_duality`; not masked for a zero mean: see
    `variant_flags`)."""
    xp = view.xp
    scores, _ = _duality_scores(view, classifier)
    mean, variance = _mean_and_variance(scores, xp)
    size = xp.abs(mean)
    value = xp.sqrt(variance) / _safe(size, size > 0, xp)
    return xp.astype(value, xp.result_type(view.means.dtype, classifier.dtype))


def uniform_duality_variance(
    classifier: Array, stats: ClassStats, *, global_mean: str = "samples"
) -> Array:
    """Sample variance (ddof 1) of ``s_k = w_k . (mu_k - mu_G)`` over the classes with samples.

    In units of W times the features, computed in units of the statistics'
    scale and multiplied back in float64: right at any feature scale. The
    value the public UNC3 example logs (``similarities(W, M, mu_G).var()``).

    Parameters
    ----------
    classifier : array, shape (K, d)
        Last-layer weights W, one row per class.
    stats : ClassStats
    global_mean : {"samples", "classes"}
        mu_G: the mean of all samples, or of the class means.

    Returns
    -------
    array, shape ()
        float64 (`wide_float`), on the statistics' device.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats
    >>> from ncgeom.measure.variants import uniform_duality_variance
    >>> x = np.array([[1.0, 0.0], [-1.0, 0.0]])
    >>> stats = ClassStats.from_features(x, np.arange(2), 2)
    >>> float(uniform_duality_variance(np.array([[1.0, 0.0], [-3.0, 0.0]]), stats))
    2.0
    """
    weights = check_stats_classifier(classifier, stats)
    view = populated(stats, global_mean)
    return uniform_duality_variance_of(weights, view)


def uniform_duality_variance_of(classifier: Array, view: Classes) -> Array:
    """UNC3 variance of a checked classifier (K, d) against a class view (the
    kernel of `uniform_duality_variance`; float64)."""
    xp = view.xp
    scores, largest = _duality_scores(view, classifier)
    _, variance = _mean_and_variance(scores, xp, ddof=1)
    factor = largest * _scale_of(view, xp)
    return variance * factor * factor


def distance_norms(classifier: Array, stats: ClassStats, *, global_mean: str = "samples") -> Array:
    """Per class: ``|| w_k/||w_k|| - c_k/||c_k|| ||`` with ``c_k = mu_k - mu_G``.

    Between 0 (the classifier row points along the centred mean) and 2.
    Scale-free. NaN for classes without samples, for a zero row ``w_k`` or a
    zero ``c_k`` (no direction), and for every class when W is zero on the
    classes with samples or the class means coincide.

    Parameters
    ----------
    classifier : array, shape (K, d)
        Last-layer weights W, one row per class.
    stats : ClassStats
    global_mean : {"samples", "classes"}
        mu_G: the mean of all samples, or of the class means.

    Returns
    -------
    array, shape (K,)
        One value per class, in the dtype of the classifier and statistics
        together.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats
    >>> from ncgeom.measure.variants import distance_norms
    >>> stats = ClassStats.from_features(np.eye(2), np.arange(2), 2)
    >>> w = np.array([[3.0, -3.0], [0.0, 1.0]])
    >>> [round(float(v), 6) for v in distance_norms(w, stats)]
    [0.0, 0.765367]
    """
    weights = check_stats_classifier(classifier, stats)
    view = populated(stats, global_mean)
    value = undefined(
        distance_norms_of(weights, view, spread=False),
        view,
        "distance_norms",
        _zero_classifier(view, weights),
    )
    return view.spread(value)


def distance_norms_of(classifier: Array, view: Classes, *, spread: bool = True) -> Array:
    """Distance norms of a checked classifier (K, d) against a class view (the
    kernel of `distance_norms`): shape (K,) with NaN for the classes left out,
    or with ``spread=False`` (K',), the populated classes only."""
    xp = view.xp
    w_unit, w_alive = _unit_rows(view.take(classifier), xp)
    c_unit, c_alive = _unit_rows(view.centred, xp)
    dtype = xp.result_type(w_unit.dtype, c_unit.dtype)
    dist = xp.linalg.vector_norm(xp.astype(w_unit, dtype) - xp.astype(c_unit, dtype), axis=1)
    dist = xp.where(w_alive & c_alive, dist, xp.full_like(dist, xp.nan))
    return view.spread(dist) if spread else dist


# ----------------------------------------------------------------------------- NC5
def ood_deviation(stats: ClassStats, ood_mean: Array) -> Array:
    """NC5: ``mean_k |cos(mu_k, mu_OOD)|`` over the classes with samples, on uncentred means.

    ``mu_OOD`` is the mean feature of out-of-distribution data. A zero class
    mean has no direction and counts as cosine 0 (as in
    `orthogonality_error`). Scale-free in the features and in `ood_mean`.
    NaN when every class mean is zero.

    Parameters
    ----------
    stats : ClassStats
    ood_mean : array, shape (d,)
        Finite and non-zero, on the statistics' namespace and device.

    Returns
    -------
    array, shape ()
        In the dtype of the statistics and `ood_mean` together.

    Raises
    ------
    TypeError
        `ood_mean` is from another array library or not real floating.
    ValueError
        `ood_mean` has another shape, holds NaN or Inf, or is zero.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats
    >>> from ncgeom.measure.variants import ood_deviation
    >>> stats = ClassStats.from_features(np.array([[1.0, 0.0], [1.0, 1.0]]), np.arange(2), 2)
    >>> round(float(ood_deviation(stats, np.array([0.0, 2.0]))), 6)
    0.353553
    """
    ood = check_ood_mean(ood_mean, stats)
    view = populated(stats)
    return undefined(ood_deviation_of(view, ood), view, "ood_deviation")


def check_ood_mean(ood_mean: Array, stats: ClassStats) -> Array:
    """`ood_mean` as a finite, non-zero (d,) vector of the statistics'
    namespace and device (detached), else the error naming it (one host read).

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats
    >>> from ncgeom.measure.variants import check_ood_mean
    >>> stats = ClassStats.from_features(np.eye(2), np.arange(2), 2)
    >>> check_ood_mean(np.zeros(2), stats)
    Traceback (most recent call last):
    ...
    ValueError: `ood_mean` must be non-zero (a direction); got all 2 entries 0
    """
    check_instance(stats, ClassStats, "stats")
    return check_ood_vector(ood_mean, stats.dim, like=stats.shift)


def check_ood_vector(ood_mean: Array, dim: int, *, like: Array, like_name: str = "stats") -> Array:
    """`ood_mean` as a finite, non-zero (dim,) real vector of the namespace and
    device of `like` (an array of the data it goes with, the argument
    `like_name`), detached; else a TypeError or ValueError naming it (one
    host read)."""
    check_container(ood_mean, "ood_mean")
    xp = namespace(**{like_name: like, "ood_mean": ood_mean})
    if tuple(ood_mean.shape) != (dim,):
        msg = f"`ood_mean` must have shape ({dim},), one entry per feature; got "
        raise ValueError(msg + str(tuple(ood_mean.shape)))
    if not xp.isdtype(ood_mean.dtype, "real floating"):
        msg = f"`ood_mean` must have a real floating dtype; got {ood_mean.dtype}"
        raise TypeError(msg)
    ood = detach(ood_mean)
    finite, nonzero = (
        bool(v) for v in to_host(xp.stack([xp.all(xp.isfinite(ood)), xp.any(ood != 0)]))
    )
    if not finite:
        check_finite(ood, "ood_mean", xp)
    if not nonzero:
        msg = f"`ood_mean` must be non-zero (a direction); got all {dim} entries 0"
        raise ValueError(msg)
    return ood


def ood_deviation_of(view: Classes, ood_mean: Array) -> Array:
    """NC5 of a checked `ood_mean` (d,) against a class view (the kernel of
    `ood_deviation`)."""
    xp = view.xp
    dtype = xp.result_type(view.means.dtype, ood_mean.dtype)
    units, _ = _unit_rows(xp.astype(view.means, dtype), xp)
    direction, _ = _unit_rows(xp.astype(ood_mean, dtype)[None, :], xp)
    cosines = xp.abs(units @ direction[0, :])
    return xp.astype(xp.mean(xp.astype(cosines, wide_float(xp))), dtype)
