"""Pair metrics of the class means from class shards, exact, one block of means at a time.

Rank r holds the means of its own classes. The blocks travel one at a time:
in step j every rank all-reduces a (ceil(K / P), 2 d + 2) array that only rank
j fills, which hands rank j's block to all. Rank r reads the pairs of its own
block (`ncgeom.measure.pairs._run_pass`) and the pairs between its block and
those of the ranks after it (`_cross_pass`), so that every pair k < l is read
once, by one rank, with the global constants of the unsharded pass (the exact
means over pairs come from Gram identities of all-reduced sums). The tiles'
partial results of every rank are then gathered and merged as one pass merges
its own, which makes the values those of `ncgeom.nc_report` of the whole table.
"""

from __future__ import annotations

import math
from typing import Any

from .._lib.backend import quiet_division, quiet_invalid, to_host, wide_float
from .._lib.validate import check_choice, check_instance, check_positive
from .classes import DEGENERATE_METRICS, GLOBAL_MEANS
from .distributed import ClassShard, Collectives, class_shards
from .pairs import (
    MEANS_PAIR_METRICS,
    _check_names,
    _cross_pass,
    _PairPass,
    _riesz_s,
    _Rows,
    _run_pass,
)
from .shard_metrics import (
    _classes,
    _gathered_rows,
    _largest,
    agree_on_classifier,
    check_shard_classifier,
    spread_flags,
)

__all__ = ["ring_pass", "shard_classifier_pair_metrics", "shard_pair_metrics"]

Array = Any

#: Every partial result a pass may keep (`_PairPass.parts`), in a fixed order.
_PART_KEYS = (
    "abs",
    "cdnv",
    "close",
    "cos_dev",
    "count",
    "gram_dev",
    "log_dev",
    "log_sum",
    "max",
    "min",
    "orth",
    "riesz_dev",
    "riesz_ref",
    "riesz_sum",
)


def shard_pair_metrics(
    shard: ClassShard,
    collectives: Collectives,
    names: tuple[str, ...] = MEANS_PAIR_METRICS,
    *,
    global_mean: str = "samples",
    s: float | None = None,
    exponent: float = 1.0,
) -> dict[str, float]:
    """The pair metrics of the class means (`MEANS_PAIR_METRICS`) from class
    shards; every rank must call it, with the same arguments.

    Equal to the same names of ``nc_report`` of the whole table with exact
    pairs (1e-10 relative in float64 in the tests), over the classes with
    samples; NaN where the report gives NaN for degenerate geometry.

    Parameters
    ----------
    shard : ClassShard
        This rank's shard (`reduce_scatter_class_stats`, `ShardedClassStats.shard`).
    collectives : Collectives
        This process's rank, world size, ``all_gather`` and ``all_reduce``.
    names : tuple of str
        Metrics of `MEANS_PAIR_METRICS`.
    global_mean : {"samples", "classes"}
    s : float, optional
        Exponent of the Riesz kernel, ``d - 2`` by default.
    exponent : float
        Exponent of the squared distance in CDNV (> 0).

    Notes
    -----
    Memory per rank: its own block and one received block, 2 ceil(K / P)
    (2 d + 2) numbers, and the tiles of the blocked pass. Bytes: P all-reduces
    of ceil(K / P) (2 d + 2) numbers (the orthogonality error's uncentred means
    included), about 2 K (2 d + 2) per rank with ring all-reduces, plus a few
    small all-reduces and all-gathers. Rank r reads the pairs of blocks r..P-1
    against its own, so the first ranks do more of the work.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, nc_report
    >>> from ncgeom.plugins import Collectives, reduce_scatter_class_stats
    >>> from ncgeom.plugins import shard_pair_metrics
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 5, size=300)
    >>> x = 3 * rng.normal(size=(5, 6))[y] + rng.normal(size=(300, 6))
    >>> alone = Collectives(0, 1, lambda a: [a], lambda a: a, lambda a: a)
    >>> shard = reduce_scatter_class_stats(ClassStats.from_features(x, y, 5), alone)
    >>> values = shard_pair_metrics(shard, alone, ("cdnv", "etf_error"))
    >>> bool(abs(values["cdnv"] - nc_report((x, y)).cdnv) < 1e-12)
    True
    """
    return _shard_pair_metrics(shard, collectives, names, global_mean, s, exponent)[0]


