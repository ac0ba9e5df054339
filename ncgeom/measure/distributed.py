"""Exact combination of `ClassStats` across the processes of a distributed job.

`reduce_class_stats` is written once for every framework: a plugin passes its
framework's ``all_gather`` and ``all_reduce`` (see `FrameworkPlugin`).
`reduce_scatter_class_stats` leaves each rank the classes of its own shard
(`class_shards`) only, through a plugin's optional ``reduce_scatter``. Every
rank re-bases its statistics on the global class means with the public
`ClassStats.rebase`, so the sums that travel stay of the size of the
within-class spread. Every result of a collective is checked where it
returns (count, shape, dtype, array library), and the sums are checked
against the exact counts, so a broken collective raises instead of
corrupting the statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from .._lib.backend import backend_name, index_dtype, namespace, to_host, wide_float
from .._lib.validate import check_index, check_instance, check_int_at_least
from .stats import ClassStats

__all__ = [
    "ClassShard",
    "Collectives",
    "class_shards",
    "reduce_class_stats",
    "reduce_scatter_class_stats",
]

Array = Any

#: Floating dtypes ranks can agree on, by name (an unknown dtype gets its own code).
_DTYPE_CODES = ("float16", "bfloat16", "float32", "float64")


class Collectives(NamedTuple):
    """One process's view of its group: what `reduce_class_stats` needs.

    ``reduce_class_stats(stats, **collectives._asdict())`` combines the
    statistics of the group; ``reduce_scatter_class_stats(stats, collectives)``
    leaves each rank its shard of the classes, and needs `reduce_scatter`
    (optional: None where the framework offers none). A plugin may expose its
    framework's collectives as ``plugin.collectives()`` returning one of
    these; the conformance suite (`ncgeom.testing.conformance`) then checks
    them, `reduce_scatter` included when it is there.

    Examples
    --------
    >>> from ncgeom.plugins import Collectives
    >>> alone = Collectives(0, 1, lambda x: [x], lambda x: x)
    >>> alone.world_size, len(alone.all_gather(1.0))
    (1, 1)
    """

    rank: int
    world_size: int
    #: ``all_gather(x)``: the arrays `x` of every rank, in rank order.
    all_gather: Callable[[Array], Sequence[Array]]
    #: ``all_reduce(x)``: the element-wise sum of `x` over the ranks.
    all_reduce: Callable[[Array], Array]
    #: ``reduce_scatter(x)``: on rank r, the element-wise sum over the ranks of
    #: the rows ``x[start:stop]``, ``(start, stop) = class_shards(len(x),
    #: world_size)[r]``; None where the framework offers no reduce-scatter.
    reduce_scatter: Callable[[Array], Array] | None = None


def reduce_class_stats(
    stats: ClassStats,
    *,
    rank: int,
    world_size: int,
    all_gather: Callable[[Array], Sequence[Array]],
    all_reduce: Callable[[Array], Array],
    step: int = 0,
    reduce_scatter: Callable[[Array], Array] | None = None,
) -> ClassStats:
    """Combine the `ClassStats` of every process into those of all their samples.

    Each rank holds statistics of its own samples, relative to its own
    per-class shifts. Every rank calls this function with its statistics and
    two collectives of its framework; every rank returns the same statistics,
    equal (up to rounding) to `ClassStats.from_features` on all the samples.

    Parameters
    ----------
    stats : ClassStats
        This rank's statistics. A rank that saw no samples passes
        ``ClassStats.empty(K, any_dim, ...)`` with the common dtype and Gram
        setting: its dimension is then taken from the other ranks.
    rank, world_size : int
        This process's index and the number of processes.
    all_gather : callable
        ``all_gather(x)`` returns the arrays `x` of every rank, in rank order
        (a list or tuple of `world_size` arrays, or one array stacked along a
        new first axis), each of `x`'s shape and dtype.
    all_reduce : callable
        ``all_reduce(x)`` returns the element-wise sum of `x` over the ranks,
        of `x`'s shape and dtype (it may work in place on its argument, which
        the caller owns, but must return it).
    step : int
        The caller's count of reductions so far (e.g. of reports). Ranks that
        disagree on it have fallen out of step (one skipped a report, or
        retried after a failure) and get an error instead of mixing
        statistics of different moments.
    reduce_scatter : callable, optional
        Not used (every rank gets every class); accepted so that the fields
        of a `Collectives` can be passed as keywords.

    Returns
    -------
    ClassStats
        Statistics of the samples of all ranks, on this rank's namespace and
        device.

    Raises
    ------
    ValueError
        On every rank, if the ranks disagree on the number of classes, the
        dimension, the dtype, the Gram setting or the `step` (checked first, with one
        small all-gather, so that no rank waits forever in a collective of
        another size). On the rank that sees it, if a collective returns the
        wrong number of arrays or the wrong shape, puts this rank's array
        out of rank order, or sums to other counts than the all-gathered
        ones (e.g. a mean instead of a sum); the message names the collective.
    TypeError
        If a collective is not callable, or returns something that is not an
        array of the statistics' array library and dtype.

    Notes
    -----
    A common scale first: every rank states the power of two its statistics
    are stored in (in the layout all-gather) and all take the largest among
    ranks with samples (`ClassStats.rescaled`, exact). Then common shifts:
    the global class means, from one all-reduce of ``n_k * mean_k``; every
    rank re-centres its statistics on them (`ClassStats.rebase`, an exact
    identity that adds the between-rank spread ``n_r (mean_r - mean)^2``, a
    sum of positive terms) and the shifted sums, squared norms and Gram are
    added with ONE all-reduce of a packed buffer. Since the shifts are the
    merged means, the summed shifted values stay of the size of the
    within-class spread whatever the ranks hold (no cancellation, as in
    `ClassStats.merge`). Counts travel in an all-gather (int64, exact), not
    in the floating buffer, where float32 would round counts above 2**24.
    Four collectives in all; the packed one carries K d + 2 K + d^2 numbers.

    Both all-reduces also carry this rank's counts (K numbers): their sums
    must equal the all-gathered counts, which checks that the all-reduce
    sums (not averages, not a no-op) at the cost of one small host read at
    the end, after the last collective, so that no rank leaves the others
    waiting in one.

    Examples
    --------
    One process is its own world:

    >>> import numpy as np
    >>> from ncgeom import ClassStats
    >>> from ncgeom.plugins import reduce_class_stats
    >>> stats = ClassStats.from_features(np.eye(3), np.array([0, 1, 1]), 2)
    >>> same = reduce_class_stats(
    ...     stats, rank=0, world_size=1, all_gather=lambda x: [x], all_reduce=lambda x: x
    ... )
    >>> same.counts.tolist()
    [1, 2]
    """
    check_instance(stats, ClassStats, "stats")
    world_size = check_int_at_least(world_size, "world_size", 1)
    rank = check_index(rank, "rank", world_size)
    step = check_int_at_least(step, "step", 0)
    _check_callable(all_gather, "all_gather", "x -> the x of every rank, in rank order")
    _check_callable(all_reduce, "all_reduce", "x -> the element-wise sum of x over the ranks")
    xp = stats.xp

    def gather(x: Array) -> list[Array]:
        return _gathered(all_gather(x), x, world_size)

    def reduce(x: Array) -> Array:
        return _reduced(all_reduce(x), x)

    # 1) Agree on the layout, the step and the scale (one all-gather of seven
    # integers per rank).
    table, common = _agree(stats, gather, rank, step)
    if common is None:  # no rank saw a sample: nothing to combine
        return stats
    stats = common
    k, dim = stats.num_classes, stats.dim
    # 2) Counts of every rank (exact, int64).
    per_rank = xp.stack(gather(stats.counts))  # (world_size, K)
    counts = xp.sum(per_rank, axis=0)  # (K,)
    # 3) Common shifts: the global class means (zero for classes nobody saw).
    # Each all-reduce also carries the local counts: their sum is checked.
    n_local = xp.astype(stats.counts, stats.dtype)
    first = reduce(xp.concat([xp.reshape(n_local[:, None] * stats.scaled_means, (-1,)), n_local]))
    weighted = xp.reshape(first[: k * dim], (k, dim))
    shift = weighted / xp.astype(xp.clip(counts, min=1), stats.dtype)[:, None]
    # 4) Re-centre (exact identity) and add everything else in ONE all-reduce.
    local = stats.rebase(shift)
    parts = [xp.reshape(local.sums, (-1,)), local.sqnorms]
    if local.gram is not None:
        parts.append(xp.reshape(local.gram, (-1,)))
    packed = reduce(xp.concat([*parts, n_local]))
    sums = xp.reshape(packed[: k * dim], (k, dim))
    sqnorms = packed[k * dim : k * dim + k]
    gram = None
    if local.gram is not None:
        gram = xp.reshape(packed[k * dim + k : -k], (dim, dim))
    _check_sums(
        xp,
        table,
        rank,
        own=per_rank[rank, ...] == stats.counts,
        per_rank=xp.sum(per_rank, axis=1),
        counts=counts,
        reduced=(first[k * dim :], packed[-k:]),
    )
    return ClassStats(counts, shift, sums, sqnorms, gram, local.unit_scale)


def class_shards(num_classes: int, world_size: int) -> list[tuple[int, int]]:
    """The contiguous slices of the classes that the ranks own, in rank order.

    Rank r owns the classes ``start <= k < stop`` of entry r. The first
    ``num_classes % world_size`` ranks own one class more than the others, so
    the sizes differ by at most one; a rank owns none when there are fewer
    classes than ranks.

    Parameters
    ----------
    num_classes : int
        Number of classes K (>= 1).
    world_size : int
        Number of ranks P (>= 1).

    Returns
    -------
    list of (int, int)
        ``(start, stop)`` of each rank.

    Examples
    --------
    >>> from ncgeom.plugins import class_shards
    >>> class_shards(10, 4)
    [(0, 3), (3, 6), (6, 8), (8, 10)]
    """
    num_classes = check_int_at_least(num_classes, "num_classes", 1)
    world_size = check_int_at_least(world_size, "world_size", 1)
    size, more = divmod(num_classes, world_size)
    stops = [(r + 1) * size + min(r + 1, more) for r in range(world_size)]
    return list(zip([0, *stops[:-1]], stops, strict=True))


class ClassShard(NamedTuple):
    """One rank's shard of the statistics of all ranks' samples.

    What `reduce_scatter_class_stats` returns. `stats` holds the classes
    ``offset <= k < offset + stats.num_classes`` only, and no Gram: the Gram
    is pooled over all the classes and travels whole, in `gram`.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats
    >>> from ncgeom.plugins import ClassShard
    >>> stats = ClassStats.from_features(np.eye(2), np.array([0, 1]), 2)
    >>> shard = ClassShard(stats, 0, 2, None, 2)
    >>> shard.offset, shard.stats.num_classes
    (0, 2)
    """

    #: Statistics of this rank's classes (counts, shifts, sums and squared norms
    #: of the samples of every rank), relative to the classes' means; no Gram.
    stats: ClassStats
    #: The first class of the shard: ``stats`` row i is class ``offset + i``.
    offset: int
    #: The number of classes K of all shards together.
    num_classes: int
    #: ``sum_k sum_i (x_i / scale - shift_k)(...)^T`` over every class and every
    #: rank's samples (d, d), in units of ``stats.scale``; None without a Gram.
    gram: Array | None
    #: The number of samples N of all classes and ranks.
    num_samples: int


def reduce_scatter_class_stats(
    stats: ClassStats, collectives: Collectives, *, step: int = 0
) -> ClassShard:
    """Combine the `ClassStats` of every rank, each rank keeping its own classes.

    Every rank holds statistics of all K classes of its own samples. Every
    rank calls this function; rank r returns the statistics of the classes of
    ``class_shards(K, world_size)[r]`` over the samples of all ranks, equal
    (up to rounding) to those rows of `reduce_class_stats`: the same counts,
    shifts (the class means), sums and squared norms, and the same pooled
    Gram. The class tables travel by reduce-scatter, so that no rank receives
    the (K, d) sums of all classes.

    Parameters
    ----------
    stats : ClassStats
        This rank's statistics, as for `reduce_class_stats`.
    collectives : Collectives
        This process's rank, world size and collectives; its
        `reduce_scatter` must be given.
    step : int
        The caller's count of reductions so far; ranks that disagree on it
        get an error, as in `reduce_class_stats`.

    Returns
    -------
    ClassShard
        This rank's classes (`ClassShard.stats`, on this rank's namespace and
        device), their `offset`, K, the pooled Gram and N.

    Raises
    ------
    TypeError
        If `collectives` is not a `Collectives`, has no callable
        `reduce_scatter`, or a collective returns something that is not an
        array of the statistics' library and dtype.
    ValueError
        On every rank, if the ranks disagree on the layout or the `step` (as
        in `reduce_class_stats`). On the rank that sees it, if a collective
        returns the wrong shape or other sums than the exact counts (e.g. a
        mean, or this rank's rows unreduced); the message names the
        collective.

    Notes
    -----
    Six collectives; the layout all-gather first (as in `reduce_class_stats`,
    with the count of samples of each shard on each rank added). Then: (1)
    the counts (int64, exact) by reduce-scatter; (2) the class means of the
    shard, from a reduce-scatter of ``n_k * mean_k`` (K rows of d + 1
    numbers); (3) an all-gather of the shards' means, since every rank must
    re-centre its statistics of every class on the common means
    (`ClassStats.rebase`, the exact identity of `reduce_class_stats`); (4)
    the shifted sums and squared norms by reduce-scatter (K rows of d + 2
    numbers); (5) the Gram, pooled over the classes, by an all-reduce of
    d^2 + 1 numbers. The floating reduce-scatters carry the local counts and
    the all-reduce the local N: their sums are checked against the exact
    ones in one host read at the end.

    Examples
    --------
    One process owns every class:

    >>> import numpy as np
    >>> from ncgeom import ClassStats
    >>> from ncgeom.plugins import Collectives, reduce_scatter_class_stats
    >>> stats = ClassStats.from_features(np.eye(3), np.array([0, 1, 1]), 2)
    >>> alone = Collectives(0, 1, lambda x: [x], lambda x: x, lambda x: x)
    >>> shard = reduce_scatter_class_stats(stats, alone)
    >>> shard.offset, shard.stats.counts.tolist()
    (0, [1, 2])
    """
    check_instance(stats, ClassStats, "stats")
    check_instance(collectives, Collectives, "collectives")
    world_size = check_int_at_least(collectives.world_size, "collectives.world_size", 1)
    rank = check_index(collectives.rank, "collectives.rank", world_size)
    step = check_int_at_least(step, "step", 0)
    _check_callable(
        collectives.all_gather, "all_gather", "x -> the x of every rank, in rank order"
    )
    _check_callable(
        collectives.all_reduce, "all_reduce", "x -> the element-wise sum of x over the ranks"
    )
    _check_callable(
        collectives.reduce_scatter,
        "reduce_scatter",
        "x -> the sum over the ranks of this rank's shard of the rows of x",
    )
    xp = stats.xp
    shards = class_shards(stats.num_classes, world_size)
    start, stop = shards[rank]

    def gather(x: Array) -> list[Array]:
        return _gathered(collectives.all_gather(x), x, world_size)

    def scatter(x: Array) -> Array:
        own = x[start:stop, ...]
        return _scattered(collectives.reduce_scatter(x), own, start, stop)

    per_shard = xp.stack([xp.sum(stats.counts[a:b]) for a, b in shards])
    table, common = _agree(stats, gather, rank, step, per_shard)
    if common is None:  # no rank saw a sample: nothing to combine
        return _shard_of(stats, start, stop, 0)
    stats = common
    k, dim, dtype = stats.num_classes, stats.dim, stats.dtype
    # 1) Counts of the shard (exact, int64).
    counts = scatter(stats.counts)
    # 2) The shard's class means (zero for classes nobody saw), with the counts.
    n_local = xp.astype(stats.counts, dtype)[:, None]
    first = scatter(xp.concat([n_local * stats.scaled_means, n_local], axis=1))
    shard_shift = first[:, :dim] / xp.astype(xp.clip(counts, min=1), dtype)[:, None]
    # 3) Every shard's means on every rank, padded to the largest shard.
    rows = shards[0][1] - shards[0][0]
    padded = xp.concat(
        [shard_shift, xp.zeros((rows - (stop - start), dim), dtype=dtype, device=stats.device)]
    )
    means = gather(padded)
    own = xp.all(means[rank] == padded)  # checked at the end, with the others
    shift = xp.concat([means[r][: b - a, ...] for r, (a, b) in enumerate(shards)])
    del means, padded  # (K, d) in all: not held through the rest
    # 4) Re-centre every class on the common means; the shard's sums by reduce-scatter.
    local = stats.rebase(shift)
    second = scatter(xp.concat([local.sums, local.sqnorms[:, None], n_local], axis=1))
    unit_scale, local_gram = local.unit_scale, local.gram
    del local, shift
    # 5) The Gram, pooled over the classes, with the local N.
    gram, total = None, None
    if local_gram is not None:
        n_all = xp.reshape(xp.astype(stats.num_samples, dtype), (1,))
        send = xp.concat([xp.reshape(local_gram, (-1,)), n_all])
        packed = _reduced(collectives.all_reduce(send), send)
        gram, total = xp.reshape(packed[:-1], (dim, dim)), packed[-1:]
    num_samples = sum(row[4] for row in table)
    _check_shard(
        xp,
        counts,
        expected=sum(row[7 + rank] for row in table),
        own=own,
        reduced=(first[:, dim], second[:, dim + 1]),
        total=(total, num_samples),
        world_size=world_size,
    )
    sums, sqnorms = second[:, :dim], second[:, dim]
    shard = ClassStats(counts, shard_shift, sums, sqnorms, None, unit_scale)
    return ClassShard(shard, start, k, gram, num_samples)


def _shard_of(stats: ClassStats, start: int, stop: int, num_samples: int) -> ClassShard:
    """The rows ``start:stop`` of `stats` as a shard (the Gram kept whole)."""
    rows = ClassStats(
        stats.counts[start:stop],
        stats.shift[start:stop, ...],
        stats.sums[start:stop, ...],
        stats.sqnorms[start:stop],
        None,
        stats.unit_scale,
    )
    return ClassShard(rows, start, stats.num_classes, stats.gram, num_samples)


def _scattered(result: Any, own: Array, start: int, stop: int) -> Array:
    """`reduce_scatter(x)`, checked: an array like ``x[start:stop]``."""
    each = f"of shape {tuple(own.shape)} and dtype {own.dtype}"
    library = backend_name(namespace(like=own))
    expected = (
        f"one {library} array {each}, the element-wise sum over the ranks of the rows "
        f"{start}:{stop} (this rank's shard)"
    )
    _check_like(result, own, "reduce_scatter", "", expected)
    return result


def _check_shard(
    xp: Any,
    counts: Array,
    *,
    expected: int,
    own: Array,
    reduced: tuple[Array, Array],
    total: tuple[Array | None, int],
    world_size: int,
) -> None:
    """Check the collectives of `reduce_scatter_class_stats` (one host read,
    after the last collective): the int64 counts sum to the gathered shard
    totals, this rank's all-gather entry is its own, the floating
    reduce-scatters summed the counts and the all-reduce the sample counts."""
    wide = wide_float(xp)
    exact = xp.astype(counts, wide)
    parts = [
        xp.reshape(xp.astype(xp.sum(counts), wide), (1,)),
        xp.reshape(xp.astype(xp.all(own), wide), (1,)),
    ]
    for part in reduced:
        # Exact below 2**24 in float32; larger counts round by eps per addition.
        excess = (
            xp.abs(xp.astype(part, wide) - exact) - world_size * xp.finfo(part.dtype).eps * exact
        )
        parts.append(xp.reshape(xp.astype(xp.any(excess > 0), wide), (1,)))
    summed, stated = total
    if summed is not None:
        parts.append(xp.astype(summed, wide))
    host = to_host(xp.concat(parts)).tolist()
    if int(host[0]) != expected:
        msg = (
            f"`reduce_scatter` returned class counts that sum to {int(host[0])} samples, "
            f"where the ranks hold {expected} of this rank's classes: expected the sum "
            "over the ranks of this rank's shard (not an average, not this rank's rows alone)"
        )
        raise ValueError(msg)
    if not host[1]:
        msg = (
            "`all_gather` returned class means as this rank's entry that are not this "
            "rank's own: the entries must be in rank order"
        )
        raise ValueError(msg)
    for call, failed in ((1, host[2]), (2, host[3])):
        if failed:
            msg = (
                f"`reduce_scatter` (call {call + 1} of 3) returned other class counts than "
                "its first call: expected the sum over the ranks of this rank's shard"
            )
            raise ValueError(msg)
    if summed is not None and abs(host[4] - stated) > world_size * 1e-6 * stated:
        msg = (
            f"`all_reduce` returned {host[4]:g} samples in all, where the ranks hold "
            f"{stated}: expected the element-wise sum over the ranks"
        )
        raise ValueError(msg)


def _agree(
    stats: ClassStats,
    gather: Callable[[Array], list[Array]],
    rank: int,
    step: int,
    extra: Array | None = None,
) -> tuple[list[list[int]], ClassStats | None]:
    """Agree on the layout, the step and the scale: one all-gather of seven
    integers per rank (then `extra`, integers of the same length on every rank).

    Returns the gathered rows (checked: in rank order, one layout) and `stats`
    in the common dimension and power-of-two scale; None in place of the
    statistics if no rank saw a sample.
    """
    xp, device = stats.xp, stats.device
    dtype_name = str(stats.dtype).rsplit(".", maxsplit=1)[-1]
    dtype_code = (
        _DTYPE_CODES.index(dtype_name) if dtype_name in _DTYPE_CODES else len(_DTYPE_CODES)
    )
    head = xp.asarray(
        [stats.num_classes, stats.dim, int(stats.gram is not None), dtype_code],
        dtype=index_dtype(xp),
        device=device,
    )
    exponent = xp.astype(xp.round(xp.log2(stats.unit_scale)), index_dtype(xp))
    parts = [
        head,
        xp.reshape(xp.astype(stats.num_samples, index_dtype(xp)), (1,)),
        xp.reshape(exponent, (1,)),
        xp.asarray([step], dtype=index_dtype(xp), device=device),
    ]
    if extra is not None:
        parts.append(xp.astype(extra, index_dtype(xp)))
    meta = xp.concat(parts)
    *table, own = to_host(xp.stack([*gather(meta), meta])).tolist()
    _check_own_entry(table, own, rank)
    _check_layout(table, rank)
    dims = {row[1] for row in table if row[4] > 0}
    if not dims:
        return table, None
    dim = dims.pop()
    if stats.dim != dim:  # this rank saw no samples: adopt the common dimension
        stats = ClassStats.empty(
            stats.num_classes,
            dim,
            gram=stats.gram is not None,
            xp=xp,
            device=device,
            dtype=stats.dtype,
        )
    common = max(row[5] for row in table if row[4] > 0)
    return table, stats.rescaled(xp.asarray(2.0**common, dtype=stats.dtype, device=device))


def _check_callable(value: Any, name: str, what: str) -> None:
    if not callable(value):
        msg = f"`{name}` must be callable ({what}); got {type(value).__name__}"
        raise TypeError(msg)


def _describe(value: Any) -> str:
    """A short description of what a collective returned."""
    if value is None:
        return "None"
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):
        return f"a {type(value).__name__} of shape {tuple(shape)} and dtype {value.dtype}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def _expected(like: Array, count: int | None = None) -> str:
    """What a collective must return for `like`: one array like it, or `count`."""
    library = backend_name(namespace(like=like))
    each = f"of shape {tuple(like.shape)} and dtype {like.dtype}"
    if count is None:
        return (
            f"one {library} array {each}, the element-wise sum over the ranks "
            "(a collective that works in place must still return the array)"
        )
    plural = "s" if count > 1 else ""
    return f"{count} {library} array{plural} (one per rank, in rank order), each {each}"


def _check_like(value: Any, like: Array, collective: str, what: str, expected: str) -> None:
    """`value` (`what` `collective` returned) has `like`'s library, shape and dtype."""
    try:
        space = namespace(value=value)
    except TypeError:  # not an array
        space = None
    if space is not namespace(like=like) or value.dtype != like.dtype:
        msg = f"`{collective}` returned {_describe(value)}{what}; expected {expected}"
        raise TypeError(msg)
    if tuple(value.shape) != tuple(like.shape):
        msg = f"`{collective}` returned {_describe(value)}{what}; expected {expected}"
        raise ValueError(msg)


def _gathered(result: Any, like: Array, world_size: int) -> list[Array]:
    """The arrays of `all_gather(like)`, checked: one per rank, each like `like`."""
    expected = _expected(like, world_size)
    if isinstance(result, (list, tuple)):
        items = list(result)
    elif hasattr(result, "shape") and tuple(result.shape) == (world_size, *like.shape):
        items = [result[r, ...] for r in range(world_size)]
    else:
        msg = f"`all_gather` returned {_describe(result)}; expected {expected}"
        raise TypeError(msg)
    if len(items) != world_size:
        plural = "s" if len(items) != 1 else ""
        msg = f"`all_gather` returned {len(items)} array{plural}; expected {expected}"
        raise ValueError(msg)
    for r, item in enumerate(items):
        _check_like(item, like, "all_gather", f" as the entry of rank {r}", expected)
    return items


def _reduced(result: Any, like: Array) -> Array:
    """`all_reduce(like)`, checked: an array of `like`'s library, shape and dtype."""
    _check_like(result, like, "all_reduce", "", _expected(like))
    return result


def _check_own_entry(table: list[list[int]], own: list[int], rank: int) -> None:
    """This rank's entry of the layout all-gather must be this rank's own array."""
    if table[rank] != own:
        msg = (
            f"`all_gather` returned {table[rank]} as the entry of rank {rank}, where this "
            f"rank's own array {own} belongs: the entries must be in rank order"
        )
        raise ValueError(msg)


def _check_sums(
    xp: Any,
    table: list[list[int]],
    rank: int,
    *,
    own: Array,
    per_rank: Array,
    counts: Array,
    reduced: tuple[Array, Array],
) -> None:
    """Check the counts all-gather against the layout table and this rank's
    counts, and that both all-reduces summed the local counts to the gathered
    ones (one host read, after the last collective)."""
    world_size = len(table)
    wide = xp.astype(counts, wide_float(xp))
    parts = [
        xp.reshape(xp.astype(xp.all(own), wide_float(xp)), (1,)),
        xp.astype(per_rank, wide_float(xp)),
    ]
    for part in reduced:
        # Counts below 2**24 are exact in float32, sums of them too; larger
        # ones round by at most eps per addition.
        excess = (
            xp.abs(xp.astype(part, wide_float(xp)) - wide)
            - world_size * xp.finfo(part.dtype).eps * wide
        )
        worst = xp.argmax(excess)
        parts.append(
            xp.stack(
                [
                    xp.astype(excess[worst] > 0, wide_float(xp)),
                    xp.astype(worst, wide_float(xp)),
                    xp.astype(part[worst], wide_float(xp)),
                    wide[worst],
                ]
            )
        )
    host = to_host(xp.concat(parts)).tolist()
    if not host[0]:
        msg = (
            f"`all_gather` returned class counts as the entry of rank {rank} that are not "
            "this rank's own: the entries must be in rank order"
        )
        raise ValueError(msg)
    totals = [int(v) for v in host[1 : 1 + world_size]]
    stated = [row[4] for row in table]
    if totals != stated:
        msg = (
            f"`all_gather` returned class counts that sum to {totals} samples per rank, "
            f"where its first call gathered {stated}: it must return every rank's array"
        )
        raise ValueError(msg)
    for call, start in ((1, 1 + world_size), (2, 5 + world_size)):
        failed, worst, value, count = host[start : start + 4]
        if failed:
            msg = (
                f"`all_reduce` (call {call} of 2) and `all_gather` disagree on the counts: "
                f"class {int(worst)} has {int(count)} samples on all ranks by `all_gather` "
                f"and {value:g} by `all_reduce`; expected the sum over the ranks from "
                "`all_reduce` (not an average, not this rank's array unreduced) and every "
                "rank's array from `all_gather` (not this rank's repeated)"
            )
            raise ValueError(msg)


# Kept here: the table is this module's all-gather of every rank's layout.
def _check_layout(table: list[list[int]], rank: int) -> None:
    """Raise (on every rank: all see the same table) if the ranks disagree."""
    fields = {
        "num_classes": [row[0] for row in table],
        "dim": [row[1] if row[4] > 0 else None for row in table],
        "gram": [bool(row[2]) for row in table],
        "dtype": [_dtype_label(row[3]) for row in table],
        "step": [row[6] for row in table],
    }
    problems = []
    for field, values in fields.items():
        if len({v for v in values if v is not None}) > 1:
            per_rank = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values) if v is not None)
            problems.append(f"{field} ({per_rank})")
    if problems:
        msg = (
            "cannot combine statistics across ranks: they disagree on "
            + "; ".join(problems)
            + f" (this is rank {rank})"
        )
        raise ValueError(msg)


def _dtype_label(code: int) -> str:
    return _DTYPE_CODES[code] if code < len(_DTYPE_CODES) else "other"
