"""Closed form of the bias-free UFM+ optimum under class imbalance.

The unconstrained ReLU feature model (UFM+) treats the penultimate features of
a classifier as free non-negative variables. With weight decay ``lambda_w`` on
the classifier and ``lambda_h`` on the features, its bias-free global minimiser
is known in closed form for any class counts: features of a class collapse to
their mean, the means of the surviving ("alive") classes are orthogonal, and
every class with at most :func:`collapse_threshold` samples collapses to the
zero vector (minority collapse).

:func:`ufm_relu_optimum` returns the per-class description of that minimiser
(margins, norms, cosines, objective) in O(K) memory; the K x K Gram matrices and
an explicit optimal ``(classifier, means)`` pair are built only on request.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from types import ModuleType
from typing import Any

import numpy as np

from .._lib.backend import array_device, is_host_data, namespace, resolve_namespace, to_host
from .._lib.validate import (
    check_bias_free,
    check_counts,
    check_device,
    check_float_dtype,
    check_index,
    check_optimum_dim,
    check_weight_decay,
)

__all__ = [
    "UFMOptimum",
    "collapse_threshold",
    "critical_regularization",
    "min_samples_to_survive",
    "ufm_relu_optimum",
]

Array = Any

# Counts within this relative distance of the collapse threshold get their
# excess n_k / n_crit - 1 (and with it their alive flag) in exact rational
# arithmetic: there the margin is small and the float quotient loses digits.
_EXACT_BAND = 1e-4


@dataclass(frozen=True, eq=False)
class UFMOptimum:
    """The global minimiser of the bias-free UFM+ objective, class by class.

    Built by :func:`ufm_relu_optimum`. Every array has one entry per class, in
    the order of the counts given, and lives on the backend that was asked for.
    The attributes cost O(K) memory; the K x K matrices and the explicit
    instance are methods, computed when called and not kept.

    Attributes
    ----------
    counts : array of int64, shape (K,)
        Samples per class ``n_k``.
    lambda_w, lambda_h : float
        Weight decay on the classifier and on the features.
    dim : int
        Feature dimension of the explicit instance returned by :meth:`means`
        and :meth:`classifier` (``K`` unless another was given).
    margins : array, shape (K,)
        ``M_k``: the true logit of a class-k feature exceeds every other logit
        by ``M_k``; zero for collapsed classes.
    alive : array of bool, shape (K,)
        Whether class k keeps a non-zero feature mean (``n_k > collapse_count``).
    num_alive : int
        Number of alive classes; the optimum needs ``dim >= num_alive``.
    collapse_count : float
        ``n_crit``: classes with ``n_k <= n_crit`` collapse to ``h_k = 0``.
    feature_norms : array, shape (K,)
        ``||h_k||``; larger for rarer alive classes, zero for collapsed ones.
    classifier_norms : array, shape (K,)
        ``||w_k||``.
    cosines : array, shape (K,)
        ``cos(w_k, h_k)``; NaN where ``h_k = 0`` (the angle is undefined).
    objective : array, shape ()
        The optimal value ``f*`` of the objective.

    Examples
    --------
    >>> from ncgeom.theory import ufm_relu_optimum
    >>> opt = ufm_relu_optimum([30, 20, 3, 1], 2e-2, 2e-2)
    >>> opt.alive.tolist()
    [True, True, True, False]
    >>> round(float(opt.objective), 6)
    0.730155
    >>> opt.means().shape
    (4, 4)
    """

    counts: Array
    lambda_w: float
    lambda_h: float
    dim: int
    margins: Array
    alive: Array
    num_alive: int
    collapse_count: float
    feature_norms: Array
    classifier_norms: Array
    cosines: Array
    objective: Array

    @functools.cached_property
    def xp(self) -> ModuleType:
        """The array namespace of the optimum's arrays (resolved once per object)."""
        return namespace(margins=self.margins)

    @property
    def num_classes(self) -> int:
        """Number of classes ``K``."""
        return int(self.margins.shape[0])

    @property
    def num_samples(self) -> int:
        """Total number of samples ``N``."""
        return int(to_host(self.xp.sum(self.counts)))

    def feature_gram(self) -> Array:
        """Gram matrix of the class means, ``means @ means.T``, shape (K, K).

        Diagonal, with ``||h_k||^2`` on the diagonal: the means are orthogonal.

        Examples
        --------
        >>> from ncgeom.theory import ufm_relu_optimum
        >>> ufm_relu_optimum([3, 1], 0.2, 0.2).feature_gram().round(4).tolist()
        [[0.2954, 0.0], [0.0, 0.0]]
        """
        xp = self.xp
        sq = self.feature_norms * self.feature_norms
        return self._eye(xp) * sq[None, :]

    def classifier_gram(self) -> Array:
        """Gram matrix of the classifier rows, ``W @ W.T``, shape (K, K).

        With ``nu_k = n_k ||h_k||^2``, ``S = sum_k nu_k`` and
        ``gamma^2 = K lambda_h / ((K-1) lambda_w)``, entry (i, j) is
        ``gamma^2 (delta_ij nu_i - (nu_i + nu_j) / K + S / K^2)``.

        Examples
        --------
        >>> from ncgeom.theory import ufm_relu_optimum
        >>> ufm_relu_optimum([5, 5], 1e-2, 1e-2).classifier_gram().round(3).tolist()
        [[5.41, -5.41], [-5.41, 5.41]]
        """
        xp = self.xp
        k = self.num_classes
        nu = self._scaled_sq_norms(xp)
        total = xp.sum(nu)
        gamma_sq = k * self.lambda_h / ((k - 1) * self.lambda_w)
        gram = self._eye(xp) * nu[None, :] - (nu[:, None] + nu[None, :]) / k + total / k**2
        return gamma_sq * gram

    def logits(self) -> Array:
        """Logits of the class means, ``means @ classifier.T``, shape (K, K).

        Row k holds the logits of a class-k feature: ``(K-1) M_k / K`` for
        class k and ``-M_k / K`` for every other class. (This is the transpose
        of the ``W @ means.T`` layout used in some papers.)

        Examples
        --------
        >>> from ncgeom.theory import ufm_relu_optimum
        >>> ufm_relu_optimum([10, 10, 10], 1e-2, 1e-3).logits().round(3).tolist()[0]
        [2.918, -1.459, -1.459]
        """
        xp = self.xp
        k = self.num_classes
        return self.margins[:, None] * (self._eye(xp) - 1.0 / k)

    def means(self) -> Array:
        """An explicit optimal set of class means, shape (K, dim).

        Alive classes are placed, in class order, on the first ``num_alive``
        coordinate axes with length ``||h_k||``; collapsed classes are zero
        rows. Any rotation that keeps the means non-negative (a permutation of
        the axes) gives another minimiser.

        Examples
        --------
        >>> from ncgeom.theory import ufm_relu_optimum
        >>> ufm_relu_optimum([12, 8, 4, 2], 5e-3, 5e-3, dim=5).means().shape
        (4, 5)
        """
        xp = self.xp
        dtype = self.margins.dtype
        device = array_device(self.margins)
        slot = xp.cumulative_sum(xp.astype(self.alive, xp.int64)) - 1
        axes = xp.arange(self.dim, dtype=xp.int64, device=device)
        onehot = xp.logical_and(slot[:, None] == axes[None, :], self.alive[:, None])
        return xp.astype(onehot, dtype) * self.feature_norms[:, None]

    def classifier(self) -> Array:
        """The classifier matching :meth:`means`, shape (K, dim).

        Row j is ``gamma (sqrt(n_j) h_j - (1/K) sum_k sqrt(n_k) h_k)`` with
        ``gamma = sqrt(K lambda_h / ((K-1) lambda_w))``: the rows sum to zero.

        Examples
        --------
        >>> from ncgeom.theory import ufm_relu_optimum
        >>> opt = ufm_relu_optimum([12, 8, 4, 2], 5e-3, 5e-3)
        >>> bool(abs(opt.classifier().sum(axis=0)).max() < 1e-12)
        True
        """
        xp = self.xp
        k = self.num_classes
        gamma = math.sqrt(k * self.lambda_h / ((k - 1) * self.lambda_w))
        scaled = xp.sqrt(xp.astype(self.counts, self.margins.dtype))[:, None] * self.means()
        return gamma * (scaled - xp.mean(scaled, axis=0)[None, :])

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists and floats), e.g. for JSON.

        Examples
        --------
        >>> from ncgeom.theory import ufm_relu_optimum
        >>> d = ufm_relu_optimum([3, 1], 0.2, 0.2).to_dict()
        >>> d["alive"], d["num_alive"]
        ([True, False], 1)
        """
        out: dict[str, Any] = {
            "counts": [int(v) for v in to_host(self.counts)],
            "lambda_w": self.lambda_w,
            "lambda_h": self.lambda_h,
            "dim": self.dim,
            "num_alive": self.num_alive,
            "collapse_count": self.collapse_count,
            "objective": float(to_host(self.objective)),
            "alive": [bool(v) for v in to_host(self.alive)],
        }
        for name in ("margins", "feature_norms", "classifier_norms", "cosines"):
            out[name] = [float(v) for v in to_host(getattr(self, name))]
        return out

    def _eye(self, xp: ModuleType) -> Array:
        k = self.num_classes
        return xp.eye(k, dtype=self.margins.dtype, device=array_device(self.margins))

    def _scaled_sq_norms(self, xp: ModuleType) -> Array:
        counts = xp.astype(self.counts, self.margins.dtype)
        return counts * self.feature_norms * self.feature_norms


def ufm_relu_optimum(
    counts: Any,
    lambda_w: float,
    lambda_h: float,
    dim: int | None = None,
    *,
    bias: bool | None = None,
    xp: ModuleType | None = None,
    device: Any = None,
    dtype: Any = None,
) -> UFMOptimum:
    """Closed-form global minimiser of the bias-free UFM+ objective.

    The objective, over a classifier ``W`` (K, d) and non-negative features
    ``H`` (N, d), is the mean cross-entropy of the logits ``W h_i`` plus
    ``(lambda_w / 2) ||W||_F^2 + (lambda_h / 2) ||H||_F^2``, the feature
    penalty summing over all N samples.

    Parameters
    ----------
    counts : sequence of int or 1-D integer array, length K >= 2
        Samples per class, in any order; every count must be >= 1.
    lambda_w, lambda_h : float
        Weight decay on the classifier and on the features; both > 0.
    dim : int, optional
        Feature dimension of the explicit instance (:meth:`UFMOptimum.means`,
        :meth:`UFMOptimum.classifier`). Defaults to K. Must be at least the
        number of alive classes, otherwise the closed form is not a minimiser.
    bias : bool or None, optional
        Must be False or None: no closed form is known with a classifier bias;
        :func:`ncgeom.solve.solve_ufm` handles that case numerically.
    xp : namespace, optional
        Array library of the result. Defaults to the library of `counts` when
        it is an array, otherwise NumPy.
    device : optional
        Device of the result; defaults to that of `counts` or the library's
        default device.
    dtype : optional
        Real floating dtype of the result; defaults to float64.

    Returns
    -------
    UFMOptimum

    Raises
    ------
    ValueError
        If a count is not a positive integer, there are fewer than 2 classes, a
        lambda is <= 0 (no minimiser exists), `dim` is smaller than the number
        of alive classes, or a bias is asked for.
    TypeError
        If `counts`, a lambda, `dim` or `dtype` has the wrong type.

    Notes
    -----
    With ``N = sum_k n_k``, class k is alive iff
    ``n_k > n_crit = N^2 lambda_w lambda_h K / (K-1)``. Its margin is
    ``M_k = log(1 + K (sqrt(n_k / n_crit) - 1))``, its squared feature norm
    ``sqrt((K-1) lambda_w / (K lambda_h n_k)) M_k``; collapsed classes have
    ``M_k = 0`` and ``h_k = 0``. A class exactly at the threshold collapses.

    Examples
    --------
    >>> from ncgeom.theory import ufm_relu_optimum
    >>> opt = ufm_relu_optimum([12, 8, 4, 2], 5e-3, 5e-3)
    >>> opt.margins.round(6).tolist()
    [4.492088, 4.281777, 3.917883, 3.546292]
    >>> (opt.feature_norms**2).round(6).tolist()
    [1.123022, 1.311021, 1.696493, 2.171651]

    Results in another precision (or, with `xp` and `device`, on another
    array library and device):

    >>> import numpy as np
    >>> ufm_relu_optimum([12, 8, 4, 2], 5e-3, 5e-3, dtype=np.float32).margins.dtype
    dtype('float32')
    """
    check_bias_free(bias)
    host_counts = check_counts(counts)
    lw = check_weight_decay(lambda_w, "lambda_w")
    lh = check_weight_decay(lambda_h, "lambda_h")
    xp, device, dtype = _resolve_backend(counts, xp, device, dtype)
    k = host_counts.shape[0]
    n_total = _total(host_counts)
    n_crit = _collapse_count(n_total, k, lw, lh)
    excess_host, alive_host = _excess(host_counts, n_crit, lw, lh)
    num_alive = int(alive_host.sum())
    dim = k if dim is None else check_optimum_dim(dim, num_alive)

    n_int = xp.asarray(host_counts, dtype=xp.int64, device=device)
    alive = xp.asarray(alive_host, dtype=xp.bool, device=device)
    excess = xp.asarray(excess_host, dtype=dtype, device=device)
    values = _per_class(xp.astype(n_int, dtype), excess, alive, n_total, lw, lh, xp)
    return UFMOptimum(
        counts=n_int,
        lambda_w=lw,
        lambda_h=lh,
        dim=dim,
        alive=alive,
        num_alive=num_alive,
        collapse_count=n_crit,
        **values,
    )


def collapse_threshold(counts: Any, lambda_w: float, lambda_h: float) -> float:
    """Largest class count that collapses: ``n_crit = N^2 lambda_w lambda_h K / (K-1)``.

    A class with ``n_k <= n_crit`` samples has a zero feature mean at the
    optimum. ``N`` is the total count, so the threshold moves with every class.

    Parameters
    ----------
    counts : sequence of int or 1-D integer array
        Samples per class (K >= 2, each >= 1).
    lambda_w, lambda_h : float
        Weight decay on the classifier and on the features (> 0).

    Returns
    -------
    float

    Examples
    --------
    >>> from ncgeom.theory import collapse_threshold
    >>> round(collapse_threshold([5000, 2000, 500, 100, 20], 5e-3, 1e-3), 3)
    362.903
    """
    host_counts = check_counts(counts)
    lw = check_weight_decay(lambda_w, "lambda_w")
    lh = check_weight_decay(lambda_h, "lambda_h")
    return _collapse_count(_total(host_counts), host_counts.shape[0], lw, lh)


def critical_regularization(
    counts: Any,
    *,
    xp: ModuleType | None = None,
    device: Any = None,
    dtype: Any = None,
) -> Array:
    """Per class, the product ``lambda_w * lambda_h`` at which the class collapses.

    Class k stays alive exactly when ``lambda_w * lambda_h`` is below
    ``n_k (K-1) / (K N^2)``; every class stays alive when it is below the
    minimum of these values.

    Parameters
    ----------
    counts : sequence of int or 1-D integer array
        Samples per class (K >= 2, each >= 1).
    xp, device, dtype : optional
        Backend of the result, as in :func:`ufm_relu_optimum`.

    Returns
    -------
    array, shape (K,)

    Examples
    --------
    >>> from ncgeom.theory import critical_regularization
    >>> critical_regularization([30, 20, 3, 1]).round(6).tolist()
    [0.007716, 0.005144, 0.000772, 0.000257]
    """
    host_counts = check_counts(counts)
    xp, device, dtype = _resolve_backend(counts, xp, device, dtype)
    k = host_counts.shape[0]
    n_total = float(_total(host_counts))
    n = xp.asarray(host_counts, dtype=dtype, device=device)
    return n * ((k - 1) / (k * n_total * n_total))


def min_samples_to_survive(counts: Any, k: int, lambda_w: float, lambda_h: float) -> int | None:
    """Smallest count of class `k` that keeps it alive, the other counts fixed.

    Adding samples to class k also raises the total ``N`` and with it the
    collapse threshold, so the class survives only for counts ``m`` with
    ``m (K-1) > (R + m)^2 K lambda_w lambda_h`` (``R``: samples of the other
    classes): an interval, which is empty when the other classes alone are
    too many for the regularisation.

    Parameters
    ----------
    counts : sequence of int or 1-D integer array
        Samples per class (K >= 2, each >= 1); the entry of class `k` is ignored.
    k : int
        Index of the class, in ``[0, K)``.
    lambda_w, lambda_h : float
        Weight decay on the classifier and on the features (> 0).

    Returns
    -------
    int or None
        The smallest such count, or None when no count keeps class k alive.

    Examples
    --------
    >>> from ncgeom.theory import min_samples_to_survive
    >>> min_samples_to_survive([5000, 2000, 500, 100, 20], 4, 5e-3, 1e-3)
    401
    """
    host_counts = check_counts(counts)
    num_classes = host_counts.shape[0]
    k = check_index(k, "k", num_classes)
    lw = check_weight_decay(lambda_w, "lambda_w")
    lh = check_weight_decay(lambda_h, "lambda_h")
    rest = _total(host_counts) - int(host_counts[k])
    return _min_count(rest, num_classes, lw, lh)


def _survival_counts(host_counts: np.ndarray, lw: float, lh: float) -> list[int | None]:
    """`min_samples_to_survive` of every class of validated counts, in O(K)."""
    total = _total(host_counts)
    num_classes = host_counts.shape[0]
    # The answer depends on a class only through its count: solve each distinct count once.
    distinct = {n: _min_count(total - n, num_classes, lw, lh) for n in set(host_counts.tolist())}
    return [distinct[n] for n in host_counts.tolist()]


def _total(host_counts: np.ndarray) -> int:
    """Exact total of validated counts (`check_counts` bounds it by 2**63 - 1)."""
    return int(host_counts.sum())


def _min_count(rest: int, num_classes: int, lw: float, lh: float) -> int | None:
    """Smallest count alive next to `rest` samples of the other classes, or None."""
    span = survival_span(rest, num_classes, lw, lh)
    return None if span is None else span[0]


def survival_span(rest: int, num_classes: int, lw: float, lh: float) -> tuple[int, int] | None:
    """The counts m >= 1 that keep a class alive beside `rest` samples of the
    other classes, as ``(first, last)``, or None when there are none.

    Class k is alive iff ``m (K-1) > (rest + m)^2 K lw lh``. With ``lw lh =
    p / q`` exactly (the binary values of the floats) and ``t = rest + m``
    this is ``g(t) = A t^2 - B t + B rest < 0`` for the integers ``A = K p``,
    ``B = (K-1) q``: negative exactly between the roots
    ``(B -+ sqrt(D)) / (2A)``, ``D = B (B - 4 A rest)``. `math.isqrt` places
    each root within one integer, and exact integer comparisons settle each
    end in at most two steps: O(1) big-integer operations whatever the weight
    decays (the ends may exceed 2**63 - 1 when they are tiny).

    Examples
    --------
    >>> from ncgeom.theory.optimum import survival_span
    >>> survival_span(7600, 5, 5e-3, 1e-3)  # min_samples_to_survive's example
    (401, 144399)
    """
    p, q = (Fraction(lw) * Fraction(lh)).as_integer_ratio()
    a_coef, b_coef = num_classes * p, (num_classes - 1) * q
    disc = b_coef * (b_coef - 4 * a_coef * rest)
    if disc <= 0:  # no real root, or a double root, where g is never < 0
        return None
    root = math.isqrt(disc)

    def below_upper(t: int) -> bool:  # t < (B + sqrt(D)) / (2A)
        x = 2 * a_coef * t - b_coef
        return x < 0 or x * x < disc

    def above_lower(t: int) -> bool:  # t > (B - sqrt(D)) / (2A)
        y = b_coef - 2 * a_coef * t
        return y < 0 or y * y < disc

    last = (b_coef + root) // (2 * a_coef)
    while below_upper(last + 1):
        last += 1
    while not below_upper(last):
        last -= 1
    first = (b_coef - root) // (2 * a_coef)
    while above_lower(first - 1):
        first -= 1
    while not above_lower(first):
        first += 1
    low, high = max(first, rest + 1) - rest, last - rest
    return (low, high) if low <= high else None


def _per_class(
    n: Array,
    excess: Array,
    alive: Array,
    n_total: int,
    lw: float,
    lh: float,
    xp: ModuleType,
) -> dict[str, Array]:
    """Margins, norms, cosines and objective from the counts, in O(K)."""
    k = n.shape[0]
    margins, feature_sq = _margins(n, excess, alive, k, lw, lh, xp)
    feature_norms = xp.sqrt(feature_sq)

    # Classifier rows w_j = gamma (u_j - (1/K) sum_k u_k) with u_k = sqrt(n_k) h_k.
    # The u_k are orthogonal with ||u_k||^2 = nu_k = n_k ||h_k||^2; let S = sum nu.
    #   ||w_j||^2 = gamma^2 (nu_j - 2 nu_j / K + S / K^2)
    #   w_j . h_j = gamma sqrt(n_j) ||h_j||^2 (1 - 1/K) = (K-1) M_j / K,
    # the last step because gamma^2 * (K-1) lw / (K lh) = 1. Every term is
    # non-negative for K >= 2, so there is no cancellation.
    nu = n * feature_sq
    total = xp.sum(nu)
    gamma_sq = k * lh / ((k - 1) * lw)
    classifier_norms = xp.sqrt(gamma_sq * (nu * (1.0 - 2.0 / k) + total / k**2))
    inner = margins * ((k - 1) / k)
    positive = feature_sq > 0
    denom = xp.where(positive, classifier_norms * feature_norms, 1.0)
    cosines = xp.where(positive, inner / denom, float("nan"))

    ce = (n / n_total) * xp.log1p((k - 1) * xp.exp(-margins))
    penalty = math.sqrt(lw * lh * (k - 1) / k) * xp.sqrt(n) * margins
    objective = xp.sum(ce + penalty)
    return {
        "margins": margins,
        "feature_norms": feature_norms,
        "classifier_norms": classifier_norms,
        "cosines": cosines,
        "objective": objective,
    }


def _margins(
    n: Array, excess: Array, alive: Array, k: int, lw: float, lh: float, xp: ModuleType
) -> tuple[Array, Array]:
    """Margins ``M`` and squared feature norms of classes of `n` samples among `k`.

    `excess` is ``n / n_crit - 1``. Each entry depends only on its own count,
    the number of classes and (through `excess`) the total count, so `n` may
    also be a grid of hypothetical counts.
    """
    # M = log((K-1)(1/c - 1)) with 1/c = (K/(K-1)) sqrt(n/n_crit) is
    # log1p(K (t - 1)), t = sqrt(n / n_crit). Near the threshold M ~ K (t - 1)
    # -> 0, so t - 1 is formed as excess / (t + 1), never as t minus 1.
    t_minus_1 = excess / (xp.sqrt(1.0 + excess) + 1.0)
    arg = xp.where(t_minus_1 > 0, k * t_minus_1, 0.0)
    margins = xp.where(alive, xp.log1p(arg), 0.0)
    scale = math.sqrt((k - 1) * lw / (k * lh))
    return margins, scale * margins / xp.sqrt(n)


def _collapse_count(n_total: int, k: int, lw: float, lh: float) -> float:
    n_crit = float(n_total) ** 2 * lw * lh * k / (k - 1)
    if not (n_crit > 0.0 and math.isfinite(n_crit)):
        msg = (
            f"`lambda_w` * `lambda_h` * N^2 must be a normal float64 number; got "
            f"{lw!r} * {lh!r} * {n_total}^2 = {n_crit!r}"
        )
        raise ValueError(msg)
    return n_crit


def _excess(
    counts: np.ndarray, n_crit: float, lw: float, lh: float
) -> tuple[np.ndarray, np.ndarray]:
    """``n_k / n_crit - 1`` per class and the alive mask (excess > 0).

    Classes within `_EXACT_BAND` of the threshold are settled in rational
    arithmetic on the exact binary values of the lambdas, so the alive flag is
    exact (a class at the threshold collapses) and the small excess is
    correctly rounded.
    """
    k = counts.shape[0]
    n_total = _total(counts)
    with np.errstate(over="ignore"):
        excess = (counts.astype(np.float64) - n_crit) / n_crit
    if not np.isfinite(excess).all():
        msg = (
            f"`lambda_w` * `lambda_h` must not be so small that n_k / n_crit overflows "
            f"float64; got {lw!r} * {lh!r} (n_crit = {n_crit!r}, largest n_k = "
            f"{int(counts.max())})"
        )
        raise ValueError(msg)
    alive = excess > 0
    near = np.flatnonzero(np.abs(excess) <= _EXACT_BAND)
    if near.size:
        exact_crit = Fraction(n_total * n_total * k, k - 1) * Fraction(lw) * Fraction(lh)
        for i in near:
            value = Fraction(int(counts[i])) / exact_crit - 1
            excess[i] = float(value)
            alive[i] = value > 0
    return excess, alive


def _resolve_backend(
    counts: Any, xp: ModuleType | None, device: Any, dtype: Any
) -> tuple[ModuleType, Any, Any]:
    """The namespace, device and floating dtype of results."""
    if xp is None and not is_host_data(counts):
        xp = namespace(counts=counts)
        if device is None:
            device = array_device(counts)
    else:
        xp = resolve_namespace(xp)
    dtype = check_float_dtype(dtype, xp)
    check_device(xp, device, dtype)
    return xp, device, dtype
