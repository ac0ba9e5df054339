"""A simulated distributed world for `reduce_class_stats`, shared by the tests.

Each rank runs in its own thread; the collectives meet at a barrier, so every
rank sees the arrays of all ranks in rank order, as a real all-gather does.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from ncgeom.measure.distributed import reduce_class_stats


def reduce_on_threads(
    parts: Sequence[Any], per_rank: Sequence[dict[str, Any]] | None = None
) -> list[Any]:
    """`reduce_class_stats` of ``parts[r]`` on rank r of a world of ``len(parts)``
    ranks, with the keyword arguments ``per_rank[r]`` (e.g. ``step``).

    Returns each rank's result, or the exception that rank raised, in rank order.
    """
    world = len(parts)
    per_rank = per_rank or [{} for _ in parts]
    barrier = threading.Barrier(world, timeout=60)
    slots: list[Any] = [None] * world
    results: list[Any] = [None] * world

    def collective(rank: int, combine: Any) -> Any:
        def call(a: Any) -> Any:
            slots[rank] = a
            barrier.wait()
            out = combine(list(slots))
            barrier.wait()
            return out

        return call

    def work(rank: int) -> None:
        try:
            results[rank] = reduce_class_stats(
                parts[rank],
                rank=rank,
                world_size=world,
                all_gather=collective(rank, lambda xs: xs),
                all_reduce=collective(rank, lambda xs: sum(xs[1:], xs[0])),
                **per_rank[rank],
            )
        except Exception as err:  # handed to the caller, on the test's thread
            results[rank] = err

    threads = [threading.Thread(target=work, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results
