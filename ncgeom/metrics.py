"""Neural-collapse metrics: pure functions of `ClassStats` (and a classifier).

Conventions: rows are classes (means and classifier are (K, d)); ``mu_G`` is
the mean of all samples unless ``global_mean="classes"`` (the unweighted mean
of class means); ``nf(A) = A / ||A||_F``. Classes without samples are left out
of every metric with a warning that names them; at least two populated classes
are needed. Every function returns a 0-d array on the statistics' namespace and
device.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ._array import array_device, namespace, to_host
from ._validate import check_features
from .stats import ClassStats, chunk_rows, row_chunks

__all__ = [
    "GLOBAL_MEANS",
    "NCCAgreement",
    "cdnv",
    "equiangularity",
    "equinorm",
    "etf_error",
    "nc1",
    "ncc_agreement",
    "orthogonality_error",
    "scaled_alignment_error",
    "self_duality_error",
]

Array = Any

#: Accepted values of the `global_mean` option.
GLOBAL_MEANS = ("samples", "classes")

#: Entries of a (rows, K) block of a pair matrix computed at once.
PAIR_BLOCK_ELEMENTS = 2**22


@dataclass(frozen=True)
class Classes:
    """The populated classes of a `ClassStats`, as every metric sees them."""

    xp: ModuleType
    stats: ClassStats
    index: tuple[int, ...]
    excluded: tuple[int, ...]
    host_counts: tuple[int, ...]  # (K,) all classes, on the host
    counts: Array  # (K',) float
    means: Array  # (K', d)
    global_mean: Array  # (d,)

    @property
    def size(self) -> int:
        return len(self.index)

    @property
    def centred(self) -> Array:
        return self.means - self.global_mean

    def take(self, rows: Array) -> Array:
        """Rows of a (K, ...) array that belong to the populated classes."""
        return _take_rows(rows, self.index, self.excluded, self.xp, self.stats.device)


def _take_rows(
    rows: Array, index: tuple[int, ...], excluded: tuple[int, ...], xp: ModuleType, device: Any
) -> Array:
    if not excluded:
        return rows
    return xp.take(rows, xp.asarray(index, dtype=xp.int64, device=device), axis=0)


def populated(stats: ClassStats, global_mean: str = "samples", *, warn: bool = True) -> Classes:
    """Restrict statistics to classes with samples (one host read of the counts)."""
    if not isinstance(stats, ClassStats):
        msg = f"`stats` must be a ClassStats; got {type(stats).__name__}"
        raise TypeError(msg)
    if global_mean not in GLOBAL_MEANS:
        msg = f"`global_mean` must be one of {GLOBAL_MEANS}; got {global_mean!r}"
        raise ValueError(msg)
    xp = stats.xp
    host_counts = to_host(stats.counts)
    index = tuple(int(k) for k in range(stats.num_classes) if host_counts[k] > 0)
    excluded = tuple(int(k) for k in range(stats.num_classes) if host_counts[k] == 0)
    if len(index) < 2:
        msg = (
            f"the metrics need at least two classes with samples; got {len(index)} "
            f"(counts {host_counts.tolist()})"
        )
        raise ValueError(msg)
    if excluded and warn:
        warnings.warn(
            f"classes {list(excluded)} have no samples and are left out of the metrics",
            UserWarning,
            stacklevel=3,
        )

    def take(rows: Array) -> Array:
        return _take_rows(rows, index, excluded, xp, stats.device)

    counts = xp.astype(take(stats.counts), stats.dtype)
    means = take(stats.shift + stats.offsets)
    if global_mean == "samples":
        centre = (counts @ means) / xp.sum(counts)
    else:
        centre = xp.mean(means, axis=0)
    host = tuple(int(n) for n in host_counts)
    return Classes(xp, stats, index, excluded, host, counts, means, centre)


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
    return _nc1(populated(stats, global_mean))


def _nc1(view: Classes) -> Array:
    stats = view.stats
    if stats.gram is None:
        msg = (
            "nc1 needs the within-class Gram: build the statistics with gram=True, "
            "or pass in-memory (features, labels) to nc_report"
        )
        raise ValueError(msg)
    xp = view.xp
    basis, weights = between_basis(view.centred, xp)
    along = xp.sum(basis * (stats.within_scatter() @ basis), axis=0)
    return nc1_from_scatter(along, weights, xp.astype(stats.num_samples, stats.dtype))


# ----------------------------------------------------------------------------- pairs
def pair_mean(
    view: Classes, block: Callable[[int, int, Array], Array], chunk_rows: int | None = None
) -> Array:
    """Mean over class pairs k < l of a pair matrix, block by block.

    ``block(lo, hi, mask)`` returns the rows ``lo:hi`` and columns ``lo:`` of
    the pair matrix (only the upper triangle is ever formed); `mask` marks
    the entries with l > k. Blocks bound the memory to about
    `PAIR_BLOCK_ELEMENTS` entries whatever K is.
    """
    xp, num = view.xp, view.size
    device = view.stats.device
    rows = chunk_rows or max(1, PAIR_BLOCK_ELEMENTS // num)
    cols = xp.arange(num, device=device)
    total = xp.zeros((), dtype=view.stats.dtype, device=device)
    for lo in range(0, num - 1, rows):
        hi = min(lo + rows, num)
        mask = cols[None, lo:] > cols[lo:hi, None]
        values = block(lo, hi, mask)
        total = total + xp.sum(xp.where(mask, values, xp.zeros_like(values)))
    return total / (num * (num - 1) / 2)


def cdnv(stats: ClassStats, *, chunk_rows: int | None = None) -> Array:
    """Class-distance normalised variance, averaged over class pairs.

    ``mean_{k<l} (v_k + v_l) / (2 ||mu_k - mu_l||^2)`` with
    ``v_k = (1/n_k) sum_{i in k} ||x_i - mu_k||^2``. Pairs are processed in
    row blocks, so memory stays bounded for any number of classes.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> x = np.array([[0.0, 1.0], [0.0, 3.0], [4.0, 0.0], [6.0, 0.0]])
    >>> stats = ClassStats.from_features(x, np.array([0, 0, 1, 1]), 2)
    >>> round(float(metrics.cdnv(stats)), 6)
    0.034483
    """
    return _cdnv(populated(stats), chunk_rows)


def _cdnv(view: Classes, chunk_rows: int | None = None) -> Array:
    xp = view.xp
    centred = view.centred
    variances = view.take(view.stats.class_variances)
    sq = xp.vecdot(centred, centred)

    def block(lo: int, hi: int, mask: Array) -> Array:
        gram = centred[lo:hi, ...] @ centred[lo:, ...].T
        dist2 = xp.where(mask, sq[lo:hi, None] + sq[None, lo:] - 2 * gram, 1.0)
        return (variances[lo:hi, None] + variances[None, lo:]) / (2 * dist2)

    return pair_mean(view, block, chunk_rows)


def _unit_rows(rows: Array, xp: ModuleType) -> Array:
    """Rows scaled to unit norm; zero rows stay zero (their cosines count as 0)."""
    norms = xp.linalg.vector_norm(rows, axis=1)
    safe = xp.where(norms > 0, norms, xp.ones_like(norms))
    return rows / safe[:, None]


def equiangularity(
    stats: ClassStats, *, global_mean: str = "samples", chunk_rows: int | None = None
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
    return _equiangularity(populated(stats, global_mean), chunk_rows)


def _equiangularity(view: Classes, chunk_rows: int | None = None) -> Array:
    xp = view.xp
    unit = _unit_rows(view.centred, xp)
    offset = 1 / (view.size - 1)
    return pair_mean(
        view, lambda lo, hi, _: xp.abs(unit[lo:hi, ...] @ unit[lo:, ...].T + offset), chunk_rows
    )


def orthogonality_error(stats: ClassStats, *, chunk_rows: int | None = None) -> Array:
    """``mean_{k<l} |cos(mu_k, mu_l)|`` on the uncentred means.

    0 for an orthogonal frame, the optimum of ReLU features; a zero mean (a
    collapsed minority class) has cosine 0 with every other mean.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> stats = ClassStats.from_features(np.diag([1.0, 2.0, 3.0]), np.arange(3), 3)
    >>> float(metrics.orthogonality_error(stats))
    0.0
    """
    return _orthogonality_error(populated(stats), chunk_rows)


def _orthogonality_error(view: Classes, chunk_rows: int | None = None) -> Array:
    xp = view.xp
    unit = _unit_rows(view.means, xp)
    return pair_mean(
        view, lambda lo, hi, _: xp.abs(unit[lo:hi, ...] @ unit[lo:, ...].T), chunk_rows
    )


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
    return _equinorm(populated(stats, global_mean))


def _equinorm(view: Classes) -> Array:
    xp = view.xp
    norms = xp.linalg.vector_norm(view.centred, axis=1)
    return xp.std(norms) / xp.mean(norms)


def etf_error(
    stats: ClassStats, *, global_mean: str = "samples", chunk_rows: int | None = None
) -> Array:
    """``|| nf(Mc Mc^T) - nf(I - J/K) ||_F`` with Mc the centred means.

    0 exactly when the centred means form a simplex equiangular tight frame
    (of any scale). The (K, K) Gram is formed in row blocks.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> stats = ClassStats.from_features(5 * (np.eye(4) - 1 / 4), np.arange(4), 4)
    >>> abs(float(metrics.etf_error(stats))) < 1e-12
    True
    """
    return _etf_error(populated(stats, global_mean), chunk_rows)


def _etf_error(view: Classes, chunk_rows: int | None = None) -> Array:
    xp, centred = view.xp, view.centred
    num, dim = centred.shape
    device = view.stats.device
    # ||Mc Mc^T||_F = ||Mc^T Mc||_F: take the smaller of the two Grams.
    small = centred.T @ centred if num > dim else centred @ centred.T
    gram_norm = xp.linalg.matrix_norm(small)
    target_norm = (num - 1) ** 0.5
    rows = chunk_rows or max(1, PAIR_BLOCK_ELEMENTS // num)
    cols = xp.arange(num, device=device)
    total = xp.zeros((), dtype=view.stats.dtype, device=device)
    for lo in range(0, num, rows):
        hi = min(lo + rows, num)
        # The difference is symmetric: the upper triangle counts twice.
        upper = cols[None, lo:] > cols[lo:hi, None]
        diagonal = cols[None, lo:] == cols[lo:hi, None]
        target = (xp.astype(diagonal, centred.dtype) - 1 / num) / target_norm
        diff = (centred[lo:hi, ...] @ centred[lo:, ...].T) / gram_norm - target
        weight = 2 * xp.astype(upper, centred.dtype) + xp.astype(diagonal, centred.dtype)
        total = total + xp.sum(weight * diff * diff)
    return xp.sqrt(total)


# ----------------------------------------------------------------------------- classifier
def check_classifier(classifier: Array, stats: ClassStats, name: str = "classifier") -> Array:
    """Validate a (K, d) classifier against the statistics; cast to their dtype."""
    xp = namespace(stats=stats.shift, **{name: classifier})
    shape = (stats.num_classes, stats.dim)
    if tuple(classifier.shape) != shape:
        msg = (
            f"`{name}` must have shape (num_classes, dim) = {shape}; got {tuple(classifier.shape)}"
        )
        raise ValueError(msg)
    if not xp.isdtype(classifier.dtype, "real floating"):
        msg = f"`{name}` must have a real floating dtype; got {classifier.dtype}"
        raise TypeError(msg)
    return xp.astype(classifier, xp.result_type(classifier.dtype, stats.dtype))


def _normalised_distance(a: Array, b: Array, xp: ModuleType) -> Array:
    """``|| a/||a||_F - b/||b||_F ||_F``."""
    diff = a / xp.linalg.matrix_norm(a) - b / xp.linalg.matrix_norm(b)
    return xp.linalg.matrix_norm(diff)


def self_duality_error(
    classifier: Array, stats: ClassStats, *, global_mean: str = "samples"
) -> Array:
    """``|| nf(W) - nf(Mc) ||_F``: the classifier against the centred means.

    `classifier` is W with shape (K, d), one row per class (as in PyTorch's
    ``nn.Linear(d, K).weight``).

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> means = np.eye(3) - 1 / 3
    >>> stats = ClassStats.from_features(means, np.arange(3), 3)
    >>> abs(float(metrics.self_duality_error(2 * means, stats))) < 1e-12
    True
    """
    weights = check_classifier(classifier, stats)
    return _self_duality_error(weights, populated(stats, global_mean))


def _self_duality_error(classifier: Array, view: Classes) -> Array:
    return _normalised_distance(view.take(classifier), view.centred, view.xp)


def scaled_alignment_error(classifier: Array, stats: ClassStats) -> Array:
    """``|| nf(W) - nf(S) ||_F`` with ``S_k = K sqrt(n_k) mu_k - sum_j sqrt(n_j) mu_j``.

    The imbalanced generalisation of self-duality: at the optimum of the
    ReLU unconstrained-feature model, W is aligned with the sqrt(n)-scaled,
    centred (uncentred) class means.

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
    weights = check_classifier(classifier, stats)
    return _scaled_alignment_error(weights, populated(stats))


