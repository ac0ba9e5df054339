"""Exact combination of `ClassStats` across the processes of a distributed job.

`reduce_class_stats` is written once for every framework: a plugin passes its
framework's ``all_gather`` and ``all_reduce`` (see `FrameworkPlugin`). Every
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

__all__ = ["Collectives", "reduce_class_stats"]

Array = Any

#: Floating dtypes ranks can agree on, by name (an unknown dtype gets its own code).
_DTYPE_CODES = ("float16", "bfloat16", "float32", "float64")


class Collectives(NamedTuple):
    """One process's view of its group: what `reduce_class_stats` needs.

    ``reduce_class_stats(stats, **collectives._asdict())`` combines the
    statistics of the group. A plugin may expose its framework's collectives
    as ``plugin.collectives()`` returning one of these; the conformance suite
    (`ncgeom.testing.conformance`) then checks them.

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


def reduce_class_stats(
    stats: ClassStats,
    *,
    rank: int,
    world_size: int,
    all_gather: Callable[[Array], Sequence[Array]],
    all_reduce: Callable[[Array], Array],
    step: int = 0,
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
    xp, device = stats.xp, stats.device

    def gather(x: Array) -> list[Array]:
        return _gathered(all_gather(x), x, world_size)

    def reduce(x: Array) -> Array:
        return _reduced(all_reduce(x), x)

    # 1) Agree on the layout, the step and the scale (one all-gather of seven
    # integers per rank).
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
    meta = xp.concat(
        [
            head,
            xp.reshape(xp.astype(stats.num_samples, index_dtype(xp)), (1,)),
            xp.reshape(exponent, (1,)),
            xp.asarray([step], dtype=index_dtype(xp), device=device),
        ]
    )
    *table, own = to_host(xp.stack([*gather(meta), meta])).tolist()
    _check_own_entry(table, own, rank)
    _check_layout(table, rank)
    dims = {row[1] for row in table if row[4] > 0}
    if not dims:  # no rank saw a sample: nothing to combine
        return stats
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
    stats = stats.rescaled(xp.asarray(2.0**common, dtype=stats.dtype, device=device))
    k = stats.num_classes
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
