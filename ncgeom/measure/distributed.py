"""Exact combination of `ClassStats` across the processes of a distributed job.

`reduce_class_stats` is written once for every framework: a plugin passes its
framework's ``all_gather`` and ``all_reduce`` (see `FrameworkPlugin`). Every
rank re-bases its statistics on the global class means with the public
`ClassStats.rebase`, so the sums that travel stay of the size of the
within-class spread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .._lib.backend import to_host
from .._lib.validate import check_index, check_instance, check_int_at_least
from .stats import ClassStats

__all__ = ["reduce_class_stats"]

Array = Any

#: Floating dtypes ranks can agree on, by name (an unknown dtype gets its own code).
_DTYPE_CODES = ("float16", "bfloat16", "float32", "float64")


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
        (same shape and dtype on every rank).
    all_reduce : callable
        ``all_reduce(x)`` returns the element-wise sum of `x` over the ranks
        (it may work in place on its argument, which the caller owns).
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
        another size).

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
    Four collectives in all; the packed one carries K d + K + d^2 numbers.

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
    xp, device = stats.xp, stats.device
    # 1) Agree on the layout, the step and the scale (one all-gather of seven
    # integers per rank).
    dtype_name = str(stats.dtype).rsplit(".", maxsplit=1)[-1]
    dtype_code = (
        _DTYPE_CODES.index(dtype_name) if dtype_name in _DTYPE_CODES else len(_DTYPE_CODES)
    )
    head = xp.asarray(
        [stats.num_classes, stats.dim, int(stats.gram is not None), dtype_code],
        dtype=xp.int64,
        device=device,
    )
    exponent = xp.astype(xp.round(xp.log2(stats.unit_scale)), xp.int64)
    meta = xp.concat(
        [
            head,
            xp.reshape(xp.astype(stats.num_samples, xp.int64), (1,)),
            xp.reshape(exponent, (1,)),
            xp.asarray([step], dtype=xp.int64, device=device),
        ]
    )
    table = to_host(xp.stack(list(all_gather(meta)))).tolist()
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
    # 2) Counts of every rank (exact, int64).
    counts = xp.sum(xp.stack(list(all_gather(stats.counts))), axis=0)  # (K,)
    # 3) Common shifts: the global class means (zero for classes nobody saw).
    n_local = xp.astype(stats.counts, stats.dtype)
    weighted = all_reduce(n_local[:, None] * stats.scaled_means)
    shift = weighted / xp.astype(xp.clip(counts, min=1), stats.dtype)[:, None]
    # 4) Re-centre (exact identity) and add everything else in ONE all-reduce.
    local = stats.rebase(shift)
    k = stats.num_classes
    parts = [xp.reshape(local.sums, (-1,)), local.sqnorms]
    if local.gram is not None:
        parts.append(xp.reshape(local.gram, (-1,)))
    packed = all_reduce(xp.concat(parts))
    sums = xp.reshape(packed[: k * dim], (k, dim))
    sqnorms = packed[k * dim : k * dim + k]
    gram = None
    if local.gram is not None:
        gram = xp.reshape(packed[k * dim + k :], (dim, dim))
    return ClassStats(counts, shift, sums, sqnorms, gram, local.unit_scale)


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
