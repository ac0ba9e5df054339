"""Pair means estimated from sampled pairs of class shards, with their intervals.

Every rank draws the same pairs as `ncgeom.measure.pairs.sampled_pair_metrics`
draws over all the classes with samples (the same seed gives the same pairs),
and reads those whose first class it owns. The blocks of means travel one at
a time, as for the exact pass (`shard_pair_metrics`): when rank j's block
arrives, every rank computes the terms of its pairs whose second class rank j
owns. The mean of every term and its spread about that mean are then summed
over the ranks, so the estimates and intervals are those of the unsharded
function on the whole table, to rounding.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np

from .._lib.backend import (
    array_device,
    index_dtype,
    quiet_division,
    quiet_invalid,
    to_host,
    wide_float,
)
from .._lib.validate import (
    check_choice,
    check_instance,
    check_int_at_least,
    check_real,
    check_seed,
)
from .classes import GLOBAL_MEANS
from .distributed import ClassShard, Collectives, class_shards
from .pairs import SAMPLED_PAIR_METRICS, _check_names, _riesz_s, _Rows, pair_terms
from .shard_metrics import _classes, _largest, shard_counts, spread_flags

__all__ = ["shard_sampled_pair_metrics"]

Array = Any


def shard_sampled_pair_metrics(
    shard: ClassShard,
    collectives: Collectives,
    names: tuple[str, ...],
    num_pairs: int,
    *,
    global_mean: str = "samples",
    seed: int = 0,
    confidence: float = 0.95,
    s: float | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Estimates of pair means from `num_pairs` sampled pairs, with the half
    widths of their intervals, from class shards; every rank must call it.

    Equal (to rounding) to `ncgeom.measure.pairs.sampled_pair_metrics` of the
    whole table with the same `seed`: the same pairs, the same terms, the same
    normal intervals. See there for what is estimated and when the intervals
    hold.

    Parameters
    ----------
    shard : ClassShard
    collectives : Collectives
    names : tuple of str
        Metrics of `ncgeom.metrics.SAMPLED_PAIR_METRICS`.
    num_pairs : int
        Pairs drawn (>= 2).
    global_mean : {"samples", "classes"}
    seed : int
        The same on every rank (>= 0).
    confidence : float
        Coverage of the intervals, in (0, 1).
    s : float, optional
        Exponent of the Riesz kernel, ``d - 2`` by default.

    Returns
    -------
    estimates, half_widths : dict of str to float
        NaN for fewer than two classes with samples; not masked for
        degenerate geometry (`shard_report` does that).

    Notes
    -----
    Bytes per rank: the exchange of mean blocks of `shard_pair_metrics`
    (P all-reduces of ceil(K / P) (2 d + 2) numbers), an all-gather of the
    counts and a few small all-reduces. Work: the terms of about
    `num_pairs` / P pairs.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats
    >>> from ncgeom.measure import pairs
    >>> from ncgeom.measure.classes import populated
    >>> from ncgeom.plugins import Collectives, reduce_scatter_class_stats
    >>> from ncgeom.plugins import shard_sampled_pair_metrics
    >>> rng = np.random.default_rng(0)
    >>> stats = ClassStats.from_features(rng.normal(size=(900, 6)), np.arange(900) % 300, 300)
    >>> alone = Collectives(0, 1, lambda a: [a], lambda a: a, lambda a: a)
    >>> shard = reduce_scatter_class_stats(stats, alone)
    >>> found, half = shard_sampled_pair_metrics(shard, alone, ("cdnv",), 5000)
    >>> whole, _ = pairs.sampled_pair_metrics(populated(stats), ("cdnv",), 5000)
    >>> bool(abs(found["cdnv"] / float(whole["cdnv"]) - 1) < 1e-12)
    True
    """
    return _estimates(shard, collectives, names, num_pairs, global_mean, seed, confidence, s)[:2]