def _scaled_alignment_error(classifier: Array, view: Classes) -> Array:
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


def ncc_agreement(
    features: Array,
    classifier: Array,
    means: Array,
    bias: Array | None = None,
    *,
    chunk_size: int | None = None,
) -> NCCAgreement:
    """Rows where ``argmax_k (W x + b)_k`` equals ``argmin_k ||x - mu_k||``.

    Means with NaN entries (classes without samples) are never the nearest.
    Rows are processed in chunks so the (rows, K) score blocks stay small.

    Parameters
    ----------
    features : array, shape (N, d)
    classifier : array, shape (K, d)
    means : array, shape (K, d)
    bias : array, shape (K,), optional

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
    for name, value in (("classifier", classifier), ("means", means)):
        if value.ndim != 2 or value.shape[1] != dim:
            msg = f"`{name}` must have shape (num_classes, {dim}); got {tuple(value.shape)}"
            raise ValueError(msg)
    if classifier.shape[0] != means.shape[0]:
        msg = (
            f"`classifier` and `means` must have one row per class; got {classifier.shape[0]} "
            f"and {means.shape[0]}"
        )
        raise ValueError(msg)
    if bias is not None and tuple(bias.shape) != (classifier.shape[0],):
        msg = f"`bias` must have shape ({classifier.shape[0]},); got {tuple(bias.shape)}"
        raise ValueError(msg)
    dtype = xp.result_type(features.dtype, classifier.dtype, means.dtype)
    means = xp.astype(means, dtype)
    missing = xp.any(xp.isnan(means), axis=1)
    means = xp.where(missing[:, None], xp.zeros_like(means), means)
    offsets = xp.vecdot(means, means)
    offsets = xp.where(missing, xp.full_like(offsets, xp.inf), offsets)
    rows = chunk_rows(
        num, max(dim, classifier.shape[0]), dtype, xp, chunk_size, array_device(features)
    )
    matches = xp.zeros((), dtype=xp.int64, device=array_device(features))
    for part_rows in row_chunks(num, rows):
        x = xp.astype(features[part_rows, ...], dtype)
        logits = x @ xp.astype(classifier, dtype).T
        if bias is not None:
            logits = logits + xp.astype(bias, dtype)
        nearest = xp.argmin(offsets - 2 * (x @ means.T), axis=1)
        agree = xp.argmax(logits, axis=1) == nearest
        matches = matches + xp.sum(xp.astype(agree, xp.int64))
    total = xp.asarray(num, dtype=xp.int64, device=array_device(features))
    return NCCAgreement(matches, total)