def _shard_pair_metrics(
    shard: ClassShard,
    collectives: Collectives,
    names: tuple[str, ...],
    global_mean: str,
    s: float | None,
    exponent: float,
) -> tuple[dict[str, float], dict[str, bool]]:
    """`shard_pair_metrics` and the flags of degenerate geometry it read."""
    check_instance(shard, ClassShard, "shard")
    check_instance(collectives, Collectives, "collectives")
    check_choice(global_mean, "global_mean", GLOBAL_MEANS)
    asked = _check_names(names, MEANS_PAIR_METRICS)
    stats = shard.stats
    xp, dtype, dim = stats.xp, stats.dtype, stats.dim
    wide = wide_float(xp)
    s = _riesz_s(s, dim)
    exponent = check_positive(exponent, "exponent")
    ortho = "orthogonality_error" in asked
    # 1) The centre and the rows of this rank's classes with samples.
    classes = _classes(shard, collectives, global_mean)
    own = xp.nonzero(classes.seen)[0]
    means = xp.take(classes.means, own, axis=0)
    centre = classes.centre
    variances = xp.take(stats.scaled_variances(), own, axis=0)
    rows = _Rows.of(means - centre, xp, variances, means if ortho else None)
    height = class_shards(shard.num_classes, collectives.world_size)[0][1]
    state = ring_pass(collectives, rows, asked, height, s=s, exponent=exponent)
    alive = collectives.all_reduce(
        xp.reshape(xp.sum(xp.astype(xp.vecdot(means, means) > 0, wide)), (1,))
    )
    if state is None:
        return dict.fromkeys(sorted(asked), math.nan), {"between": True}
    with quiet_division(), quiet_invalid():  # NaN and Inf of degenerate (flagged) geometry
        values = state.results()
        flags = {name: bool(to_host(flag)) for name, flag in state.flags().items()}
    flags.update(spread_flags(collectives, means, rows.raw))
    flags["alive"] = float(to_host(alive[0])) < 2
    eps = float(xp.finfo(dtype).eps)
    largest = xp.max(xp.stack(list(collectives.all_gather(_largest(xp.vecdot(means, means), xp)))))
    flags["zero_direction"] = _gathered_any(
        collectives, xp.any(rows.sq <= (16 * eps) ** 2 * xp.astype(largest, rows.sq.dtype)), xp
    )
    result = {}
    scale = float(to_host(stats.unit_scale))
    for name in sorted(asked):
        value = float(to_host(xp.astype(values[name], wide)))
        if name == "cdnv" and exponent != 1:
            value *= scale ** (1 - exponent) * scale ** (1 - exponent)
        if any(flags.get(flag, False) for flag in DEGENERATE_METRICS.get(name, ())):
            value = math.nan
        result[name] = value
    return result, flags


