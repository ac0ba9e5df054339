"""A simulated distributed world for `reduce_class_stats` and
`reduce_scatter_class_stats`, shared by the tests.

Each rank runs in its own thread; the collectives meet at a barrier, so every
rank sees the arrays of all ranks in rank order, as a real all-gather does.
A test can replace what a collective makes of the ranks' arrays (`combine`)
to play a broken collective.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ncgeom.measure.distributed import (
    Collectives,
    class_shards,
    reduce_class_stats,
    reduce_scatter_class_stats,
)

#: ``combine(rank, arrays)``: what a collective returns on `rank`, given the
#: arrays every rank passed to it (in rank order).
Combine = Callable[[int, list[Any]], Any]


def _reduce_scatter(rank: int, xs: list[Any]) -> Any:
    """The sum over the ranks of rank `rank`'s shard of the rows."""
    start, stop = class_shards(xs[0].shape[0], len(xs))[rank]
    rows = [x[start:stop, ...] for x in xs]
    return sum(rows[1:], rows[0])


#: The correct collectives.
COMBINE: dict[str, Combine] = {
    "all_gather": lambda rank, xs: xs,
    "all_reduce": lambda rank, xs: sum(xs[1:], xs[0]),
    "reduce_scatter": _reduce_scatter,
}


def run_on_threads(
    world: int,
    work: Callable[[int, Collectives], Any],
    combine: Mapping[str, Combine] | None = None,
) -> list[Any]:
    """``work(rank, collectives)`` on rank r of a world of `world` ranks (one
    thread each), with the collectives of `COMBINE`, those named in `combine`
    replaced.

    Returns each rank's result, or the exception that rank raised, in rank order.
    """
    rules = {**COMBINE, **(combine or {})}
    barrier = threading.Barrier(world, timeout=60)
    slots: list[Any] = [None] * world
    results: list[Any] = [None] * world

    def collective(rank: int, name: str) -> Any:
        def call(a: Any) -> Any:
            slots[rank] = a
            barrier.wait()
            out = rules[name](rank, list(slots))
            barrier.wait()
            return out

        return call

    def target(rank: int) -> None:
        group = Collectives(
            rank,
            world,
            collective(rank, "all_gather"),
            collective(rank, "all_reduce"),
            collective(rank, "reduce_scatter"),
        )
        try:
            results[rank] = work(rank, group)
        except Exception as err:  # handed to the caller, on the test's thread
            results[rank] = err

    threads = [threading.Thread(target=target, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def reduce_on_threads(
    parts: Sequence[Any],
    per_rank: Sequence[dict[str, Any]] | None = None,
    combine: Mapping[str, Combine] | None = None,
) -> list[Any]:
    """`reduce_class_stats` of ``parts[r]`` on rank r of a world of ``len(parts)``
    ranks, with the keyword arguments ``per_rank[r]`` (e.g. ``step``) and the
    collectives of `COMBINE`, those named in `combine` replaced.

    Returns each rank's result, or the exception that rank raised, in rank order.
    """
    per_rank = per_rank or [{} for _ in parts]

    def work(rank: int, group: Collectives) -> Any:
        return reduce_class_stats(
            parts[rank],
            rank=rank,
            world_size=group.world_size,
            all_gather=group.all_gather,
            all_reduce=group.all_reduce,
            **per_rank[rank],
        )

    return run_on_threads(len(parts), work, combine)


def shard_on_threads(
    parts: Sequence[Any],
    per_rank: Sequence[dict[str, Any]] | None = None,
    combine: Mapping[str, Combine] | None = None,
) -> list[Any]:
    """`reduce_scatter_class_stats` of ``parts[r]`` on rank r, as `reduce_on_threads`."""
    per_rank = per_rank or [{} for _ in parts]

    def work(rank: int, group: Collectives) -> Any:
        return reduce_scatter_class_stats(parts[rank], group, **per_rank[rank])

    return run_on_threads(len(parts), work, combine)
