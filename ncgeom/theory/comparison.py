"""Distances between a measured geometry and the UFM+ prediction.

Pure functions on arrays: class means ``(K, d)`` (uncentred, as measured after
the ReLU) and a classifier ``W`` ``(K, d)``, rows being classes. The prediction
is either a :class:`~ncgeom.theory.UFMOptimum` or explicit margins ``M_k``
(with the class counts where the target needs them), so that a prediction made
under another convention can be compared too.

The matrix errors follow the normalised Frobenius distance used in the
imbalanced neural-collapse literature, ``|| nf(A) - nf(B) ||_F`` with
``nf(A) = A / ||A||_F``: 0 for a perfect match up to scale, at most 2. When
either matrix is zero the distance is undefined and NaN is returned.

Results are 0-d arrays (or, for the per-class comparisons, vectors) on the
namespace, device and floating dtype of the measured arrays. Predictions given
as host data (lists, NumPy arrays) are moved there; arrays of another library
or device raise, as everywhere in ncgeom. K x K matrices are formed in row
blocks, so memory stays bounded for large K.

Every function works on its inputs divided by a power of two near their
largest entry, so no product overflows or underflows: the distances are the
same for features of size 1e-20 or 1e20, and the per-class norms and margins
are those of the inputs, in their units (they overflow only where the value
itself lies beyond the dtype's range). Measured arrays must be finite
(`check_finite`, one host read).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType
from typing import Any, Literal, NamedTuple

import numpy as np

from .._lib.backend import array_device, is_host_data, namespace, to_host
from .._lib.validate import (
    check_choice,
    check_class_count,
    check_class_matrix,
    check_classifier_and_means,
    check_finite_arrays,
    check_flag,
    check_positive,
    check_values_like,
)
from .optimum import UFMOptimum

__all__ = [
    "Comparison",
    "classifier_gram_error",
    "gof_error",
    "logit_structure_error",
    "margin_comparison",
    "norm_comparison",
]

Array = Any

# Largest number of K x K entries formed at once.
_BLOCK_ENTRIES = 1 << 22


class Comparison(NamedTuple):
    """Measured and predicted values of one per-class quantity, shape (K,) each."""

    measured: Array
    predicted: Array


def gof_error(
    means: Array, predicted: Any, *, counts: Any = None, check_finite: bool = True
) -> Array:
    """Distance of the class-mean Gram matrix from the predicted orthogonal frame.

    ``|| nf(means @ means.T) - nf(diag(||h_k||^2)) ||_F`` with the predicted
    squared feature norms on the diagonal (the paper's NC2_H). With explicit
    margins the target is ``diag(M_k / sqrt(n_k))``, the same up to scale.

    Parameters
    ----------
    means : array, shape (K, d)
        Measured class means (not centred).
    predicted : UFMOptimum or array-like, shape (K,)
        The optimum, or explicit margins ``M_k``.
    counts : array-like, shape (K,), optional
        Samples per class; needed with explicit margins, not allowed with a
        UFMOptimum (which holds its own).
    check_finite : bool
        Raise if `means` hold NaN or Inf (default; one host read).

    Returns
    -------
    array, shape ()

    Examples
    --------
    >>> from ncgeom.theory import ufm_relu_optimum
    >>> from ncgeom.theory_metrics import gof_error
    >>> opt = ufm_relu_optimum([30, 20, 3, 1], 2e-2, 2e-2)
    >>> float(gof_error(opt.means(), opt)) < 1e-12
    True
    >>> round(float(gof_error(opt.means(), [1.0, 1.0, 1.0, 1.0], counts=[1, 1, 1, 1])), 4)
    0.5196
    """
    xp, k, margins, n = _matrix_and_prediction(means, "means", predicted, counts)
    _check_finite(xp, check_finite, means=means)
    means = means / _power_of_two_near_largest(means, xp)
    if isinstance(predicted, UFMOptimum):
        target = (
            check_values_like(predicted.feature_norms, "predicted.feature_norms", means, xp) ** 2
        )
    else:
        target = margins / xp.sqrt(n)
    target_norm = xp.sqrt(xp.sum(target * target))

    def target_rows(start: int, stop: int) -> Array:
        return _eye_rows(start, stop, k, means, xp) * target[start:stop, None]

    def measured_rows(start: int, stop: int) -> Array:
        return means[start:stop, :] @ means.T

    return _nf_distance(measured_rows, target_rows, target_norm, k, xp)


def classifier_gram_error(
    classifier: Array, predicted: Any, *, counts: Any = None, check_finite: bool = True
) -> Array:
    """Distance of ``W @ W.T`` from its predicted shape (the paper's NC2_WWT).

    The target is ``(K I - J) diag(sqrt(n_k) M_k) (K I - J)`` (``J``: all ones),
    which the optimal classifier Gram matrix equals up to a positive factor.

    Parameters
    ----------
    classifier : array, shape (K, d)
        Measured classifier weights, one row per class.
    predicted : UFMOptimum or array-like, shape (K,)
        The optimum, or explicit margins ``M_k``.
    counts : array-like, shape (K,), optional
        Samples per class; needed with explicit margins, not allowed with a
        UFMOptimum.
    check_finite : bool
        Raise if `classifier` holds NaN or Inf (default; one host read).

    Returns
    -------
    array, shape ()

    Examples
    --------
    >>> from ncgeom.theory import ufm_relu_optimum
    >>> from ncgeom.theory_metrics import classifier_gram_error
    >>> opt = ufm_relu_optimum([12, 8, 4, 2], 5e-3, 5e-3)
    >>> float(classifier_gram_error(opt.classifier(), opt)) < 1e-12
    True
    """
    xp, k, margins, n = _matrix_and_prediction(classifier, "classifier", predicted, counts)
    _check_finite(xp, check_finite, classifier=classifier)
    classifier = classifier / _power_of_two_near_largest(classifier, xp)
    # Scaled by 1/K^2: entry (i, j) = delta_ij D_i - (D_i + D_j) / K + S / K^2,
    # whose squared Frobenius norm is (K (K-2) sum D^2 + S^2) / K^2.
    weights = xp.sqrt(n) * margins
    total = xp.sum(weights)
    target_norm = xp.sqrt(k * (k - 2) * xp.sum(weights * weights) + total * total) / k

    def target_rows(start: int, stop: int) -> Array:
        w = weights[start:stop, None]
        eye = _eye_rows(start, stop, k, classifier, xp)
        return eye * w - (w + weights[None, :]) / k + total / k**2

    def measured_rows(start: int, stop: int) -> Array:
        return classifier[start:stop, :] @ classifier.T

    return _nf_distance(measured_rows, target_rows, target_norm, k, xp)


def logit_structure_error(
    classifier: Array, means: Array, predicted: Any, *, check_finite: bool = True
) -> Array:
    """Distance of ``W @ means.T`` from ``(I - J/K) diag(M)`` (the paper's NC3_WH).

    Column k of ``W @ means.T`` holds the logits of the class-k mean; at the
    optimum it is ``M_k (e_k - 1/K)``.

    Parameters
    ----------
    classifier : array, shape (K, d)
        Measured classifier weights.
    means : array, shape (K, d)
        Measured class means (not centred).
    predicted : UFMOptimum or array-like, shape (K,)
        The optimum, or explicit margins ``M_k``.
    check_finite : bool
        Raise if `classifier` or `means` hold NaN or Inf (default; one host read).

    Returns
    -------
    array, shape ()

    Examples
    --------
    >>> from ncgeom.theory import ufm_relu_optimum
    >>> from ncgeom.theory_metrics import logit_structure_error
    >>> opt = ufm_relu_optimum([12, 8, 4, 2], 5e-3, 5e-3)
    >>> float(logit_structure_error(opt.classifier(), opt.means(), opt)) < 1e-12
    True
    """
    xp, k, margins = _pair_and_prediction(classifier, means, predicted)
    _check_finite(xp, check_finite, classifier=classifier, means=means)
    classifier = classifier / _power_of_two_near_largest(classifier, xp)
    means = means / _power_of_two_near_largest(means, xp)
    target_norm = xp.sqrt(xp.sum(margins * margins) * ((k - 1) / k))

    def target_rows(start: int, stop: int) -> Array:
        eye = _eye_rows(start, stop, k, means, xp)
        return (eye - 1.0 / k) * margins[None, :]

    def measured_rows(start: int, stop: int) -> Array:
        return classifier[start:stop, :] @ means.T

    return _nf_distance(measured_rows, target_rows, target_norm, k, xp)


def margin_comparison(
    classifier: Array,
    means: Array,
    predicted: Any,
    *,
    against: Literal["max", "mean"] = "max",
    check_finite: bool = True,
) -> Comparison:
    """Measured against predicted margins, per class.

    The measured margin of class k compares the true logit of its mean,
    ``z_kk = w_k . h_k``, with the other logits ``z_kj = w_j . h_k``:
    ``z_kk - max_{j != k} z_kj`` (``against="max"``) or
    ``z_kk - mean_{j != k} z_kj`` (``against="mean"``). At the optimum both
    equal ``M_k``. No bias is added.

    Parameters
    ----------
    classifier : array, shape (K, d)
        Measured classifier weights.
    means : array, shape (K, d)
        Measured class means.
    predicted : UFMOptimum or array-like, shape (K,)
        The optimum, or explicit margins ``M_k``.
    against : {"max", "mean"}
        Which competing logit the true logit is compared with.
    check_finite : bool
        Raise if `classifier` or `means` hold NaN or Inf (default; one host read).

    Returns
    -------
    Comparison
        ``measured`` and ``predicted`` margins, shape (K,) each.

    Examples
    --------
    >>> from ncgeom.theory import ufm_relu_optimum
    >>> from ncgeom.theory_metrics import margin_comparison
    >>> opt = ufm_relu_optimum([10, 10, 10], 1e-2, 1e-3)
    >>> cmp = margin_comparison(opt.classifier(), opt.means(), opt)
    >>> cmp.measured.round(6).tolist(), cmp.predicted.round(6).tolist()
    ([4.377638, 4.377638, 4.377638], [4.377638, 4.377638, 4.377638])
    """
    check_choice(against, "against", ("max", "mean"))
    xp, k, margins = _pair_and_prediction(classifier, means, predicted)
    _check_finite(xp, check_finite, classifier=classifier, means=means)
    # Logits of the inputs scaled to entries near 1, scaled back at the end.
    w_scale = _power_of_two_near_largest(classifier, xp)
    h_scale = _power_of_two_near_largest(means, xp)
    classifier, means = classifier / w_scale, means / h_scale
    parts = []
    for start, stop in _blocks(k):
        logits = means[start:stop, :] @ classifier.T
        eye = _eye_rows(start, stop, k, means, xp) > 0
        true = xp.sum(xp.where(eye, logits, 0.0), axis=1)
        if against == "max":
            other = xp.max(xp.where(eye, -math.inf, logits), axis=1)
        else:
            other = (xp.sum(logits, axis=1) - true) / (k - 1)
        parts.append(true - other)
    measured = parts[0] if len(parts) == 1 else xp.concat(parts)
    return Comparison(measured * h_scale * w_scale, margins)


def norm_comparison(
    means: Array,
    predicted: Any,
    *,
    counts: Any = None,
    lambda_ratio: float | None = None,
    normalize: bool = False,
    check_finite: bool = True,
) -> Comparison:
    """Measured against predicted feature-mean norms ``||h_k||``, per class.

    Parameters
    ----------
    means : array, shape (K, d)
        Measured class means.
    predicted : UFMOptimum or array-like, shape (K,)
        The optimum, or explicit margins ``M_k``; with margins the predicted
        norm is ``sqrt(sqrt((K-1) lambda_ratio / (K n_k)) M_k)``.
    counts : array-like, shape (K,), optional
        Samples per class; needed with explicit margins.
    lambda_ratio : float, optional
        ``lambda_w / lambda_h``; needed with explicit margins unless
        `normalize` is set.
    normalize : bool
        Divide both vectors by their Euclidean norm, comparing only the
        relative sizes (independent of the penalty convention).
    check_finite : bool
        Raise if `means` hold NaN or Inf (default; one host read).

    Returns
    -------
    Comparison
        ``measured`` and ``predicted`` norms, shape (K,) each.

    Examples
    --------
    >>> from ncgeom.theory import ufm_relu_optimum
    >>> from ncgeom.theory_metrics import norm_comparison
    >>> opt = ufm_relu_optimum([30, 20, 3, 1], 2e-2, 2e-2)
    >>> cmp = norm_comparison(opt.means(), opt.margins, counts=[30, 20, 3, 1], lambda_ratio=1.0)
    >>> cmp.predicted.round(6).tolist()
    [0.650816, 0.685799, 0.684934, 0.0]
    """
    xp, k, margins, n = _matrix_and_prediction(means, "means", predicted, counts)
    _check_finite(xp, check_finite, means=means)
    if isinstance(predicted, UFMOptimum):
        if lambda_ratio is not None:
            msg = "`lambda_ratio` is taken from the UFMOptimum; pass it only with explicit margins"
            raise ValueError(msg)
        target = check_values_like(predicted.feature_norms, "predicted.feature_norms", means, xp)
    else:
        if lambda_ratio is None:
            if not normalize:
                msg = (
                    "`lambda_ratio` (lambda_w / lambda_h) is needed to predict absolute "
                    "norms from explicit margins; pass it, or normalize=True"
                )
                raise ValueError(msg)
            lambda_ratio = 1.0
        ratio = check_positive(lambda_ratio, "lambda_ratio")
        scale = math.sqrt((k - 1) * ratio / k)
        target = xp.sqrt(scale * margins / xp.sqrt(n))
    h_scale = _power_of_two_near_largest(means, xp)
    measured = xp.linalg.vector_norm(means / h_scale, axis=1)
    if normalize:
        measured = measured / _nan_if_zero(xp.sqrt(xp.sum(measured * measured)), xp)
        target = target / _nan_if_zero(xp.sqrt(xp.sum(target * target)), xp)
    else:
        measured = measured * h_scale
    return Comparison(measured, target)


def _nf_distance(
    measured_rows: Callable[[int, int], Array],
    target_rows: Callable[[int, int], Array],
    target_norm: Array,
    k: int,
    xp: ModuleType,
) -> Array:
    """``|| A / ||A|| - B / ||B|| ||_F`` from row blocks of A and B (K x K)."""
    blocks = _blocks(k)
    target_norm = _nan_if_zero(target_norm, xp)
    if len(blocks) == 1:
        measured = measured_rows(0, k)
        measured_norm = _nan_if_zero(xp.sqrt(xp.sum(measured * measured)), xp)
        diff = measured / measured_norm - target_rows(0, k) / target_norm
        return xp.sqrt(xp.sum(diff * diff))
    measured_sq = 0.0
    for start, stop in blocks:
        block = measured_rows(start, stop)
        measured_sq = measured_sq + xp.sum(block * block)
    measured_norm = _nan_if_zero(xp.sqrt(measured_sq), xp)
    total = 0.0
    for start, stop in blocks:
        diff = measured_rows(start, stop) / measured_norm - target_rows(start, stop) / target_norm
        total = total + xp.sum(diff * diff)
    return xp.sqrt(total)


def _power_of_two_near_largest(x: Array, xp: ModuleType) -> Array:
    """A power of two (0-d, dtype of `x`) near the largest absolute entry of `x`;
    1 when every entry is zero.

    Dividing by it is exact and brings the entries near 1, so that products of
    rows neither overflow nor underflow whatever the inputs' size.
    """
    largest = xp.max(xp.abs(x))
    usable = xp.isfinite(largest) & (largest > 0)
    exponent = xp.round(xp.log2(xp.where(usable, largest, xp.ones_like(largest))))
    return xp.pow(xp.full_like(largest, 2.0), exponent)


def _check_finite(xp: ModuleType, wanted: bool, **arrays: Array) -> None:
    """`check_finite_arrays` unless the caller has read the finiteness already."""
    if check_flag(wanted, "check_finite"):
        check_finite_arrays(xp, **arrays)


def _nan_if_zero(norm: Array, xp: ModuleType) -> Array:
    """A norm to divide by: NaN for a zero matrix, whose direction is undefined."""
    return xp.where(norm > 0, norm, xp.nan)


def _blocks(k: int) -> list[tuple[int, int]]:
    rows = max(1, _BLOCK_ENTRIES // k)
    return [(start, min(k, start + rows)) for start in range(0, k, rows)]


def _eye_rows(start: int, stop: int, k: int, like: Array, xp: ModuleType) -> Array:
    """Rows ``start:stop`` of the K x K identity, in the dtype of `like`."""
    device = array_device(like)
    rows = xp.arange(start, stop, device=device)
    cols = xp.arange(k, device=device)
    return xp.astype(rows[:, None] == cols[None, :], like.dtype)


def _matrix_and_prediction(
    measured: Array, name: str, predicted: Any, counts: Any
) -> tuple[ModuleType, int, Array, Array]:
    """The namespace and K of one measured (K, d) matrix, with the predicted
    margins and counts next to it."""
    xp = namespace(**{name: measured})
    check_class_matrix(measured, name, xp)
    k = measured.shape[0]
    margins, n = _prediction(predicted, counts, k, measured, xp, need_counts=True)
    return xp, k, margins, n


def _pair_and_prediction(
    classifier: Array, means: Array, predicted: Any
) -> tuple[ModuleType, int, Array]:
    """The namespace and K of a measured classifier and means, with the predicted margins."""
    xp = namespace(classifier=classifier, means=means)
    check_classifier_and_means(classifier, means, xp)
    k = classifier.shape[0]
    margins, _ = _prediction(predicted, None, k, means, xp, need_counts=False)
    return xp, k, margins


def _prediction(
    predicted: Any,
    counts: Any,
    k: int,
    like: Array,
    xp: ModuleType,
    *,
    need_counts: bool,
) -> tuple[Array, Array | None]:
    """Predicted margins (and counts) as vectors next to the measured array `like`."""
    if isinstance(predicted, UFMOptimum):
        if counts is not None:
            msg = "`counts` is taken from the UFMOptimum; pass it only with explicit margins"
            raise ValueError(msg)
        check_class_count(predicted.num_classes, k, "predicted", "the measured arrays have")
        margins = check_values_like(predicted.margins, "predicted.margins", like, xp)
        n = (
            check_values_like(predicted.counts, "predicted.counts", like, xp)
            if need_counts
            else None
        )
        return margins, n
    margins = _vector(predicted, "predicted", k, like, xp)
    if not need_counts:
        return margins, None
    if counts is None:
        msg = "`counts` is needed with explicit margins in `predicted`"
        raise ValueError(msg)
    n = _vector(counts, "counts", k, like, xp)
    if not bool(xp.all(n > 0)):
        msg = f"`counts` must be positive; got {_host(counts).tolist()}"
        raise ValueError(msg)
    return margins, n


def _vector(value: Any, name: str, k: int, like: Array, xp: ModuleType) -> Array:
    out = check_values_like(value, name, like, xp)
    if out.ndim != 1 or out.shape[0] != k:
        msg = f"`{name}` must have shape ({k},), one value per class; got {tuple(out.shape)}"
        raise ValueError(msg)
    return out


def _host(value: Any) -> np.ndarray:
    return np.asarray(value) if is_host_data(value) else to_host(value)