def ring_pass(
    collectives: Collectives,
    rows: _Rows,
    names: frozenset[str],
    height: int,
    *,
    s: float = 0.0,
    exponent: float = 1.0,
) -> _PairPass | None:
    """The pass over every pair of the rows of all ranks (this rank's: `rows`,
    at most `height` of them), merged on every rank; None for fewer than two
    rows in all. Every rank must call it."""
    xp = rows.xp
    dtype, dim = rows.unit.dtype, rows.unit.shape[1]
    wide = wide_float(xp)
    world, rank = collectives.world_size, collectives.rank
    # The global constants: the number of rows and the exact means over all pairs.
    sums = collectives.all_reduce(
        xp.concat(
            [
                xp.sum(xp.astype(rows.unit, wide), axis=0),
                xp.sum(xp.astype(rows.raw, wide), axis=0),
                xp.stack(
                    [
                        xp.sum(xp.astype(xp.vecdot(rows.unit, rows.unit), wide)),
                        xp.sum(xp.astype(rows.sq, wide)),
                        xp.asarray(float(rows.size), dtype=wide),
                    ]
                ),
            ]
        )
    )
    num = round(float(to_host(sums[2 * dim + 2])))
    if num < 2:
        return None
    pairs = num * (num - 1)
    unit_sum, raw_sum = sums[:dim], sums[dim : 2 * dim]
    mean_cos = (xp.vecdot(unit_sum, unit_sum) - sums[2 * dim]) / pairs
    gram_shift = (xp.vecdot(raw_sum, raw_sum) - sums[2 * dim + 1]) / pairs
    state = _PairPass(rows, names, s, exponent, size=num, mean_cos=mean_cos, gram_shift=gram_shift)
    # The pairs of this rank's rows, then those with the rows of later ranks,
    # whose blocks arrive one at a time (an all-reduce that one rank fills).
    _run_pass(rows, names, None, s, exponent, state=state)
    own_table = state.table
    columns = [rows.raw]
    if rows.uncentred is not None:
        columns.append(rows.uncentred)
    flag = xp.ones((rows.size, 1), dtype=dtype)
    extra = rows.variances if rows.variances is not None else xp.zeros((rows.size,), dtype=dtype)
    packed = xp.concat([*columns, extra[:, None], flag], axis=1)
    packed = xp.concat([packed, xp.zeros((height - rows.size, packed.shape[1]), dtype=dtype)])
    for sender in range(world):
        block = collectives.all_reduce(packed if sender == rank else xp.zeros_like(packed))
        if sender <= rank:
            continue
        block = xp.take(block, xp.nonzero(block[:, -1] > 0)[0], axis=0)
        uncentred = block[:, dim : 2 * dim] if rows.uncentred is not None else None
        variances = block[:, -2] if rows.variances is not None else None
        cols = _Rows.of(block[:, :dim], xp, variances, uncentred)
        _cross_pass(state, rows, own_table, cols, None)
    # Every rank's partial results, merged as one pass merges its tiles.
    state.parts = _gathered_parts(collectives, state.parts, xp, wide)
    if "etf_error" in names:
        state.table = {"sq": _gathered_rows(collectives, rows.sq, xp)}
    return state


def _gathered_any(collectives: Collectives, flag: Array, xp: Any) -> bool:
    parts = collectives.all_gather(xp.reshape(xp.astype(flag, wide_float(xp)), (1,)))
    return any(float(to_host(part)[0]) > 0 for part in parts)


def _gathered_parts(
    collectives: Collectives, parts: dict[str, list[Array]], xp: Any, wide: Any
) -> dict[str, list[Array]]:
    """Every rank's tile results, key by key in rank order."""
    unknown = set(parts) - set(_PART_KEYS)
    if unknown:  # a new kind of partial result of `_PairPass`: list it in _PART_KEYS
        msg = f"partial results {sorted(unknown)} have no place in the exchange"
        raise RuntimeError(msg)
    own = {key: [xp.astype(v, wide) for v in parts.get(key, [])] for key in _PART_KEYS}
    lengths = xp.asarray([len(own[key]) for key in _PART_KEYS])
    flat = [v for key in _PART_KEYS for v in own[key]]
    values = xp.stack(flat) if flat else xp.zeros((0,), dtype=wide)
    tables = [[int(n) for n in to_host(t)] for t in collectives.all_gather(lengths)]
    longest = max(sum(t) for t in tables)
    padded = xp.concat([values, xp.zeros((longest - values.shape[0],), dtype=wide)])
    merged: dict[str, list[Array]] = {key: [] for key in _PART_KEYS}
    for table, part in zip(tables, collectives.all_gather(padded), strict=True):
        at = 0
        for key, n in zip(_PART_KEYS, table, strict=True):
            merged[key].extend(part[i] for i in range(at, at + n))
            at += n
    return {key: entries for key, entries in merged.items() if entries}