def _estimates(
    shard: ClassShard,
    collectives: Collectives,
    names: tuple[str, ...],
    num_pairs: int,
    global_mean: str,
    seed: int,
    confidence: float,
    s: float | None,
) -> tuple[dict[str, float], dict[str, float], dict[str, bool]]:
    """`shard_sampled_pair_metrics` and the flags of degenerate geometry it read."""
    check_instance(shard, ClassShard, "shard")
    check_instance(collectives, Collectives, "collectives")
    check_choice(global_mean, "global_mean", GLOBAL_MEANS)
    asked = _check_names(names, SAMPLED_PAIR_METRICS)
    num_pairs = check_int_at_least(num_pairs, "num_pairs", 2)
    if seed is None or isinstance(seed, np.random.Generator):
        msg = f"`seed` must be an int >= 0 (every rank draws the same pairs); got {seed!r}"
        raise TypeError(msg)
    seed = check_seed(seed)
    confidence = check_real(confidence, "confidence")
    if not 0 < confidence < 1:
        msg = f"`confidence` must be in (0, 1); got {confidence!r}"
        raise ValueError(msg)
    stats = shard.stats
    xp = stats.xp
    s = _riesz_s(s, stats.dim)
    own = _classes(shard, collectives, global_mean)
    local = xp.nonzero(own.seen)[0]
    means = xp.take(own.means, local, axis=0)
    variances = xp.take(stats.scaled_variances(), local, axis=0)
    rows = _Rows.of(means - own.centre, xp, variances, means)
    flags = spread_flags(collectives, means, rows.raw)
    counts = shard_counts(shard, collectives)
    present = np.flatnonzero(counts > 0)
    num = int(present.size)
    flags["alive"] = _alive(collectives, means, xp) < 2
    if num < 2:
        nan = dict.fromkeys(sorted(asked), math.nan)
        return nan, dict(nan), flags
    # The pairs of `sampled_pair_metrics`, as classes, then as (owner, row there).
    rng = np.random.default_rng(seed)
    first = rng.integers(0, num, num_pairs)
    second = rng.integers(0, num - 1, num_pairs)
    second = second + (second >= first)
    shards = class_shards(shard.num_classes, collectives.world_size)
    starts = np.array([start for start, _ in shards])
    before = np.searchsorted(present, starts)  # classes with samples before each shard

    def placed(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        owner = np.searchsorted(starts, present[index], side="right") - 1
        return owner, index - before[owner]

    owner_a, row_a = placed(first)
    owner_b, row_b = placed(second)
    mine = owner_a == collectives.rank
    height = shards[0][1] - shards[0][0]  # the largest shard
    pairs = (owner_b[mine], row_a[mine], row_b[mine])
    terms = _exchange(collectives, rows, means, asked, num, height, pairs)
    estimates, half = _summaries(collectives, terms, num_pairs, confidence, s, xp)
    if "interference_mean" in asked:
        estimates["interference_mean"] = _interference_mean(collectives, rows, num, xp)
        half["interference_mean"] = 0.0
    return estimates, half, flags


def _alive(collectives: Collectives, means: Array, xp: Any) -> float:
    """The number of non-zero class means of every rank."""
    count = xp.sum(xp.astype(xp.vecdot(means, means) > 0, wide_float(xp)))
    return float(to_host(collectives.all_reduce(xp.reshape(count, (1,))))[0])


def _exchange(
    collectives: Collectives,
    rows: _Rows,
    means: Array,
    asked: frozenset[str],
    num: int,
    height: int,
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> dict[str, Array]:
    """The terms of this rank's pairs ``(partner, first, second)``: row
    `first` here and row `second` of rank `partner`, as each rank's block of
    (at most `height`) means arrives."""
    partner, first, second = pairs
    xp = rows.xp
    dtype, dim = rows.raw.dtype, rows.raw.shape[1]
    device = array_device(rows.raw)
    world, rank = collectives.world_size, collectives.rank
    flag = xp.ones((rows.size, 1), dtype=dtype, device=device)
    packed = xp.concat([rows.raw, means, rows.variances[:, None], flag], axis=1)
    packed = xp.concat(
        [packed, xp.zeros((height - rows.size, 2 * dim + 2), dtype=dtype, device=device)]
    )
    parts: dict[str, list[Array]] = {}
    here = (rows, means)
    for sender in range(world):
        block = collectives.all_reduce(packed if sender == rank else xp.zeros_like(packed))
        chosen = np.flatnonzero(partner == sender)
        if chosen.size == 0:
            continue
        block = xp.take(block, xp.nonzero(block[:, -1] > 0)[0], axis=0)
        there_means = block[:, dim : 2 * dim]
        there = _Rows.of(block[:, :dim], xp, block[:, -2], there_means)
        index = {
            name: xp.asarray(values[chosen], dtype=index_dtype(xp), device=device)
            for name, values in (("first", first), ("second", second))
        }
        found = pair_terms(here, (there, there_means), index["first"], index["second"], asked, num)
        for name, values in found.items():
            parts.setdefault(name, []).append(values)
    wide = wide_float(xp)
    names = asked - {"interference_mean"}
    empty = xp.zeros((0,), dtype=wide, device=device)
    return {name: xp.concat(parts[name]) if name in parts else empty for name in names}


def _summaries(
    collectives: Collectives,
    terms: dict[str, Array],
    num_pairs: int,
    confidence: float,
    s: float,
    xp: Any,
) -> tuple[dict[str, float], dict[str, float]]:
    """Means over every rank's terms, then the spreads about them (two
    all-reduces), as `sampled_pair_metrics` takes them."""
    names = sorted(terms)
    wide = wide_float(xp)
    shift = None
    if "riesz_log_energy" in terms:
        # exp(t - max t) with the largest kernel of every rank, as unsharded
        kernel = -s / 2 * terms["riesz_log_energy"]
        local = _largest(kernel, xp) if kernel.shape[0] else xp.asarray(-math.inf, dtype=wide)
        parts = collectives.all_gather(xp.reshape(xp.astype(local, wide), (1,)))
        shift = xp.max(xp.concat([xp.astype(part, wide) for part in parts]))
        shift = xp.where(xp.isfinite(shift), shift, xp.zeros_like(shift))
        terms = {**terms, "riesz_log_energy": xp.exp(kernel - shift)}
    with quiet_division(), quiet_invalid():
        sums = collectives.all_reduce(xp.stack([xp.sum(terms[name]) for name in names]))
        means = sums / num_pairs
        spreads = collectives.all_reduce(
            xp.stack([xp.sum((terms[name] - means[i]) ** 2) for i, name in enumerate(names)])
        )
        z = statistics.NormalDist().inv_cdf((1 + confidence) / 2)
        halves = z * xp.sqrt(spreads / (num_pairs - 1)) / math.sqrt(num_pairs)
        host_means = [float(v) for v in to_host(means)]
        host_halves = [float(v) for v in to_host(halves)]
    estimates, half = {}, {}
    for name, mean, spread in zip(names, host_means, host_halves, strict=True):
        if name == "riesz_log_energy":
            estimates[name] = float(to_host(shift)) + math.log(mean) if mean > 0 else -math.inf
            half[name] = spread / mean if mean else math.nan
        else:
            estimates[name], half[name] = mean, spread
    return estimates, half


def _interference_mean(collectives: Collectives, rows: _Rows, num: int, xp: Any) -> float:
    """``mean_{k<l} u_k . u_l`` over every rank's unit rows, from their sums."""
    wide = wide_float(xp)
    unit = xp.astype(rows.unit, wide)
    sums = collectives.all_reduce(
        xp.concat([xp.sum(unit, axis=0), xp.reshape(xp.sum(unit * unit), (1,))])
    )
    total, squares = sums[:-1], sums[-1]
    return float(to_host((xp.vecdot(total, total) - squares) / (num * (num - 1))))
