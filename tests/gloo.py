"""Run a function on several gloo processes and collect what each rank returns.

`spawn_ranks(work, folder, world_size)` starts `world_size` processes
(``torch.multiprocessing.spawn``, a file rendezvous in `folder`), each of which
joins the process group, calls ``work(rank)`` and writes the JSON-ready dict it
returns (or the traceback, as ``"crash"``) to `folder`. `work` must be a
module-level function, so that the processes can import it.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any


def spawn_ranks(
    work: Callable[[int], dict[str, Any]], folder: Path, world_size: int
) -> list[dict[str, Any]]:
    """The results of ``work(rank)`` on every rank, in rank order; fails on a crash."""
    import torch.multiprocessing as mp

    mp.spawn(
        _rank,
        args=(work, str(folder / "init"), str(folder), world_size),
        nprocs=world_size,
        join=True,
        daemon=False,
    )
    results = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(world_size)]
    for rank, result in enumerate(results):
        assert "crash" not in result, f"rank {rank} failed:\n{result['crash']}"
    return results


def _rank(
    rank: int, work: Callable[[int], dict[str, Any]], init_file: str, out: str, world_size: int
) -> None:
    import torch.distributed as dist

    results: dict[str, Any] = {}
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60),
    )
    try:
        results = work(rank)
    except Exception:
        results = {"crash": traceback.format_exc()}
    finally:
        Path(out, f"rank{rank}.json").write_text(json.dumps(results))
        dist.destroy_process_group()
        # The results are on disk (a failure as "crash"). Leave without the
        # interpreter's teardown, where a busy machine has seen a gloo thread
        # end in "terminate called without an active exception" (SIGABRT).
        os._exit(0)
