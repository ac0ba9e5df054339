"""Where the time of one call goes: benchmark cases under torch's profiler.

Command line::

    python -m benchmarks.profile --size large --cases report,update_gram

Each case is built from the same data as in the timed benchmarks, called once
to warm up, then once under `torch.profiler`. For each case it prints the
wall time of that call next to its floors (one call each, the device
synchronised) and the operations that took the most device time (CUDA) or
host time (CPU), so a case that misses its target shows which kernels to work
on.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .backends import BackendUnavailable, BenchBackend, make_backend
from .cases import CASES, FLOORS, SIZES, CaseSkipped, Context
from .runner import chunk_budget, settle

__all__ = ["main", "profile_cases"]

#: Cases profiled when none are named: the ones with GPU targets on their time.
DEFAULT_CASES = ("report", "report_classifier", "update_gram", "class_sums")


def _wall(run: Callable[[], Any], bench: BenchBackend) -> float:
    bench.sync()
    settle()  # as in the timed benchmarks: no worker threads left spinning
    start = time.perf_counter()
    run()
    bench.sync()
    return time.perf_counter() - start


def profile_cases(
    size: str = "small",
    cases: Sequence[str] = DEFAULT_CASES,
    *,
    rows: int = 15,
    seed: int = 0,
    chunk_mib: float | None = None,
) -> str:
    """Profile `cases` on torch (CUDA when present) and return the report as text.

    Parameters
    ----------
    size : {"small", "ci", "large"}
    cases : sequence of str
        Names of benchmark cases (`benchmarks.cases.CASES`).
    rows : int
        Operations listed per case.
    seed : int
        Seed of the random data.
    chunk_mib : float, optional
        MiB of features per chunk, as in `benchmarks.run_benchmarks`.

    Raises
    ------
    ValueError
        For an unknown size or case, or a `rows` below 1.
    benchmarks.backends.BackendUnavailable
        If torch is not installed.
    """
    if size not in SIZES:
        msg = f"`size` must be one of {tuple(SIZES)}; got {size!r}"
        raise ValueError(msg)
    unknown = [name for name in cases if name not in CASES]
    if unknown:
        msg = f"unknown cases {unknown}; choose from {', '.join(CASES)}"
        raise ValueError(msg)
    if rows < 1:
        msg = f"`rows` must be at least 1; got {rows}"
        raise ValueError(msg)
    from torch.profiler import ProfilerActivity, profile

    bench = make_backend("torch")
    activities = [ProfilerActivity.CPU]
    if bench.gpu:
        activities.append(ProfilerActivity.CUDA)
    sort_by = "device_time_total" if bench.gpu else "cpu_time_total"
    context = Context(bench, SIZES[size], seed)
    lines = [f"torch on {bench.device}, size {size}, operations by {sort_by}"]
    with chunk_budget(chunk_mib) as budget:
        lines.append(
            f"chunk budget: {budget['device']} bytes on a device, {budget['host']} on the host"
        )
        for name in cases:
            try:
                prepared = CASES[name].build(context)
            except CaseSkipped as exc:
                lines.append(f"\n== {name}: skipped ({exc})")
                continue
            prepared.run()  # warm-up
            floors = {floor: _wall(call, bench) for floor, call in prepared.floors.items()}
            with profile(activities=activities) as prof:
                wall = _wall(prepared.run, bench)
            shown = ", ".join(f"{FLOORS[f]} {t:.4g} s" for f, t in floors.items())
            lines.append(f"\n== {name}: {wall:.4g} s under the profiler; floors: {shown}")
            lines.append(prof.key_averages().table(sort_by=sort_by, row_limit=rows))
            del prepared
    context.release()
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, profile, print; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profile",
        description="Profile benchmark cases on torch (CUDA when present).",
    )
    parser.add_argument("--size", choices=tuple(SIZES), default="small")
    parser.add_argument(
        "--cases", default=",".join(DEFAULT_CASES), help=f"comma-separated, of: {','.join(CASES)}"
    )
    parser.add_argument("--rows", type=int, default=15, help="operations listed per case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-mib", type=float, default=None, metavar="MIB")
    args = parser.parse_args(argv)
    try:
        text = profile_cases(
            args.size,
            args.cases.split(","),
            rows=args.rows,
            seed=args.seed,
            chunk_mib=args.chunk_mib,
        )
    except (ValueError, BackendUnavailable) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
