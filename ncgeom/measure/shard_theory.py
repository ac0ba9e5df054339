"""The comparisons with the UFM+ optimum from class shards, with no K x K matrix.

`shard_theory_metrics` gives what ``nc_report(stats, W, theory=optimum)`` puts
under ``gof_error``, ``classifier_gram_error`` and ``logit_structure_error``
(`ncgeom.theory_metrics`), and this rank's entries of the per-class feature
norms and margins, measured and predicted. Each error is a normalised
Frobenius distance ``|| A / ||A|| - T / ||T|| ||_F`` between a K x K matrix of
the measured means H and classifier W (``H H^T``, ``W W^T``, ``W H^T``) and its
target at the optimum. The blocks of A travel as their rows do in
`ncgeom.measure.shard_pairs.ring_pass`: in step s every rank all-reduces a
block of rows that only rank s fills, which hands rank s's means and
classifier rows to all. Each rank forms the difference ``A / a0 - T / ||T||``
tile by tile (its norm ``a0`` from (d, d) identities: ``||H H^T|| = ||H^T H||``,
``||W H^T||^2 = <W^T W, H^T H>``) and adds up its squares, never a difference of
large sums, so the distance keeps its relative precision where it is tiny (near
the optimum). The norm of A itself is summed from the tiles too and corrects
the estimate ``a0`` exactly.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, NamedTuple

from .._lib.backend import array_device, namespace, to_host, wide_float
from .._lib.validate import (
    check_class_count,
    check_classifier,
    check_instance,
    check_values_like,
)
from ..theory.comparison import _power_of_two_near_largest
from ..theory.optimum import UFMOptimum
from .distributed import ClassShard, Collectives, class_shards
from .shard_metrics import _largest, check_shard_classifier

__all__ = ["SHARD_THEORY_METRICS", "SHARD_THEORY_VECTORS", "ShardTheory", "shard_theory_metrics"]

Array = Any

#: The scalars of `shard_theory_metrics`, in the vocabulary of `ncgeom.NCReport`.
SHARD_THEORY_METRICS = ("gof_error", "classifier_gram_error", "logit_structure_error")
#: Its per-class vectors (this rank's classes), in the same vocabulary.
SHARD_THEORY_VECTORS = (
    "margins_measured",
    "margins_predicted",
    "feature_norms_measured",
    "feature_norms_predicted",
)
#: Why the comparisons are unavailable, worded as `ncgeom.nc_report` words it.
UNSEEN_REASON = "the theory needs every class to have samples"
NO_CLASSIFIER_REASON = "no classifier given"
_CLASSIFIER_NAMES = (
    "classifier_gram_error",
    "logit_structure_error",
    "margins_measured",
    "margins_predicted",
)
#: Largest number of entries of one tile of a K x K block.
_TILE_ENTRIES = 1 << 22


class ShardTheory(NamedTuple):
    """What `shard_theory_metrics` returns on one rank.

    Every name of `SHARD_THEORY_METRICS` is in `values` and every name of
    `SHARD_THEORY_VECTORS` in `vectors`; a name that is unavailable holds NaN
    (a vector of NaN) and `unavailable` says why.

    Examples
    --------
    >>> from ncgeom.plugins import ShardTheory
    >>> ShardTheory({"gof_error": 0.0}, {}, {}).values["gof_error"]
    0.0
    """

    #: ``gof_error``, ``classifier_gram_error``, ``logit_structure_error``: the
    #: same on every rank.
    values: dict[str, float]
    #: Per-class vectors of this rank's classes, shape (K_r,), in the widest float
    #: of the statistics' namespace, on their device; norms and margins in the
    #: features' units.
    vectors: dict[str, Array]
    #: Name to reason for what is unavailable (the same on every rank).
    unavailable: dict[str, str]


def shard_theory_metrics(
    shard: ClassShard,
    collectives: Collectives,
    optimum: UFMOptimum,
    *,
    classifier: Array | None = None,
) -> ShardTheory:
    """The comparisons with the UFM+ optimum from class shards; every rank must
    call it, each with its shard and its rows of the classifier (or all without).

    Equal to the same names of ``nc_report(stats, W, theory=optimum)`` of the
    whole table (to rounding: 1e-10 relative in float64 in the tests, near the
    optimum too), NaN where the report is NaN: ``gof_error`` (the class-mean
    Gram against the predicted orthogonal frame), and with a classifier
    ``classifier_gram_error`` (``W W^T`` against its predicted shape) and
    ``logit_structure_error`` (``W H^T`` against ``(I - J/K) diag(M)``); per
    class (this rank's classes), the feature-mean norms ``||h_k||`` and margins
    ``z_kk - max_{j != k} z_kj`` (``z_kj = w_j . h_k``, no bias), measured and
    predicted.

    Parameters
    ----------
    shard : ClassShard
        This rank's shard (`reduce_scatter_class_stats`, `ShardedClassStats.shard`).
    collectives : Collectives
        This process's rank, world size, ``all_gather`` and ``all_reduce``.
    optimum : UFMOptimum
        The predicted optimum (`ncgeom.theory.ufm_relu_optimum`) of the K
        classes of all shards; its (K,) vectors are read whole on every rank.
    classifier : array, shape (K_r, d), optional
        The rows of W of this rank's classes (``W[shard.offset:][:K_r]``), on
        the statistics' namespace and device; finite. Given on every rank or
        on none.

    Returns
    -------
    ShardTheory
        ``values`` (the same on every rank), ``vectors`` of this rank's
        classes and ``unavailable``: every name when a class has no samples
        (``"the theory needs every class to have samples"``), the classifier's
        names without one (``"no classifier given"``).

    Raises
    ------
    TypeError
        If `shard`, `collectives` or `optimum` is not what it must be, or
        `classifier` is of another library or not floating.
    ValueError
        If `optimum` describes another number of classes, or `classifier` has
        another shape than this shard's rows. On every rank, if the ranks
        disagree on giving a classifier, or it holds NaN or Inf on some rank.

    Notes
    -----
    Collectives, with K classes, dimension d and P ranks: one all-gather of
    five numbers (the classes without samples, the largest entries), one
    all-reduce of 2 d^2 numbers (the (d, d) Grams ``H^T H`` and ``W^T W``;
    d^2 without a classifier), P all-reduces of ceil(K / P) (2 d) numbers (each
    rank's means and classifier rows in turn; d without a classifier), about
    4 K d numbers sent and received per rank with ring all-reduces, and one
    all-reduce of 9 numbers. Two host reads. Memory per rank: its own rows,
    one received block, the Grams and tiles of at most 2**22 entries. Rank r
    forms ``W_s H_r^T`` for every block s (the logit structure and the
    margins of its classes) and half of the blocks of the symmetric
    ``H H^T`` and ``W W^T``, spread evenly over the ranks.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, nc_report
    >>> from ncgeom.plugins import Collectives, reduce_scatter_class_stats
    >>> from ncgeom.plugins import shard_theory_metrics
    >>> from ncgeom.theory import ufm_relu_optimum
    >>> opt = ufm_relu_optimum([30, 20, 3, 1], 2e-2, 2e-2)
    >>> y = np.repeat(np.arange(4), [30, 20, 3, 1])
    >>> rng = np.random.default_rng(0)
    >>> x = opt.means()[y] + 0.01 * rng.normal(size=(54, 4))
    >>> w = opt.classifier() + 0.01 * rng.normal(size=(4, 4))
    >>> alone = Collectives(0, 1, lambda a: [a], lambda a: a, lambda a: a)
    >>> shard = reduce_scatter_class_stats(ClassStats.from_features(x, y, 4), alone)
    >>> result = shard_theory_metrics(shard, alone, opt, classifier=w)
    >>> report = nc_report((x, y), w, theory=opt)
    >>> bool(abs(result.values["gof_error"] / report.gof_error - 1) < 1e-12)
    True
    >>> np.allclose(result.vectors["margins_measured"], report.margins_measured)
    True
    """
    check_instance(shard, ClassShard, "shard")
    check_instance(collectives, Collectives, "collectives")
    check_instance(
        optimum, UFMOptimum, "optimum", what="UFMOptimum (ncgeom.theory.ufm_relu_optimum)"
    )
    check_class_count(optimum.num_classes, shard.num_classes, "optimum", "the shards have")
    stats = shard.stats
    if classifier is not None:
        check_shard_classifier(shard, classifier)
        classifier = check_classifier(
            classifier, (stats.num_classes, stats.dim), stats.dtype, stats.xp, finite=False
        )
    means = stats.scaled_means  # in units of the statistics' scale, as the report's
    # 1) Unseen classes, a classifier everywhere or nowhere, its finiteness, the largest entries.
    agreed = _agree(collectives, stats.counts, means, classifier)
    if agreed.unseen:
        reasons = dict.fromkeys((*SHARD_THEORY_METRICS, *SHARD_THEORY_VECTORS), UNSEEN_REASON)
        return _unavailable(stats, reasons)
    w = None if classifier is None else classifier / agreed.w_scale
    work = _Work.of(shard, collectives, optimum, means / agreed.h_scale, w)
    # 2) The norms of the K x K matrices from (d, d) identities (one all-reduce).
    work.estimate_norms()
    # 3) Every rank's rows in turn; this rank's tiles of the differences.
    sums, margins = work.exchange()
    # 4) The distances from the tiles' sums of all ranks (one all-reduce of 9 numbers).
    values = work.distances(collectives.all_reduce(sums))
    vectors = work.vectors(margins, agreed, stats.unit_scale)
    unavailable: dict[str, str] = {}
    if classifier is None:
        values.update(dict.fromkeys(_CLASSIFIER_NAMES[:2], math.nan))
        unavailable = dict.fromkeys(_CLASSIFIER_NAMES, NO_CLASSIFIER_REASON)
    return ShardTheory(values, vectors, unavailable)


class _Agreed(NamedTuple):
    """What the ranks agreed on in `_agree`."""

    unseen: bool
    h_scale: Array  # power of two near the largest entry of the means (0-d, their dtype)
    w_scale: Array | None  # the same for the classifier


def _agree(
    collectives: Collectives, counts: Array, means: Array, classifier: Array | None
) -> _Agreed:
    """One all-gather and one host read: whether a class of any rank has no
    samples, whether every rank gives a classifier, whether it is finite
    everywhere, and the powers of two near the largest entries of all ranks."""
    xp = namespace(means=means)
    wide = wide_float(xp)
    zero = xp.zeros((), dtype=wide, device=array_device(means))
    given = classifier is not None
    local = xp.stack(
        [
            xp.sum(xp.astype(counts == 0, wide)),
            zero + float(given),
            zero if not given else xp.sum(xp.astype(~xp.isfinite(classifier), wide)),
            _largest(xp.reshape(xp.abs(means), (-1,)), xp),
            zero if not given else _largest(xp.reshape(xp.abs(classifier), (-1,)), xp),
        ]
    )
    table = xp.stack([xp.astype(row, wide) for row in collectives.all_gather(local)])
    host = to_host(table).tolist()  # the first host read
    givers = [int(row[1]) for row in host]
    if len(set(givers)) > 1:
        msg = (
            "`classifier` must be given on every rank or on none; got it on ranks "
            f"{[r for r, g in enumerate(givers) if g]} of {len(givers)}"
        )
        raise ValueError(msg)
    bad = [int(row[2]) for row in host]
    if any(bad):
        msg = "`classifier` must be finite; got NaN or Inf in " + ", ".join(
            f"{n} entries on rank {r}" for r, n in enumerate(bad) if n
        )
        raise ValueError(msg)
    largest = xp.max(table, axis=0)
    h_scale = _power_of_two_near_largest(xp.astype(largest[3:4], means.dtype), xp)
    w_scale = None
    if given:
        w_scale = _power_of_two_near_largest(xp.astype(largest[4:5], classifier.dtype), xp)
    return _Agreed(any(row[0] > 0 for row in host), h_scale, w_scale)


class _Work:
    """This rank's part of the three distances: its rows (the means `h` and
    classifier `w` divided by powers of two), the targets' vectors (every
    class: (K,) each), the norms' estimates and the exchange of blocks."""

    def __init__(
        self,
        collectives: Collectives,
        h: Array,
        w: Array | None,
        shards: list[tuple[int, int]],
        optimum: UFMOptimum,
    ) -> None:
        xp = namespace(h=h)
        self.xp, self.collectives, self.shards = xp, collectives, shards
        self.rank, self.k = collectives.rank, shards[-1][1]
        self.h, self.w = h, w
        #: The means in the classifier's dtype, for the logits.
        self.h_w = h if w is None else xp.astype(h, w.dtype, copy=False)
        like = self.h_w
        self.predicted_norms = check_values_like(
            optimum.feature_norms, "optimum.feature_norms", h, xp
        )
        self.margins = check_values_like(optimum.margins, "optimum.margins", like, xp)
        counts = check_values_like(optimum.counts, "optimum.counts", like, xp)
        k = self.k
        # gof_error: diag(||h_k||^2) predicted.
        self.frame = self.predicted_norms * self.predicted_norms
        # classifier_gram_error, scaled by 1/K^2 (as `ncgeom.theory_metrics`):
        # entry (i, j) = delta_ij D_i - (D_i + D_j) / K + S / K^2, D = sqrt(n) M.
        self.weights = xp.sqrt(counts) * self.margins
        self.total = xp.sum(self.weights)
        # logit_structure_error: (I - J / K) diag(M).
        norms = [
            xp.sqrt(xp.sum(self.frame * self.frame)),
            xp.sqrt(k * (k - 2) * xp.sum(self.weights**2) + self.total * self.total) / k,
            xp.sqrt(xp.sum(self.margins**2) * ((k - 1) / k)),
        ]
        #: ||T||_F of each target; NaN for a zero target (no direction).
        self.b = [xp.astype(xp.where(v > 0, v, xp.nan), wide_float(xp)) for v in norms]
        #: Estimates of ||A||_F (`estimate_norms`).
        self.a0: list[Array] = []

    @classmethod
    def of(
        cls,
        shard: ClassShard,
        collectives: Collectives,
        optimum: UFMOptimum,
        h: Array,
        w: Array | None,
    ) -> _Work:
        shards = class_shards(shard.num_classes, collectives.world_size)
        return cls(collectives, h, w, shards, optimum)

    def own(self, vector: Array) -> Array:
        """This rank's entries of a (K,) vector."""
        start, stop = self.shards[self.rank]
        return vector[start:stop]

    def estimate_norms(self) -> None:
        """Estimates of ``||A||_F`` of each K x K matrix from the all-reduced
        (d, d) Grams: ``||H H^T||^2 = ||H^T H||^2``, ``||W W^T||^2 = ||W^T W||^2``,
        ``||W H^T||^2 = <W^T W, H^T H>``."""
        xp, h, w = self.xp, self.h_w, self.w
        wide = wide_float(xp)
        dim = h.shape[1]
        parts = [xp.reshape(h.T @ h, (-1,))]
        if w is not None:
            parts.append(xp.reshape(w.T @ w, (-1,)))
        sums = self.collectives.all_reduce(xp.concat(parts))
        gram_h = xp.astype(sums[: dim * dim], wide)
        squares = [xp.sum(gram_h * gram_h)]
        if w is not None:
            gram_w = xp.astype(sums[dim * dim :], wide)
            squares += [xp.sum(gram_w * gram_w), xp.sum(gram_w * gram_h)]
        else:
            squares += [xp.ones((), dtype=wide, device=array_device(h))] * 2
        # The tiles' own sum of squares corrects the estimates (`_distance`).
        self.a0 = [xp.where(s > 0, xp.sqrt(s), xp.ones_like(s)) for s in squares]

    def exchange(self) -> tuple[Array, Array | None]:
        """The sums of every tile of this rank (9 numbers: per distance the
        squared differences, the products with A and the squares of A) and
        the measured margins of this rank's classes (None without a classifier)."""
        xp, h, w = self.xp, self.h, self.w
        wide = wide_float(xp)
        dim = h.shape[1]
        world = self.collectives.world_size
        height = self.shards[0][1] - self.shards[0][0]
        packed = self.h_w if w is None else xp.concat([self.h_w, w], axis=1)
        pad = xp.zeros(
            (height - h.shape[0], packed.shape[1]), dtype=packed.dtype, device=array_device(h)
        )
        packed = xp.concat([packed, pad])
        sums = [xp.zeros((3,), dtype=wide, device=array_device(h)) for _ in range(3)]
        top = true = None
        if w is not None:
            rows = h.shape[0]
            top = xp.full((rows,), -math.inf, dtype=w.dtype, device=array_device(h))
            true = xp.zeros((rows,), dtype=w.dtype, device=array_device(h))
        for sender in range(world):
            mine = sender == self.rank
            block = self.collectives.all_reduce(packed if mine else xp.zeros_like(packed))
            start, stop = self.shards[sender]
            if stop == start or h.shape[0] == 0:
                continue
            block = block[: stop - start, ...]
            if _handles(self.rank, sender, world):
                twice = 1.0 if mine else 2.0
                cols_h = xp.astype(block[:, :dim], h.dtype)
                sums[0] = sums[0] + twice * self._gof(cols_h, start)
                if w is not None:
                    sums[1] = sums[1] + twice * self._gram(block[:, dim:], start)
            if w is not None:
                part, top, true = self._logits(block[:, dim:], start, top, true)
                sums[2] = sums[2] + part
        margins = None if w is None else true - top
        return xp.concat(sums), margins

    def distances(self, totals: Array) -> dict[str, float]:
        """The three distances from the all-reduced tile sums (one host read);
        only ``gof_error`` without a classifier."""
        xp = self.xp
        wide = wide_float(xp)
        names = SHARD_THEORY_METRICS if self.w is not None else SHARD_THEORY_METRICS[:1]
        parts = [
            xp.astype(_distance(totals[3 * i : 3 * i + 3], self.a0[i], xp), wide)
            for i in range(len(names))
        ]
        host = to_host(xp.stack(parts)).tolist()
        return {name: float(value) for name, value in zip(names, host, strict=True)}

    def vectors(self, margins: Array | None, agreed: _Agreed, unit: Array) -> dict[str, Array]:
        """The per-class vectors of this rank's classes, with units multiplied
        back in the widest float (NaN margins without a classifier)."""
        xp = self.xp
        wide = wide_float(xp)
        scale = xp.astype(agreed.h_scale, wide) * xp.astype(unit, wide)
        norms = xp.linalg.vector_norm(self.h, axis=1)
        out = {
            "feature_norms_measured": xp.astype(norms, wide) * scale,
            "feature_norms_predicted": xp.astype(self.own(self.predicted_norms), wide),
        }
        if margins is None:
            for name in ("margins_measured", "margins_predicted"):
                out[name] = xp.full(
                    (self.h.shape[0],), math.nan, dtype=wide, device=array_device(self.h)
                )
        else:
            w_scale = xp.astype(agreed.w_scale, wide)
            out["margins_measured"] = xp.astype(margins, wide) * scale * w_scale
            out["margins_predicted"] = xp.astype(self.own(self.margins), wide)
        return {name: out[name] for name in SHARD_THEORY_VECTORS}

    def _tiles(self, width: int) -> list[tuple[int, int]]:
        """Row ranges of this rank's rows for tiles `width` columns wide."""
        rows = self.h.shape[0]
        step = max(1, _TILE_ENTRIES // max(width, 1))
        return [(i, min(rows, i + step)) for i in range(0, rows, step)]

    def _eye(self, i: int, j: int, cols_start: int, cols: int, like: Array) -> Array:
        """Rows ``i:j`` of this rank against columns ``cols_start:cols_start + cols``
        (class indices) of the K x K identity, in the dtype of `like`."""
        xp = self.xp
        first = self.shards[self.rank][0]
        device = array_device(like)
        rows = xp.arange(first + i, first + j, device=device)
        columns = xp.arange(cols_start, cols_start + cols, device=device)
        return xp.astype(rows[:, None] == columns[None, :], like.dtype)

    def _gof(self, cols: Array, start: int) -> Array:
        """The tiles of ``H_r H_s^T`` against ``diag(||h_k||^2)``."""
        xp = self.xp
        first = self.shards[self.rank][0]
        sums = []
        for i, j in self._tiles(cols.shape[0]):
            measured = self.h[i:j, ...] @ cols.T
            eye = self._eye(i, j, start, cols.shape[0], measured)
            target = eye * self.frame[first + i : first + j, None]
            sums.append(_tile_sums(measured, target, self.a0[0], self.b[0], xp))
        return sum(sums[1:], sums[0])

    def _gram(self, cols: Array, start: int) -> Array:
        """The tiles of ``W_r W_s^T`` against its predicted shape."""
        xp, k = self.xp, self.k
        first = self.shards[self.rank][0]
        others = self.weights[start : start + cols.shape[0]]
        sums = []
        for i, j in self._tiles(cols.shape[0]):
            measured = self.w[i:j, ...] @ cols.T
            eye = self._eye(i, j, start, cols.shape[0], measured)
            d = self.weights[first + i : first + j, None]
            target = eye * d - (d + others[None, :]) / k + self.total / k**2
            sums.append(_tile_sums(measured, target, self.a0[1], self.b[1], xp))
        return sum(sums[1:], sums[0])

    def _logits(
        self, cols: Array, start: int, top: Array, true: Array
    ) -> tuple[Array, Array, Array]:
        """The tiles of ``W_s H_r^T`` (transposed: row k holds the logits
        ``w_j . h_k`` of this rank's class k) against ``(I - J/K) diag(M)``, and
        the running largest other logit and the true logit of each class."""
        xp, k = self.xp, self.k
        first = self.shards[self.rank][0]
        h = self.h_w
        sums, tops, trues = [], [], []
        for i, j in self._tiles(cols.shape[0]):
            logits = h[i:j, ...] @ cols.T
            eye = self._eye(i, j, start, cols.shape[0], logits)
            target = (eye - 1.0 / k) * self.margins[first + i : first + j, None]
            sums.append(_tile_sums(logits, target, self.a0[2], self.b[2], xp))
            on = eye > 0
            tops.append(xp.max(xp.where(on, -math.inf, logits), axis=1))
            trues.append(xp.sum(xp.where(on, logits, 0.0), axis=1))
        top = xp.maximum(top, tops[0] if len(tops) == 1 else xp.concat(tops))
        true = true + (trues[0] if len(trues) == 1 else xp.concat(trues))
        return sum(sums[1:], sums[0]), top, true


def _handles(rank: int, other: int, world: int) -> bool:
    """Whether `rank` forms the block (rank, other) of a symmetric matrix:
    its own, and half of the others, spread evenly over the ranks."""
    if rank == other:
        return True
    ahead = (other - rank) % world
    return ahead < world - ahead or (ahead == world - ahead and rank < other)


def _tile_sums(measured: Array, target: Array, a0: Array, b: Array, xp: ModuleType) -> Array:
    """``sum E^2``, ``sum A E`` and ``sum A^2`` of one tile, with
    ``E = A / a0 - T / b``, in the widest float."""
    wide = wide_float(xp)
    diff = measured / xp.astype(a0, measured.dtype) - target / xp.astype(b, measured.dtype)
    return xp.stack(
        [
            xp.astype(xp.sum(diff * diff), wide),
            xp.astype(xp.sum(measured * diff), wide),
            xp.astype(xp.sum(measured * measured), wide),
        ]
    )


def _distance(sums: Array, a0: Array, xp: ModuleType) -> Array:
    """``|| A / a - T / b ||_F`` with ``a = sqrt(sum A^2)``, from the sums over
    the tiles of ``E = A / a0 - T / b``: with ``c = 1 / a - 1 / a0``,
    ``||A / a - T / b||^2 = sum E^2 + 2 c sum A E + c^2 sum A^2``, where each
    term is small when the estimate a0 is close (no cancellation of large sums).
    NaN when A is zero (no direction); the tiles carry the NaN of a zero target."""
    squares, cross, norm_sq = sums[0], sums[1], sums[2]
    norm = xp.sqrt(norm_sq)
    c = 1 / xp.where(norm > 0, norm, xp.nan) - 1 / a0
    total = squares + 2 * c * cross + c * c * norm_sq
    return xp.sqrt(xp.clip(total, min=0.0))


def _unavailable(stats: Any, reasons: dict[str, str]) -> ShardTheory:
    """Every name NaN (NaN vectors of this rank's classes), with `reasons`."""
    xp = stats.xp
    shape, wide = (stats.num_classes,), wide_float(xp)
    return ShardTheory(
        dict.fromkeys(SHARD_THEORY_METRICS, math.nan),
        {
            name: xp.full(shape, math.nan, dtype=wide, device=stats.device)
            for name in SHARD_THEORY_VECTORS
        },
        reasons,
    )
