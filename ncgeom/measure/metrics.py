"""Neural-collapse metrics: pure functions of `ClassStats` (and a classifier).

Conventions: rows are classes (means and classifier are (K, d)); ``mu_G`` is
the mean of all samples unless ``global_mean="classes"`` (the unweighted mean
of class means); ``nf(A) = A / ||A||_F``. Classes without samples are left out
of every metric with a warning that names them; at least two populated classes
are needed. Every function returns a 0-d array on the statistics' namespace and
device.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .._lib.backend import (
    accumulation_dtype,
    array_device,
    detach,
    index_dtype,
    namespace,
    to_host,
)
from .._lib.lanes import serial_lapack
from .._lib.validate import (
    check_bias_shape,
    check_features,
    check_stats_classifier,
)
from .classes import (
    DEGENERATE_METRICS,
    DEGENERATE_REASONS,
    GLOBAL_MEANS,
    Classes,
    CountFilter,
    centre_of,
    class_view,
    largest_entry,
    populated,
    undefined,
)
from .nearest import (
    NEAREST_FLAGS,
    NearestFrame,
    nearest_orthogonal_frame,
    nearest_orthogonal_frame_of,
    nearest_simplex_etf,
    nearest_simplex_etf_of,
)
from .pairs import (
    CLASSIFIER_PAIR_METRICS,
    INTERFERENCE_GRID_ENTRIES,
    MEANS_PAIR_METRICS,
    PAIR_BLOCK_ELEMENTS,
    PAIR_METRICS,
    SAMPLED_PAIR_METRICS,
    SAMPLED_PAIRS_FROM,
    cdnv,
    classifier_equiangularity,
    classifier_etf_error,
    classifier_pair_metrics,
    equiangularity,
    equiangularity_std,
    etf_error,
    interference_grid,
    interference_max,
    interference_mean,
    interference_min,
    log_energy,
    log_energy_variance,
    orthogonality_error,
    pair_block_rows,
    pair_metrics,
    riesz_log_energy,
    riesz_log_variance,
    sampled_pair_metrics,
)
from .stats import ClassStats, row_chunks, rows_per_chunk, warn_nc1_rounding
from .variants import (
    VARIANT_FLAGS,
    bias_collapse,
    bias_collapse_of,
    check_ood_mean,
    check_ood_vector,
    classifier_equinorm,
    classifier_equinorm_of,
    distance_norms,
    distance_norms_of,
    log_equinorm,
    log_equinorm_of,
    nc1_trace_ratio,
    nc1_trace_ratio_of,
    ood_deviation,
    ood_deviation_of,
    uniform_duality,
    uniform_duality_of,
    uniform_duality_variance,
    uniform_duality_variance_of,
    variant_flags,
)

__all__ = [
    "CLASSIFIER_PAIR_METRICS",
    "Classes",
    "CountFilter",
    "DEGENERATE_METRICS",
    "DEGENERATE_REASONS",
    "GLOBAL_MEANS",
    "INTERFERENCE_GRID_ENTRIES",
    "MEANS_PAIR_METRICS",
    "NCCAgreement",
    "NEAREST_FLAGS",
    "NearestCentre",
    "NearestFrame",
    "PAIR_BLOCK_ELEMENTS",
    "PAIR_METRICS",
    "SAMPLED_PAIRS_FROM",
    "SAMPLED_PAIR_METRICS",
    "VARIANT_FLAGS",
    "between_basis",
    "bias_collapse",
    "bias_collapse_of",
    "cdnv",
    "centre_of",
    "check_ood_mean",
    "check_ood_vector",
    "class_view",
    "classifier_equiangularity",
    "classifier_equinorm",
    "classifier_equinorm_of",
    "classifier_etf_error",
    "classifier_flags",
    "classifier_pair_metrics",
    "distance_norms",
    "distance_norms_of",
    "equiangularity",
    "equiangularity_std",
    "equinorm",
    "equinorm_of",
    "etf_error",
    "interference_grid",
    "interference_max",
    "interference_mean",
    "interference_min",
    "log_energy",
    "log_energy_variance",
    "log_equinorm",
    "log_equinorm_of",
    "nc1",
    "nc1_and_rounding_of",
    "nc1_from_scatter",
    "nc1_of",
    "nc1_trace_ratio",
    "nc1_trace_ratio_of",
    "ncc_agreement",
    "nearest_orthogonal_frame",
    "nearest_orthogonal_frame_of",
    "nearest_simplex_etf",
    "nearest_simplex_etf_of",
    "ood_deviation",
    "ood_deviation_of",
    "orthogonality_error",
    "pair_block_rows",
    "pair_metrics",
    "populated",
    "riesz_log_energy",
    "riesz_log_variance",
    "sampled_pair_metrics",
    "scale_free",
    "scaled_alignment_error",
    "scaled_alignment_error_of",
    "self_duality_error",
    "self_duality_error_of",
    "undefined",
    "uniform_duality",
    "uniform_duality_of",
    "uniform_duality_variance",
    "uniform_duality_variance_of",
    "variant_flags",
]

Array = Any


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
    gram = centred @ centred.T if num <= dim else centred.T @ centred
    with serial_lapack(xp, gram.shape):
        lam, u = xp.linalg.eigh(gram)
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
    return undefined(value, view, "nc1")


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
    return undefined(equinorm_of(view), view, "equinorm")


def equinorm_of(view: Classes) -> Array:
    """Equinorm of a class view (the kernel of `equinorm`)."""
    xp = view.xp
    norms = xp.linalg.vector_norm(view.centred, axis=1)
    mean = xp.mean(norms)
    return xp.std(norms) / xp.where(mean > 0, mean, xp.ones_like(mean))


# ----------------------------------------------------------------------------- classifier
def scale_free(a: Array, xp: ModuleType) -> Array:
    """`a` divided by its largest absolute entry (unchanged if all zero): the
    squares of the result cannot overflow or underflow."""
    return a / largest_entry(a, xp)


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
    return undefined(value, view, "self_duality_error", classifier_flags(weights, view))


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
    return undefined(value, view, "scaled_alignment_error", classifier_flags(weights, view))


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

    def matches(
        self,
        along: Array,
        logits: Array,
        *,
        logit_classes: Array | None = None,
        rows: Array | None = None,
    ) -> Array:
        """Number of rows (0-d int64) where ``argmax(logits)`` is the nearest centre.

        Column j of `logits` is class j, or class ``logit_classes[j]`` where
        given; `rows` (boolean) counts only the rows it marks.
        """
        xp = namespace(along=along)
        top = xp.argmax(logits, axis=1)
        if logit_classes is not None:
            top = xp.take(logit_classes, top)
        agree = top == self.nearest(along)
        if rows is not None:
            agree = agree & rows
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