def shard_classifier_pair_metrics(
    shard: ClassShard, collectives: Collectives, classifier: Array
) -> dict[str, float]:
    """`classifier_equiangularity` and `classifier_etf_error` of the classifier's
    rows of the classes with samples, from each rank's rows; every rank must
    call it. Equal to those of ``nc_report(stats, W)`` with exact pairs.

    Parameters
    ----------
    shard : ClassShard
    collectives : Collectives
    classifier : array, shape (K_r, d)
        The rows of W of this rank's classes, as for `shard_classifier_metrics`.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, nc_report
    >>> from ncgeom.plugins import Collectives, reduce_scatter_class_stats
    >>> from ncgeom.plugins import shard_classifier_pair_metrics
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 4, size=200)
    >>> x, w = rng.normal(size=(200, 5)), rng.normal(size=(4, 5))
    >>> alone = Collectives(0, 1, lambda a: [a], lambda a: a, lambda a: a)
    >>> shard = reduce_scatter_class_stats(ClassStats.from_features(x, y, 4), alone)
    >>> value = shard_classifier_pair_metrics(shard, alone, w)["classifier_etf_error"]
    >>> bool(abs(value - nc_report((x, y), w).classifier_etf_error) < 1e-12)
    True
    """
    check_instance(shard, ClassShard, "shard")
    check_instance(collectives, Collectives, "collectives")
    classifier, _ = agree_on_classifier(shard, collectives, classifier)
    if classifier is None:
        msg = "`classifier` must be the rows of W of this rank's classes; got None"
        raise TypeError(msg)
    return _shard_classifier_pair_metrics(shard, collectives, classifier)[0]


def _shard_classifier_pair_metrics(
    shard: ClassShard, collectives: Collectives, classifier: Array
) -> tuple[dict[str, float], dict[str, bool]]:
    """`shard_classifier_pair_metrics` and the flags of degenerate geometry it read."""
    check_instance(shard, ClassShard, "shard")
    check_instance(collectives, Collectives, "collectives")
    stats = shard.stats
    xp, dtype = stats.xp, stats.dtype
    check_shard_classifier(shard, classifier)
    w = xp.take(xp.astype(classifier, dtype), xp.nonzero(stats.counts > 0)[0], axis=0)
    local = xp.reshape(_largest(xp.reshape(xp.abs(w), (-1,)), xp), (1,))
    largest = xp.max(xp.concat(list(collectives.all_gather(local))))
    scale = xp.astype(xp.where(largest > 0, largest, xp.ones_like(largest)), dtype)
    rows = _Rows.of(w / scale, xp)
    names = frozenset(("equiangularity", "etf_error"))
    height = class_shards(shard.num_classes, collectives.world_size)[0][1]
    state = ring_pass(collectives, rows, names, height)
    zero_row = _gathered_any(collectives, xp.any(rows.sq == 0), xp)
    if state is None:
        nan = {"classifier_equiangularity": math.nan, "classifier_etf_error": math.nan}
        return nan, {}
    with quiet_division(), quiet_invalid():  # NaN of zero rows (flagged)
        values = state.results()
    flags = {"classifier": float(to_host(largest)) == 0, "classifier_row": zero_row}
    result = {}
    for name, value in values.items():
        key = f"classifier_{name}"
        result[key] = float(to_host(xp.astype(value, wide_float(xp))))
        if any(flags.get(flag, False) for flag in DEGENERATE_METRICS.get(key, ())):
            result[key] = math.nan
    return result, flags
