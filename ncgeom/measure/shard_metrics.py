"""Metrics computed from class shards: no rank holds the (K, d) table of all classes.

Each metric here is a sum over the classes, so every rank adds up its own
classes and all-reduces a few numbers, or a (d, d) matrix where NC1 needs one:

* NC1 through (d, d) identities: ``S_W = gram - sum_k n_k o_k o_k^T`` (the
  pooled Gram about the shifts less each class's offset o_k, summed over the
  shards) and ``Mc^T Mc = sum_k c_k c_k^T`` (the centred means); then
  ``nc1 = sum_r w_r v_r^T S_W v_r / N`` over the eigenpairs (v_r, 1 / w_r) of
  ``Mc^T Mc``, with `ncgeom.metrics.between_basis`'s rule for a zero eigenvalue;
* the within variance, the trace-ratio NC1, equinorm and log equinorm, from
  sums over the classes (the spreads in a second all-reduce about the means
  of the first, so that nothing cancels).

The pair metrics (CDNV, ETF error, ...) and the classifier metrics need
pairs of classes of different shards and are not computed here yet.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .._lib.backend import detach, namespace, quiet_division, to_host, wide_float
from .._lib.lanes import serial_lapack
from .._lib.validate import check_bias_vector, check_choice, check_classifier, check_instance
from .classes import DEGENERATE_METRICS, GLOBAL_MEANS
from .distributed import ClassShard, Collectives
from .variants import _unit_rows, check_ood_vector

__all__ = [
    "SHARD_CLASSIFIER_METRICS",
    "SHARD_METRICS",
    "agree_on_classifier",
    "check_shard_classifier",
    "shard_classifier_metrics",
    "shard_counts",
    "shard_metrics",
    "spread_flags",
]

Array = Any

#: What `shard_metrics` returns, in the vocabulary of `ncgeom.NCReport`.
SHARD_METRICS = ("nc1", "within_variance", "nc1_trace_ratio", "equinorm", "log_equinorm")


def shard_metrics(
    shard: ClassShard,
    collectives: Collectives,
    *,
    global_mean: str = "samples",
    ood_mean: Array | None = None,
) -> dict[str, float]:
    """`SHARD_METRICS` of the classes of every rank's shard; every rank must call it.

    Equal to the same names of ``nc_report`` of the whole table (to rounding:
    1e-10 relative in float64 in the tests), over the classes with samples.

    Parameters
    ----------
    shard : ClassShard
        This rank's shard (`reduce_scatter_class_stats`,
        `ShardedClassStats.shard`); NC1 needs its pooled Gram.
    collectives : Collectives
        This process's rank, world size, ``all_gather`` and ``all_reduce``.
    global_mean : {"samples", "classes"}
        As for `ncgeom.nc_report`.
    ood_mean : array, shape (d,), optional
        The mean of out-of-distribution features: adds ``ood_deviation``
        (NC5, as `ncgeom.metrics.ood_deviation`).

    Returns
    -------
    dict
        Each name of `SHARD_METRICS` (and ``ood_deviation``) to a float; NaN
        where `nc_report` gives NaN for degenerate geometry (fewer than two classes with samples,
        class means that coincide or are all zero, a mean at the global mean
        for log equinorm), and NC1 NaN without a Gram.

    Notes
    -----
    Four all-reduces: 2 d + 2 numbers (the global mean), 2 d^2 (the two (d, d)
    sums of NC1; none without a Gram), 3 and 2 scalars (the sums and spreads of
    the norms). The (d, d) eigenproblem is solved on every rank.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, nc_report
    >>> from ncgeom.plugins import Collectives, reduce_scatter_class_stats
    >>> from ncgeom.plugins import shard_metrics
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 4, size=200)
    >>> x = 3 * np.eye(4)[y] + rng.normal(size=(200, 4))
    >>> alone = Collectives(0, 1, lambda a: [a], lambda a: a, lambda a: a)
    >>> shard = reduce_scatter_class_stats(ClassStats.from_features(x, y, 4), alone)
    >>> values = shard_metrics(shard, alone)
    >>> bool(abs(values["nc1"] - nc_report((x, y)).nc1) < 1e-12)
    True
    """
    return _shard_metrics(shard, collectives, global_mean, ood_mean)[0]


def _shard_metrics(
    shard: ClassShard, collectives: Collectives, global_mean: str, ood_mean: Array | None
) -> tuple[dict[str, float], dict[str, bool]]:
    """`shard_metrics` and the flags of degenerate geometry it read."""
    check_instance(shard, ClassShard, "shard")
    check_instance(collectives, Collectives, "collectives")
    check_choice(global_mean, "global_mean", GLOBAL_MEANS)
    stats = shard.stats
    xp, dtype = stats.xp, stats.dtype
    wide = wide_float(xp)
    dim = stats.dim
    variances = stats.scaled_variances()
    variances = xp.where(stats.counts > 0, variances, xp.zeros_like(variances))
    # 1) The global mean, the number of classes with samples, N and the within scatter.
    own = _classes(
        shard,
        collectives,
        global_mean,
        (xp.reshape(xp.astype(stats.counts, dtype) @ variances, (1,)),),
    )
    seen, weight, counts, means = own.seen, own.weight, own.counts, own.means
    centre, total, classes, within = own.centre, own.total, own.classes, own.extra[0][0]
    populated = round(float(to_host(classes)))  # one host read
    centred = (means - centre) * weight[:, None]
    scale = xp.astype(stats.unit_scale, wide)
    values: dict[str, Array] = {"within_variance": xp.astype(within / total, wide) * scale * scale}
    # 2) NC1 from the (d, d) sums of the shards.
    nc1 = xp.asarray(math.nan, dtype=dtype, device=stats.device)
    if shard.gram is not None:
        offsets = stats.offsets * weight[:, None]
        correction = offsets.T @ (counts[:, None] * offsets)
        sums = collectives.all_reduce(
            xp.concat([xp.reshape(correction, (-1,)), xp.reshape(centred.T @ centred, (-1,))])
        )
        within_scatter = shard.gram - xp.reshape(sums[: dim * dim], (dim, dim))
        between = xp.reshape(sums[dim * dim :], (dim, dim))
        nc1 = _nc1(within_scatter, between, total, max(populated, dim), xp)
    values["nc1"] = nc1
    # 3) Norms of the centred means: sums, then spreads about their means.
    norms = xp.linalg.vector_norm(centred, axis=1)
    alive = seen & (norms > 0)
    logs = xp.where(
        alive, xp.log(xp.where(alive, norms, xp.ones_like(norms))), xp.zeros_like(norms)
    )
    firsts = collectives.all_reduce(
        xp.stack([xp.sum(norms), xp.sum(logs), xp.sum(xp.astype(alive, dtype))])
    )
    mean_norm, mean_log = firsts[0] / classes, firsts[1] / classes
    spreads = collectives.all_reduce(
        xp.stack(
            [
                xp.sum(weight * (norms - mean_norm) ** 2),
                xp.sum(weight * (logs - mean_log) ** 2),
            ]
        )
    )
    between_spread = collectives.all_reduce(xp.reshape(xp.sum(weight * norms * norms), (1,)))
    with quiet_division():  # 0 / 0 of degenerate geometry: NaN, flagged below
        values["equinorm"] = xp.sqrt(spreads[0] / classes) / mean_norm
        values["log_equinorm"] = xp.sqrt(spreads[1] / classes)
        values["nc1_trace_ratio"] = (within / total) / (between_spread[0] / classes)
    values["all_alive"] = firsts[2] == classes
    host = to_host(
        xp.stack([xp.astype(values[name], wide) for name in (*SHARD_METRICS, "all_alive")])
    )
    result = dict(zip(SHARD_METRICS, (float(v) for v in host[:-1]), strict=True))
    flags = spread_flags(
        collectives, xp.where(seen[:, None], means, xp.zeros_like(means)), centred
    )
    flags["centred_zero"] = not host[-1]  # a class mean at the global mean has no log norm
    names = SHARD_METRICS
    if ood_mean is not None:
        names = (*SHARD_METRICS, "ood_deviation")
        result["ood_deviation"] = _ood_deviation(collectives, means, seen, ood_mean) / populated
    for name in names:
        if populated < 2 and name != "within_variance":
            result[name] = math.nan
        if any(flags.get(flag, False) for flag in DEGENERATE_METRICS.get(name, ())):
            result[name] = math.nan
        if not math.isfinite(result[name]):
            result[name] = math.nan
    return result, flags


def _ood_deviation(collectives: Collectives, means: Array, seen: Array, ood_mean: Array) -> float:
    """``sum_k |cos(mu_k, ood_mean)|`` over the classes with samples of every rank."""
    xp = namespace(means=means)
    ood = check_ood_vector(ood_mean, means.shape[1], like=means)
    dtype = xp.result_type(means.dtype, ood.dtype)
    units, _ = _unit_rows(xp.astype(means, dtype), xp)
    direction, _ = _unit_rows(xp.astype(ood, dtype)[None, :], xp)
    cosines = xp.astype(xp.abs(units @ direction[0, :]), wide_float(xp))
    local = xp.sum(xp.where(seen, cosines, xp.zeros_like(cosines)))
    return float(to_host(collectives.all_reduce(xp.reshape(local, (1,)))[0]))


class _Classes(NamedTuple):
    """This rank's classes and the centre of every rank's (`_classes`)."""

    seen: Array  # (K_r,) bool: classes with samples
    weight: Array  # the same as 0/1 in the statistics' dtype
    counts: Array  # (K_r,) in the statistics' dtype
    means: Array  # (K_r, d) in units of the scale, zero where unseen
    centre: Array  # (d,) the centre of the between-class spread
    total: Array  # N, all ranks
    classes: Array  # the classes with samples, all ranks
    extra: list[Array]  # the all-reduced `extra` sums, in order


def _classes(
    shard: ClassShard, collectives: Collectives, global_mean: str, extra: tuple[Array, ...] = ()
) -> _Classes:
    """This rank's classes with samples and the centre of all ranks' classes
    (the mean of all samples, or of the class means), with the 1-D sums
    `extra` all-reduced in the same call."""
    stats = shard.stats
    xp, dtype, dim = stats.xp, stats.dtype, stats.dim
    seen = stats.counts > 0
    weight = xp.astype(seen, dtype)
    counts = xp.astype(stats.counts, dtype)
    means = xp.where(seen[:, None], stats.shift + stats.offsets, xp.zeros_like(stats.shift))
    sizes = [int(x.shape[0]) for x in extra]
    reduced = collectives.all_reduce(
        xp.concat(
            [counts @ means, weight @ means, xp.stack([xp.sum(counts), xp.sum(weight)]), *extra]
        )
    )
    total, classes = reduced[2 * dim], reduced[2 * dim + 1]
    centre = (
        reduced[:dim] / total if global_mean == "samples" else reduced[dim : 2 * dim] / classes
    )
    parts, at = [], 2 * dim + 2
    for size in sizes:
        parts.append(reduced[at : at + size])
        at += size
    return _Classes(seen, weight, counts, means, centre, total, classes, parts)


def spread_flags(collectives: Collectives, means: Array, centred: Array) -> dict[str, bool]:
    """The flags ``means`` (every class mean is zero) and ``between`` (the
    centred means are zero or below rounding) of `ncgeom.metrics.Classes.flags`,
    over the rows of every rank (`means` and `centred`: this rank's classes
    with samples, zero rows elsewhere); one all-gather and a host read."""
    xp = namespace(means=means)
    wide = wide_float(xp)
    local = xp.stack(
        [_largest(xp.vecdot(means, means), xp), _largest(xp.vecdot(centred, centred), xp)]
    )
    largest = xp.max(xp.stack([xp.astype(x, wide) for x in collectives.all_gather(local)]), axis=0)
    largest_mean, largest_centred = (float(v) for v in to_host(largest))
    eps = float(xp.finfo(means.dtype).eps)
    return {
        "means": largest_mean == 0,
        "between": largest_centred <= (16 * eps) ** 2 * largest_mean,
    }


def shard_counts(shard: ClassShard, collectives: Collectives) -> np.ndarray:
    """The samples of each of the K classes of every rank's shard, in class
    order, as int64 on the host (one all-gather); every rank must call it.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats
    >>> from ncgeom.plugins import Collectives, reduce_scatter_class_stats, shard_counts
    >>> alone = Collectives(0, 1, lambda a: [a], lambda a: a, lambda a: a)
    >>> stats = ClassStats.from_features(np.eye(3), np.array([0, 2, 2]), 3)
    >>> shard_counts(reduce_scatter_class_stats(stats, alone), alone).tolist()
    [1, 0, 2]
    """
    check_instance(shard, ClassShard, "shard")
    check_instance(collectives, Collectives, "collectives")
    xp = shard.stats.xp
    counts = _gathered_rows(collectives, xp.astype(shard.stats.counts, wide_float(xp)), xp)
    return np.rint(np.asarray(to_host(counts), dtype=np.float64)).astype(np.int64)


def _gathered_rows(collectives: Collectives, values: Array, xp: Any) -> Array:
    """Every rank's 1-D `values`, concatenated in rank order (padded to gather)."""
    wide = wide_float(xp)
    sizes = collectives.all_gather(xp.asarray([values.shape[0]]))
    sizes = [int(to_host(n)[0]) for n in sizes]
    padded = xp.concat(
        [xp.astype(values, wide), xp.zeros((max(sizes) - values.shape[0],), dtype=wide)]
    )
    parts = collectives.all_gather(padded)
    return xp.concat([part[:n] for part, n in zip(parts, sizes, strict=True)])


