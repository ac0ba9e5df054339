"""The report of class shards: `ncgeom.NCReport` with no rank holding every class.

`shard_report` gathers what the functions of the shard modules compute (NC1
and the norm metrics, the pair metrics through the exchange of mean blocks,
the classifier's metrics from each rank's rows of W, the nearest ideal
geometries and the comparisons with the UFM+ optimum) into the report that
`ncgeom.nc_report` makes of the whole table, with the same rules for
degenerate geometry (NaN with its reason, one warning). Only (K,) vectors
travel whole: the counts and the per-class quantities.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._lib.backend import array_device, backend_name, to_host, wide_float
from .._lib.validate import check_choice, check_class_count, check_instance
from ..theory.optimum import UFMOptimum
from .classes import DEGENERATE_REASONS, GLOBAL_MEANS, CountFilter
from .distributed import ClassShard, Collectives
from .pairs import CLASSIFIER_PAIR_METRICS, MEANS_PAIR_METRICS, SAMPLED_PAIR_METRICS
from .report import (
    _CLASSIFIER_METRICS,
    _NO_OOD_MEAN,
    _SAMPLED_IN_REPORT,
    _THEORY_METRICS,
    _THEORY_PER_CLASS,
    NCReport,
    _check_pairs,
    _checked_objective,
    _mark_degenerate,
    _not_sampled_reason,
    _sampled_pairs,
    theory_context,
)
from .shard_metrics import (
    _classes,
    _gathered_rows,
    _shard_classifier_metrics,
    _shard_metrics,
    agree_on_classifier,
    shard_counts,
)
from .shard_nearest import shard_nearest_metrics
from .shard_pairs import _shard_classifier_pair_metrics, _shard_pair_metrics
from .shard_sampled import _estimates
from .shard_theory import shard_theory_metrics
from .stats import ClassStats
from .variants import _unit_rows

__all__ = ["shard_report"]

Array = Any

#: Why the pair metrics are missing with ``pairs="none"``.
_LEFT_OUT = 'left out: shard_report(..., pairs="none")'


def shard_report(
    shard: ClassShard,
    collectives: Collectives,
    classifier: Array | None = None,
    bias: Array | None = None,
    *,
    theory: UFMOptimum | None = None,
    objective: float | None = None,
    ood_mean: Array | None = None,
    min_count: int | None = None,
    max_count: int | None = None,
    pairs: str | int = "auto",
    global_mean: str = "samples",
) -> NCReport:
    """`ncgeom.nc_report` of the statistics of every rank's shard; every rank
    must call it, with the same arguments but its own shard and rows of W.

    Each rank gets the same report, equal to ``nc_report(stats, W, b,
    theory=..., pairs=...)`` of the whole table (1e-10 relative in float64
    in the tests), with the same NaN and reasons for degenerate geometry.
    No rank forms a (K, d) table of every class or a (K, K) array.

    Parameters
    ----------
    shard : ClassShard
        This rank's shard (`reduce_scatter_class_stats`,
        `ShardedClassStats.shard`); NC1 needs its pooled Gram.
    collectives : Collectives
        This process's rank, world size, ``all_gather`` and ``all_reduce``.
    classifier : array, shape (K_r, d), optional
        The rows of W of this rank's classes (``W[offset:offset + K_r]``), on
        the statistics' namespace: enables the classifier metrics.
    bias : array, shape (K_r,), optional
        The same rows of the bias (``bias_collapse``); needs `classifier`.
    theory : UFMOptimum, optional
        The predicted optimum of all K classes: adds the comparisons with it
        and the verdict's theory context, as for `ncgeom.nc_report`.
    objective : float, optional
        The UFM+ objective measured at the same point, for the verdict.
    ood_mean : array, shape (d,), optional
        The mean of out-of-distribution features (NC5, ``ood_deviation``).
    min_count, max_count : int, optional
        Keep only the classes with ``min_count <= n_k <= max_count`` samples
        (both inclusive), as for `ncgeom.nc_report` of statistics: NC1 and
        the comparisons with the theory are then unavailable.
    pairs : "auto", "exact", "none" or int
        As for `ncgeom.nc_report`: "exact", every pair metric through the
        exchange of mean blocks (`shard_pair_metrics`, P all-reduces of a
        block of ceil(K / P) means); an int, the estimates of the pair means
        from that many sampled pairs with their intervals
        (`shard_sampled_pair_metrics`: the pairs, estimates and intervals of
        the unsharded report), the other pair metrics unavailable with the
        reason; "auto" (default), exact up to
        `ncgeom.metrics.SAMPLED_PAIRS_FROM` classes with samples and
        `SAMPLED_PAIRS` sampled pairs above. "none" leaves them all out.
    global_mean : {"samples", "classes"}
        Centre of the between-class spread.

    Returns
    -------
    NCReport
        The NCC agreement is unavailable (it needs the features, as in a
        report of statistics), and so is the objective unless given.

    Raises
    ------
    ValueError
        If `bias` comes without `classifier`, a shape does not match the
        shard, or `theory` has another number of classes.
    TypeError
        If `shard` or `collectives` have the wrong type.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, nc_report
    >>> from ncgeom.plugins import Collectives, reduce_scatter_class_stats, shard_report
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 4, size=200)
    >>> x = 3 * np.eye(5)[y] + rng.normal(size=(200, 5))
    >>> w = np.eye(5)[:4] + 0.1 * rng.normal(size=(4, 5))
    >>> alone = Collectives(0, 1, lambda a: [a], lambda a: a, lambda a: a)
    >>> stats = ClassStats.from_features(x, y, 4, gram=True)
    >>> report = shard_report(reduce_scatter_class_stats(stats, alone), alone, w)
    >>> whole = nc_report(stats, w)
    >>> bool(abs(report.nc1 - whole.nc1) < 1e-12), report.counts == whole.counts
    (True, True)
    """
    check_instance(shard, ClassShard, "shard")
    check_instance(collectives, Collectives, "collectives")
    check_choice(global_mean, "global_mean", GLOBAL_MEANS)
    if isinstance(pairs, str):
        check_choice(pairs, "pairs", ("auto", "exact", "none"))
    else:
        _check_pairs(pairs)
    bounds = CountFilter.of(min_count, max_count)
    classifier, bias = agree_on_classifier(shard, collectives, classifier, bias)
    context = None
    if theory is not None:
        context = theory_context(theory, global_mean=global_mean)
        check_class_count(len(context["counts"]), shard.num_classes, "theory", "the shards have")
    if objective is not None:
        objective = _checked_objective(objective)
    stats = shard.stats
    xp = stats.xp
    full = shard
    shard, filtered = _kept(shard, collectives, bounds)
    values: dict[str, float] = {}
    vectors: dict[str, Array] = {}
    unavailable: dict[str, str] = {}
    flags: dict[str, bool] = {}

    found, raised = _shard_metrics(shard, collectives, global_mean, ood_mean)
    values.update(found)
    _merge(flags, raised)
    if filtered:
        unavailable["nc1"] = (
            "the statistics' within-class Gram pools every class, also those left out "
            f"by {bounds.describe()}: pass in-memory (features, labels)"
        )
    elif shard.gram is None:
        unavailable["nc1"] = "statistics without Gram"
    unavailable["ncc_agreement"] = "needs features, not statistics"
    if ood_mean is None:
        unavailable["ood_deviation"] = _NO_OOD_MEAN
    counts = tuple(int(n) for n in shard_counts(full, collectives))
    kept = sum(1 for n in counts if bounds.keeps(n))
    sampled = None if pairs == "none" else _sampled_pairs(pairs, kept)
    estimated: dict[str, float] = {}
    if pairs == "none":
        for name in MEANS_PAIR_METRICS:
            unavailable[name] = _LEFT_OUT
    elif sampled is None:
        found, raised = _shard_pair_metrics(
            shard, collectives, MEANS_PAIR_METRICS, global_mean, None, 1.0
        )
        values.update(found)
        _merge(flags, raised)
    else:
        names = tuple(name for name in SAMPLED_PAIR_METRICS if name in _SAMPLED_IN_REPORT)
        found, halves, raised = _estimates(
            shard, collectives, names, sampled, global_mean, 0, 0.95, None
        )
        values.update(found)
        _merge(flags, raised)
        estimated = {name: half for name, half in halves.items() if name != "interference_mean"}
        for name in MEANS_PAIR_METRICS:
            if name not in found:
                unavailable[name] = _not_sampled_reason(name, kept, sampled)
    unseen = 0 in counts
    lengths = None
    if theory is not None and not filtered and not unseen:  # the optimum's frame too
        lengths = _own_lengths(shard, theory)
    nearest = shard_nearest_metrics(shard, collectives, global_mean=global_mean, lengths=lengths)
    values.update(nearest.values)
    unavailable.update(nearest.unavailable)
    if classifier is not None:
        found, raised = _shard_classifier_metrics(
            shard, collectives, classifier, bias, global_mean
        )
        values.update(found)
        _merge(flags, raised)
        if pairs == "none":
            for name in CLASSIFIER_PAIR_METRICS:
                unavailable[name] = _LEFT_OUT
        elif sampled is None:
            found, raised = _shard_classifier_pair_metrics(shard, collectives, classifier)
            values.update(found)
            _merge(flags, raised)
        else:
            for name in CLASSIFIER_PAIR_METRICS:
                unavailable[name] = _not_sampled_reason(name, kept, sampled)
        vectors["distance_norms"] = _distance_norms(shard, collectives, classifier, global_mean)
    else:
        for name in (*_CLASSIFIER_METRICS, "ncc_agreement"):
            unavailable.setdefault(name, "no classifier given")
    if theory is None:
        for name in _THEORY_METRICS:
            unavailable[name] = "no theory given"
    elif filtered:
        for name in (*_THEORY_METRICS, *_THEORY_PER_CLASS):
            unavailable[name] = (
                f"the theory covers every class, and {bounds.describe()} left some out"
            )
    else:
        found = shard_theory_metrics(shard, collectives, theory, classifier=classifier)
        values.update(found.values)
        vectors.update(found.vectors)
        unavailable.update(found.unavailable)
        if unseen:
            unavailable["optimum_frame_distance"] = "the theory needs every class to have samples"
    if theory is not None and objective is None:
        unavailable["objective"] = (
            "the cross-entropy needs the features, not statistics: pass objective= "
            "(e.g. the training loss with its regulariser)"
        )

    floats: dict[str, Any] = {name: float(value) for name, value in values.items()}
    for name, vector in vectors.items():
        whole = to_host(_gathered_rows(collectives, vector, xp))
        floats[name] = tuple(float(v) for v in whole)
    undefined = set(DEGENERATE_REASONS.values())
    for name, why in unavailable.items():
        if why in undefined and name in floats:
            floats[name] = math.nan  # degenerate geometry: NaN, as in the report
        else:
            floats.pop(name, None)
    _mark_degenerate(floats, unavailable, {flag for flag, up in flags.items() if up})
    if objective is not None:
        floats["objective"] = objective
    return NCReport(
        num_classes=shard.num_classes,
        num_samples=shard.num_samples,
        dim=stats.dim,
        counts=counts,
        excluded=tuple((k, bounds.reason(n)) for k, n in enumerate(counts) if not bounds.keeps(n)),
        global_mean=global_mean,
        backend=backend_name(xp),
        dtype=str(stats.dtype).rsplit(".", maxsplit=1)[-1],
        unavailable=tuple(unavailable.items()),
        estimated=tuple((name, half) for name, half in estimated.items() if name in floats),
        theory=context,
        **floats,
    )


def _kept(
    shard: ClassShard, collectives: Collectives, bounds: CountFilter
) -> tuple[ClassShard, bool]:
    """The shard with the classes that `bounds` leave out emptied (counts and
    sums zero: the metrics skip them as unseen), and whether any rank left
    out a class with samples (one all-reduce; none without bounds)."""
    if not bounds.active:
        return shard, False
    stats = shard.stats
    xp = stats.xp
    counts = stats.counts
    keep = counts >= bounds.min_count
    if bounds.max_count is not None:
        keep = keep & (counts <= bounds.max_count)
    dropped = xp.sum(xp.astype((counts > 0) & ~keep, wide_float(xp)))
    filtered = float(to_host(collectives.all_reduce(xp.reshape(dropped, (1,)))[0])) > 0
    if not filtered:
        return shard, False
    rows = keep[:, None]
    kept = ClassStats(
        xp.where(keep, counts, xp.zeros_like(counts)),
        xp.where(rows, stats.shift, xp.zeros_like(stats.shift)),
        xp.where(rows, stats.sums, xp.zeros_like(stats.sums)),
        xp.where(keep, stats.sqnorms, xp.zeros_like(stats.sqnorms)),
        None,
        stats.unit_scale,
    )
    return shard._replace(stats=kept), True


def _merge(flags: dict[str, bool], raised: dict[str, Any]) -> None:
    """Add the flags of one shard function to `flags` (a flag is up if any is)."""
    for name, up in raised.items():
        flags[name] = flags.get(name, False) or bool(up)


def _distance_norms(
    shard: ClassShard, collectives: Collectives, classifier: Array, global_mean: str
) -> Array:
    """``||w_k / ||w_k|| - c_k / ||c_k||||`` of this rank's classes (NaN where
    unseen or a row is zero), as `ncgeom.metrics.distance_norms`."""
    stats = shard.stats
    xp = stats.xp
    own = _classes(shard, collectives, global_mean)
    centred = own.means - own.centre
    w_unit, w_alive = _unit_rows(xp.astype(classifier, stats.dtype), xp)
    c_unit, c_alive = _unit_rows(centred, xp)
    dist = xp.linalg.vector_norm(w_unit - c_unit, axis=1)
    keep = w_alive & c_alive & own.seen
    return xp.where(keep, dist, xp.full_like(dist, math.nan))


def _own_lengths(shard: ClassShard, theory: UFMOptimum) -> Array:
    """This rank's rows of the optimum's feature norms, on the statistics' device."""
    stats = shard.stats
    xp = stats.xp
    norms = np.asarray(to_host(theory.feature_norms), dtype=np.float64)
    own = norms[shard.offset : shard.offset + stats.num_classes]
    return xp.asarray(own, dtype=wide_float(xp), device=array_device(stats.shift))
