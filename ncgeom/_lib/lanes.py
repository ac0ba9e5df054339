"""Lanes: a chunked pass over rows, split into contiguous blocks run on separate threads.

The engine's passes over NumPy features interleave BLAS products, which use
every core, with element-wise work (gathers, subtractions, scatter-adds,
row norms), which uses one. Split into lanes, each a contiguous block of
rows on its own thread with BLAS held to one thread, both kinds of work use
every core (the element-wise kernels of NumPy and SciPy release the GIL).

Results do not depend on timing: each lane sums its own rows in order, and
the caller adds the lanes' results in lane order. The number of lanes
follows the cores that the process may use and the BLAS threads it allows
(``OMP_NUM_THREADS=1`` or a ``threadpoolctl`` limit make one lane), so a
result may differ in its last bits between machines with different core
counts, as BLAS results already do.

Lanes need `threadpoolctl` (the ``fast`` extra) to hold BLAS to one thread
per lane; without it every pass has one lane.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from .backend import is_numpy

__all__ = ["lane_count", "lane_ranges", "run_lanes", "serial_lapack"]

T = TypeVar("T")

#: Rows below which a pass is not split: a thread costs about 0.1 ms to start.
MIN_LANE_BYTES = 4 * 2**20

#: Largest ``m * n * min(m, n)`` of a matrix whose LAPACK factorisation runs
#: on one thread (`serial_lapack`): about 0.1 s of work on one core.
SERIAL_LAPACK_WORK = 2**27

#: Largest size of one lane's own tables (class sums, Gram): each extra lane
#: then adds no more memory than one of the host's chunks of rows.
MAX_LANE_TABLE_BYTES = 2 * 2**20


@functools.cache
def _blas() -> Any:
    """The BLAS libraries loaded by NumPy (a ``threadpoolctl`` controller), or None."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    import numpy  # noqa: F401  (its BLAS must be loaded before the scan)

    controller = ThreadpoolController().select(user_api="blas")
    return controller if controller.lib_controllers else None


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def lane_count(feature_bytes: int, table_bytes: int) -> int:
    """Lanes for one pass over `feature_bytes` of rows, each lane summing into
    its own tables of `table_bytes`.

    One lane when the pass is small, when BLAS cannot be held to one thread
    (no ``threadpoolctl``), when the process may use one core or BLAS one
    thread, or when a lane's tables would exceed `MAX_LANE_TABLE_BYTES`.

    Examples
    --------
    >>> from ncgeom._lib.lanes import lane_count
    >>> lane_count(1024, 512)  # a small pass is never split
    1
    """
    if feature_bytes < MIN_LANE_BYTES or table_bytes > MAX_LANE_TABLE_BYTES:
        return 1
    blas = _blas()
    if blas is None:
        return 1
    threads = max(1, max(lib.num_threads for lib in blas.lib_controllers))
    return max(1, min(_usable_cores(), threads, feature_bytes // MIN_LANE_BYTES))


def lane_ranges(num_rows: int, lanes: int) -> list[tuple[int, int]]:
    """`lanes` contiguous ``(start, stop)`` blocks covering ``range(num_rows)``,
    of sizes differing by at most one.

    Examples
    --------
    >>> from ncgeom._lib.lanes import lane_ranges
    >>> lane_ranges(10, 3)
    [(0, 3), (3, 6), (6, 10)]
    """
    lanes = max(1, min(lanes, num_rows))
    bounds = [num_rows * i // lanes for i in range(lanes + 1)]
    return list(itertools.pairwise(bounds))


def run_lanes(work: Callable[[int, int], T], num_rows: int, lanes: int) -> list[T]:
    """``[work(start, stop) for each lane]``, the lanes on their own threads.

    With one lane, `work` runs in the caller's thread and BLAS is left as it
    is. Otherwise BLAS is held to one thread for the duration, each extra
    lane runs on a new thread in a copy of the caller's context (so NumPy's
    ``errstate`` applies there too), and the first error of a lane, in lane
    order, is raised once every lane has finished.
    """
    ranges = lane_ranges(num_rows, lanes)
    if len(ranges) == 1:
        return [work(*ranges[0])]
    results: list[Any] = [None] * len(ranges)
    errors: list[BaseException | None] = [None] * len(ranges)

    def lane(i: int) -> None:
        try:
            results[i] = work(*ranges[i])
        except BaseException as error:  # re-raised in the caller's thread
            errors[i] = error

    with _blas().limit(limits=1):
        threads = [
            threading.Thread(target=contextvars.copy_context().run, args=(lane, i), daemon=True)
            for i in range(1, len(ranges))
        ]
        for thread in threads:
            thread.start()
        lane(0)
        for thread in threads:
            thread.join()
    for error in errors:
        if error is not None:
            raise error
    return results


@contextlib.contextmanager
def serial_lapack(xp: Any, shape: tuple[int, ...]) -> Iterator[None]:
    """Hold NumPy's BLAS to one thread for the factorisation of a small matrix,
    or for products of about its size.

    OpenBLAS spreads the LAPACK factorisations (SVD, eigh) of small matrices
    over its threads at a loss: on a 2-core Xeon the thin SVD of a (100, 512)
    matrix takes 2.9 ms on one thread and 8-15 ms on two. Its products of such
    matrices gain nothing from a second thread either, and after every
    multi-threaded call OpenBLAS keeps its workers spinning for about 0.13 s:
    lanes started in that time share the cores with them (a third slower on 2
    cores). Matrices with ``m * n * min(m, n)`` above `SERIAL_LAPACK_WORK`, and
    every library but NumPy, are left as they are.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom._lib.lanes import serial_lapack
    >>> a = np.eye(3)
    >>> with serial_lapack(np, a.shape):
    ...     values = np.linalg.eigvalsh(a)
    >>> values.tolist()
    [1.0, 1.0, 1.0]
    """
    m, n = shape[-2], shape[-1]
    small = m * n * min(m, n) <= SERIAL_LAPACK_WORK
    blas = _blas() if small and is_numpy(xp) else None
    if blas is None:
        yield
        return
    with blas.limit(limits=1):
        yield