def _largest(x: Array, xp: Any) -> Array:
    """The largest entry of `x` (0 when empty), in the widest float."""
    wide = wide_float(xp)
    if x.shape[0] == 0:
        return xp.zeros((), dtype=wide)
    return xp.astype(xp.max(x), wide)


def _nc1(within_scatter: Array, between: Array, total: Array, size: int, xp: Any) -> Array:
    """``sum_r w_r v_r^T S_W v_r / N`` over the eigenpairs of ``Mc^T Mc`` (d, d),
    with the zero-eigenvalue rule of `ncgeom.metrics.between_basis`."""
    with serial_lapack(xp, between.shape):
        lam, vectors = xp.linalg.eigh(between)
    eps = xp.finfo(between.dtype).eps
    keep = lam > size * eps * xp.max(lam)
    safe = xp.where(keep, lam, xp.ones_like(lam))
    weights = xp.where(keep, 1 / safe, xp.zeros_like(lam))
    along = xp.sum(vectors * (within_scatter @ vectors), axis=0)
    return xp.sum(along * weights) / total


#: What `shard_classifier_metrics` returns, in the vocabulary of `ncgeom.NCReport`.
SHARD_CLASSIFIER_METRICS = (
    "self_duality_error",
    "scaled_alignment_error",
    "classifier_equinorm",
    "uniform_duality",
    "uniform_duality_variance",
    "bias_collapse",
)


def shard_classifier_metrics(
    shard: ClassShard,
    collectives: Collectives,
    classifier: Array,
    bias: Array | None = None,
    *,
    global_mean: str = "samples",
) -> dict[str, float]:
    """`SHARD_CLASSIFIER_METRICS` from class shards and the classifier's rows of
    each shard; every rank must call it.

    Equal to the same names of ``nc_report(stats, W, b)`` of the whole table
    (1e-10 relative in float64 in the tests), over the classes with samples;
    NaN where the report gives NaN for degenerate geometry.

    Parameters
    ----------
    shard : ClassShard
    collectives : Collectives
    classifier : array, shape (K_r, d)
        The rows of W of this rank's classes (``W[shard.offset:][:K_r]``), on the
        statistics' namespace.
    bias : array, shape (K_r,), optional
        The same rows of the bias (for `bias_collapse`).
    global_mean : {"samples", "classes"}

    Notes
    -----
    Each metric is a sum over the classes taken in two steps: the largest
    entries or norms (an all-gather), then the sums about them (all-reduces of
    a few numbers), so that nothing overflows or cancels.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, nc_report
    >>> from ncgeom.plugins import Collectives, reduce_scatter_class_stats
    >>> from ncgeom.plugins import shard_classifier_metrics
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 4, size=200)
    >>> x = 3 * np.eye(4)[y] + rng.normal(size=(200, 4))
    >>> w = np.eye(4) + 0.1 * rng.normal(size=(4, 4))
    >>> alone = Collectives(0, 1, lambda a: [a], lambda a: a, lambda a: a)
    >>> shard = reduce_scatter_class_stats(ClassStats.from_features(x, y, 4), alone)
    >>> value = shard_classifier_metrics(shard, alone, w)["self_duality_error"]
    >>> bool(abs(value - nc_report((x, y), w).self_duality_error) < 1e-12)
    True
    """
    check_instance(shard, ClassShard, "shard")
    check_instance(collectives, Collectives, "collectives")
    classifier, bias = agree_on_classifier(shard, collectives, classifier, bias)
    if classifier is None:
        msg = "`classifier` must be the rows of W of this rank's classes; got None"
        raise TypeError(msg)
    return _shard_classifier_metrics(shard, collectives, classifier, bias, global_mean)[0]


def _shard_classifier_metrics(
    shard: ClassShard,
    collectives: Collectives,
    classifier: Array,
    bias: Array | None,
    global_mean: str,
) -> tuple[dict[str, float], dict[str, bool]]:
    """`shard_classifier_metrics` and the flags of degenerate geometry it read."""
    check_instance(shard, ClassShard, "shard")
    check_instance(collectives, Collectives, "collectives")
    check_choice(global_mean, "global_mean", GLOBAL_MEANS)
    stats = shard.stats
    xp, dtype = stats.xp, stats.dtype
    wide = wide_float(xp)
    rows = stats.num_classes
    check_shard_classifier(shard, classifier, bias)
    if bias is not None and tuple(bias.shape) != (rows,):
        msg = f"`bias` must have shape ({rows},) (this shard's rows); got {tuple(bias.shape)}"
        raise ValueError(msg)
    roots = xp.sqrt(xp.astype(stats.counts, dtype))
    known = stats.counts[:, None] > 0
    means = xp.where(known, stats.shift + stats.offsets, xp.zeros_like(stats.shift))
    own = _classes(shard, collectives, global_mean, (roots @ means,))
    seen, weight = own.seen, own.weight
    centre, classes, root_sum = own.centre, own.classes, own.extra[0]
    w = xp.where(seen[:, None], xp.astype(classifier, dtype), xp.zeros_like(stats.shift))
    centred = (means - centre) * weight[:, None]
    target = (classes * roots[:, None] * means - root_sum) * weight[:, None]
    scaled = roots[:, None] * means
    scaled_centred = (scaled - root_sum / classes) * weight[:, None]
    # 1) The largest entries: of W, of the centred means, of the target, and row norms of W.
    w_top = xp.max(xp.abs(w), axis=1)
    w_rest = xp.linalg.vector_norm(w / xp.where(w_top > 0, w_top, 1.0)[:, None], axis=1)
    w_norms = xp.astype(w_top, wide) * xp.astype(w_rest, wide)
    local = xp.stack(
        [
            _largest(xp.reshape(xp.abs(w), (-1,)), xp),
            _largest(xp.reshape(xp.abs(centred), (-1,)), xp),
            _largest(xp.reshape(xp.abs(target), (-1,)), xp),
            _largest(w_norms, xp),
            _largest(xp.vecdot(scaled, scaled), xp),
            _largest(xp.vecdot(scaled_centred, scaled_centred), xp),
        ]
    )
    tops = xp.max(xp.stack([xp.astype(x, wide) for x in collectives.all_gather(local)]), axis=0)
    one = xp.ones((), dtype=wide)
    top_w, top_c, top_t, top_norm = (xp.where(tops[i] > 0, tops[i], one) for i in range(4))
    a = w / xp.astype(top_w, dtype)
    scores = xp.astype(xp.vecdot(a, centred), wide) * xp.astype(weight, wide)
    logits = xp.astype(a @ centre, wide) * top_w * xp.astype(stats.unit_scale, wide)
    if bias is not None:
        logits = logits + xp.astype(bias, wide)
    logits = logits * xp.astype(weight, wide)
    norms = w_norms / top_norm
    sums = collectives.all_reduce(
        xp.stack(
            [
                xp.sum(xp.astype(a * a, wide)),
                xp.sum(xp.astype((centred / xp.astype(top_c, dtype)) ** 2, wide)),
                xp.sum(xp.astype((target / xp.astype(top_t, dtype)) ** 2, wide)),
                xp.sum(norms * xp.astype(weight, wide)),
                xp.sum(scores),
                _largest(xp.abs(logits), xp),
            ]
        )
    )
    # the largest logit of every rank: the sum above is only a bound; gather the maximum
    top_logit = xp.max(
        xp.stack(
            [
                xp.astype(x, wide)
                for x in collectives.all_gather(xp.reshape(_largest(xp.abs(logits), xp), (1,)))
            ]
        )
    )
    norm_w, norm_c, norm_t = (xp.sqrt(sums[i]) for i in range(3))
    mean_norm, mean_score = sums[3] / classes, sums[4] / classes
    wd = xp.astype(weight, wide)
    safe_top_logit = xp.where(top_logit > 0, top_logit, one)
    seconds = collectives.all_reduce(
        xp.stack(
            [
                _sq_distance(a, norm_w, centred / xp.astype(top_c, dtype), norm_c, xp),
                _sq_distance(a, norm_w, target / xp.astype(top_t, dtype), norm_t, xp),
                xp.sum(wd * (norms - mean_norm) ** 2),
                xp.sum(wd * (scores - mean_score) ** 2),
                xp.sum((logits / safe_top_logit) ** 2),
            ]
        )
    )
    n = float(to_host(classes))
    factor = top_w * xp.astype(stats.unit_scale, wide)
    values = xp.stack(
        [
            xp.sqrt(seconds[0]),
            xp.sqrt(seconds[1]),
            xp.sqrt(seconds[2] / classes) / xp.where(mean_norm > 0, mean_norm, one),
            xp.sqrt(seconds[3] / classes) / xp.where(mean_score != 0, xp.abs(mean_score), one),
            seconds[3] / (classes - 1) * factor * factor,
            top_logit * xp.sqrt(seconds[4]),
        ]
    )
    host = [float(v) for v in to_host(values)]
    result = dict(zip(SHARD_CLASSIFIER_METRICS, host, strict=True))
    flags = spread_flags(collectives, means, centred)
    largest_scaled, largest_scaled_centred = (float(v) for v in to_host(tops[4:6]))
    eps = float(xp.finfo(dtype).eps)
    flags["scaled"] = largest_scaled_centred <= (16 * eps) ** 2 * largest_scaled
    flags["classifier"] = float(to_host(tops[0])) == 0
    flags["duality_mean"] = float(to_host(sums[4])) == 0
    for name in SHARD_CLASSIFIER_METRICS:
        undefined = n < 2 and name not in ("bias_collapse",)
        if name in ("self_duality_error", "scaled_alignment_error"):
            zero = (
                float(to_host(norm_w)) == 0
                or float(to_host(norm_c if name == "self_duality_error" else norm_t)) == 0
            )
            undefined = undefined or zero
        if undefined or any(flags.get(f, False) for f in DEGENERATE_METRICS.get(name, ())):
            result[name] = math.nan
    return result, flags


def check_shard_classifier(
    shard: ClassShard, classifier: Array, bias: Array | None = None
) -> None:
    """`classifier` must be (K_r, d), the rows of the shard's classes, of the
    statistics' library (and `bias`, if given, too)."""
    stats = shard.stats
    namespace(stats=stats.shift, classifier=classifier, bias=bias)  # one library
    if tuple(classifier.shape) != (stats.num_classes, stats.dim):
        shape = tuple(classifier.shape)
        msg = (
            f"`classifier` must have shape ({stats.num_classes}, {stats.dim}) (this shard's "
            f"rows); got {shape}"
        )
        raise ValueError(msg)


def agree_on_classifier(
    shard: ClassShard,
    collectives: Collectives,
    classifier: Array | None,
    bias: Array | None = None,
) -> tuple[Array | None, Array | None]:
    """This rank's rows of W (and b) checked as `ncgeom.nc_report` checks a
    classifier (shape, library, a real floating dtype, finite); every rank
    must call it, also without a classifier. One all-gather compares the
    verdicts: a classifier refused on one rank, or given on some ranks only,
    raises on every rank (the refusing rank its own error, the others naming
    it), so that no rank is left waiting in a later collective. Returns the
    rows, detached, and the bias."""
    stats = shard.stats
    xp = stats.xp
    error: Exception | None = None
    try:
        if bias is not None and classifier is None:
            msg = (
                "`bias` needs a `classifier`: it is added to the classifier's logits; "
                "got classifier=None"
            )
            raise ValueError(msg)
        if classifier is not None:
            check_shard_classifier(shard, classifier, bias)
            shape = (stats.num_classes, stats.dim)
            classifier = check_classifier(classifier, shape, stats.dtype, xp)
        if bias is not None:
            check_bias_vector(bias, stats.num_classes, xp)
            bias = detach(bias)
    except (TypeError, ValueError) as err:
        error = err
    state = 1.0 if error is not None else (0.0 if classifier is not None else 2.0)
    code = xp.asarray([state], dtype=wide_float(xp), device=stats.device)
    states = [float(to_host(part)[0]) for part in collectives.all_gather(code)]
    if error is not None:
        raise error
    if 1.0 in states:
        msg = (
            f"rank {states.index(1.0)}'s `classifier` or `bias` was refused there; "
            "nothing was measured"
        )
        raise ValueError(msg)
    if len(set(states)) > 1:
        given = [r for r, state in enumerate(states) if state == 0.0]
        msg = (
            "`classifier` must be given on every rank or on none; got it on ranks "
            f"{given} of {len(states)}"
        )
        raise ValueError(msg)
    return classifier, bias


def _sq_distance(a: Array, norm_a: Array, b: Array, norm_b: Array, xp: Any) -> Array:
    """``sum ||a_k / norm_a - b_k / norm_b||^2`` over this rank's rows, in the widest float."""
    wide = wide_float(xp)
    one = xp.ones((), dtype=wide)
    diff = xp.astype(a, wide) / xp.where(norm_a > 0, norm_a, one) - xp.astype(b, wide) / xp.where(
        norm_b > 0, norm_b, one
    )
    return xp.sum(diff * diff)
