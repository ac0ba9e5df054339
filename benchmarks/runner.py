"""Run benchmark cases against floors timed in the same rounds; format results.

Each case is warmed up, then timed in `repeat` rounds; every round also times
the case's floors right after it, so a machine whose load changes during the
run moves case and floor together. On GPU backends the device is synchronised
before the clock is read at both ends of every call.

Every timed call starts once the process's own threads are idle (`settle`):
OpenBLAS keeps the workers of a multi-threaded product spinning for about
0.13 s after it returns, so a call timed right after the floor ``X @ V`` would
share the cores with them and pay for the call before it.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from typing import Any

import ncgeom.stats as stats_module

from .backends import BenchBackend, make_backend
from .cases import (
    CASES,
    FLOORS,
    SIZES,
    CaseSkipped,
    Context,
    Prepared,
    memory_target,
    time_target,
)
from .machine import load_average, machine_info

__all__ = [
    "SCHEMA_VERSION",
    "chunk_budget",
    "format_table",
    "run_benchmarks",
    "settle",
    "time_rounds",
]

#: Version of the layout of the result dictionary (and the JSON file).
SCHEMA_VERSION = 1

#: Longest wait (s) of `settle` for this process's threads to go idle.
SETTLE_LIMIT = 0.5
#: `settle` checks the process's CPU time over windows of this length (s): the
#: kernel adds the time of threads running on other cores at its ticks (every 4
#: or 10 ms), so a shorter window can miss them ...
SETTLE_WINDOW = 0.01
#: ... and stops at the first in which its threads used less than this fraction
#: of one core.
SETTLE_BUSY = 0.1


def settle(limit: float = SETTLE_LIMIT) -> float:
    """Wait until this process's threads are idle; returns the seconds waited.

    Idle: less than `SETTLE_BUSY` of one core used over `SETTLE_WINDOW`
    (the CPU time of every thread of the process, so other processes do not
    count). Threads that a library keeps spinning after a call (OpenBLAS's
    workers spin for about 0.13 s) would otherwise take cores from the next
    timed call. Gives up after `limit` seconds (a thread that never idles).
    """
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        cpu = time.process_time()
        time.sleep(SETTLE_WINDOW)
        if time.process_time() - cpu < SETTLE_BUSY * SETTLE_WINDOW:
            break
    return time.perf_counter() - start


def time_rounds(
    calls: dict[str, Callable[[], Any]], sync: Callable[[], None], repeat: int
) -> dict[str, list[float]]:
    """Seconds of each call in each of `repeat` rounds, after one warm-up round.

    Parameters
    ----------
    calls : dict
        Name to a call without arguments; all are timed once per round, in
        order, so that they see the same machine state, each after `settle`.
    sync : callable
        Waits for the device; called before the clock is read at both ends.
    repeat : int
        Timed rounds (>= 1).

    Returns
    -------
    dict
        Name to the list of its `repeat` timings, in seconds.
    """
    if repeat < 1:
        msg = f"`repeat` must be at least 1; got {repeat}"
        raise ValueError(msg)
    for call in calls.values():
        call()
    sync()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat):
        gc.collect()
        for name, call in calls.items():
            sync()
            settle()
            start = time.perf_counter()
            call()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def _summary(times: Sequence[float]) -> dict[str, Any]:
    return {"median": statistics.median(times), "min": min(times), "times": list(times)}


def _timed(
    name: str, prepared: Prepared, backend: BenchBackend, size: str, repeat: int
) -> dict[str, Any]:
    calls = {"case": prepared.run}
    calls.update({f"floor:{floor}": call for floor, call in prepared.floors.items()})
    times = time_rounds(calls, backend.sync, repeat)
    case_time = _summary(times["case"])
    comparisons = []
    for floor in prepared.floors:
        floor_time = _summary(times[f"floor:{floor}"])
        ratio = case_time["median"] / floor_time["median"]
        target = time_target(name, floor, backend.gpu, size)
        comparisons.append(
            {
                "floor": floor,
                "operation": FLOORS[floor],
                **{f"floor_{k}": v for k, v in floor_time.items()},
                "ratio": ratio,
                "target": target,
                "meets": None if target is None else ratio <= target,
            }
        )
    return {"time": case_time, "comparisons": comparisons}


def _memory(
    name: str, prepared: Prepared, backend: BenchBackend, size: str, warm: bool
) -> dict[str, Any] | None:
    if backend.memory_tracker is None:
        return None
    if not warm:
        prepared.run()  # warm-up: library handles and workspaces are not the case's
    gc.collect()
    peak = backend.peak_extra_bytes(prepared.run)
    if peak is None:
        return None
    ratio = peak / prepared.input_bytes
    target = memory_target(name, backend.gpu, size)
    meets = None
    if target is not None:
        kind, bound = target
        meets = (ratio if kind == "ratio" else peak) <= bound
    return {
        "peak_extra_bytes": int(peak),
        "input_bytes": int(prepared.input_bytes),
        "ratio": ratio,
        "target": None if target is None else {"kind": target[0], "value": target[1]},
        "meets": meets,
        "tracker": backend.memory_tracker,
    }


def _select(cases: Iterable[str] | None) -> list[str]:
    if cases is None:
        return list(CASES)
    wanted = [c.strip() for c in cases if c.strip()]
    unknown = [c for c in wanted if c not in CASES]
    if unknown:
        msg = f"unknown case(s) {unknown}; known: {', '.join(CASES)}"
        raise ValueError(msg)
    # Keep the declared order: cases on one data set run together.
    return [c for c in CASES if c in wanted]


def run_benchmarks(
    backend: str = "numpy",
    size: str = "ci",
    *,
    repeat: int | None = None,
    cases: Iterable[str] | None = None,
    seed: int = 0,
    chunk_mib: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run benchmark cases on one backend and size.

    Parameters
    ----------
    backend : {"numpy", "torch", "cupy", "array-api-strict"}
        Array library; torch uses CUDA when a GPU is present.
    size : {"small", "ci", "large"}
        Problem sizes (see `benchmarks.cases`).
    repeat : int, optional
        Timed rounds per case; default depends on `size`.
    cases : iterable of str, optional
        Names of the cases to run (default: all), run in declared order.
    seed : int
        Seed of the random data.
    chunk_mib : float, optional
        Bytes of features per chunk (MiB) for this run, on every device, in
        place of ncgeom's defaults (`ncgeom.stats.CHUNK_BYTES` and
        `HOST_CHUNK_BYTES`).
    progress : callable, optional
        Called with a line of text as each case finishes.

    Returns
    -------
    dict
        JSON-ready: ``schema``, ``machine`` (see `benchmarks.machine`),
        ``config``, ``cases`` (one entry per case run, with its median time,
        its comparisons with floors and, for memory cases, its peak extra
        memory), ``skipped`` (case and reason) and ``load_average_end``.

    Raises
    ------
    benchmarks.backends.BackendUnavailable
        If the backend cannot run here.
    ValueError
        For an unknown size or case.
    """
    if size not in SIZES:
        msg = f"`size` must be one of {tuple(SIZES)}; got {size!r}"
        raise ValueError(msg)
    names = _select(cases)
    bench = make_backend(backend)
    sizes = SIZES[size]
    repeat = sizes.repeat if repeat is None else repeat
    context = Context(bench, sizes, seed)
    machine = machine_info(backend)
    with chunk_budget(chunk_mib) as chunk_bytes:
        results, skipped = _run_cases(names, context, bench, backend, size, repeat, progress)
    context.release()
    return {
        "schema": SCHEMA_VERSION,
        "machine": machine,
        "config": {
            "backend": backend,
            "device": str(bench.device) if bench.device is not None else "cpu",
            "gpu": bench.gpu,
            "size": size,
            "repeat": repeat,
            "seed": seed,
            "dtype": "float32",
            "cases": names,
            "sizes": asdict(sizes),
            "chunk_bytes": chunk_bytes,
            "memory_tracker": bench.memory_tracker,
        },
        "cases": results,
        "skipped": skipped,
        "load_average_end": load_average(),
    }


@contextlib.contextmanager
def chunk_budget(chunk_mib: float | None) -> Iterator[dict[str, int]]:
    """Set ncgeom's chunk sizes (bytes of features per chunk) for a block of code.

    Yields the budgets in force, ``{"device": ..., "host": ...}``; None keeps
    the defaults. The defaults are restored on exit.
    """
    saved = stats_module.CHUNK_BYTES, stats_module.HOST_CHUNK_BYTES
    if chunk_mib is not None:
        if not chunk_mib > 0:
            msg = f"`chunk_mib` must be positive; got {chunk_mib}"
            raise ValueError(msg)
        budget = max(1, int(chunk_mib * 2**20))
        stats_module.CHUNK_BYTES = stats_module.HOST_CHUNK_BYTES = budget
    try:
        yield {"device": stats_module.CHUNK_BYTES, "host": stats_module.HOST_CHUNK_BYTES}
    finally:
        stats_module.CHUNK_BYTES, stats_module.HOST_CHUNK_BYTES = saved


def _run_cases(
    names: list[str],
    context: Context,
    bench: BenchBackend,
    backend: str,
    size: str,
    repeat: int,
    progress: Callable[[str], None] | None,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for name in names:
        case = CASES[name]
        if not case.timed and bench.memory_tracker is None:
            reason = f"no allocation statistics for {backend} on {bench.device}"
            skipped.append({"case": name, "reason": reason})
            if progress is not None:
                progress(f"{name}: skipped ({reason})")
            continue
        try:
            prepared = case.build(context)
        except CaseSkipped as exc:
            skipped.append({"case": name, "reason": str(exc)})
            if progress is not None:
                progress(f"{name}: skipped ({exc})")
            continue
        entry: dict[str, Any] = {
            "case": name,
            "description": case.description,
            "data": case.data,
            "params": prepared.params,
            "time": None,
            "comparisons": [],
            "memory": None,
        }
        if case.timed:
            entry.update(_timed(name, prepared, bench, size, repeat))
        if case.memory:
            entry["memory"] = _memory(name, prepared, bench, size, warm=case.timed)
        results.append(entry)
        if progress is not None:
            progress(_progress_line(entry))
        del prepared
    return results, skipped


# ----------------------------------------------------------------------------- text
def _seconds(value: float) -> str:
    return f"{value:.4g}"


def _mib(value: float) -> str:
    return f"{value / 2**20:.1f} MiB"


def _verdict(target: Any, meets: bool | None) -> str:
    if target is None:
        return ""
    return "ok" if meets else "MISSED"


def _progress_line(entry: dict[str, Any]) -> str:
    parts = [entry["case"]]
    if entry["time"] is not None:
        parts.append(f"{_seconds(entry['time']['median'])} s")
        for comp in entry["comparisons"]:
            parts.append(f"{comp['ratio']:.3g}x {comp['operation']}")
    if entry["memory"] is not None:
        parts.append(f"peak extra {_mib(entry['memory']['peak_extra_bytes'])}")
    return ": ".join(parts[:2]) + ("; " + "; ".join(parts[2:]) if len(parts) > 2 else "")


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of a `run_benchmarks` result.

    One line per (case, floor): the case's median time, the floor operation,
    the floor's median time, their ratio and the target where one is set;
    memory cases get a line with the peak extra memory and its ratio to the
    input size.
    """
    config, machine = result["config"], result["machine"]
    blas = machine["blas"]["libraries"]
    kernel = ", ".join(
        str(lib.get("kernel") or lib.get("architecture") or lib.get("name") or "?")
        + (f", {lib['num_threads']} threads" if lib.get("num_threads") else "")
        + (f", {lib['threads']} threads" if lib.get("threads") else "")
        for lib in blas
    )
    gpu = machine.get("gpu")
    lines = [
        f"ncgeom benchmarks: backend {config['backend']} ({config['device']}), "
        f"size {config['size']}, {config['repeat']} timed rounds after a warm-up",
        f"machine: {machine['cpu']}, {machine['cpu_usable']} usable cores"
        + (f"; GPU {gpu['name']}" if gpu else "")
        + f"; BLAS kernel {kernel or '?'} ({machine['blas']['source']})",
        "versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()),
        f"date {machine['date']}; load average {machine['load_average']} at start, "
        f"{result['load_average_end']} at end",
    ]
    loads = [load for load in (machine["load_average"], result["load_average_end"]) if load]
    if any(load[0] > machine["cpu_usable"] for load in loads):
        lines.append(
            "warning: the 1-minute load average exceeded the usable cores: other work "
            "shared the CPU, so the times (and, less, the ratios) are noisy"
        )
    lines.append("")
    head = (
        f"{'case':<22} {'median s':>10}  {'floor':<26} {'floor s':>10} {'ratio':>8}  "
        f"{'target':<8} {'met':<6}"
    )
    lines += [head, "-" * len(head)]
    for entry in result["cases"]:
        first = True
        if entry["time"] is not None:
            for comp in entry["comparisons"] or [None]:
                name = entry["case"] if first else ""
                median = _seconds(entry["time"]["median"]) if first else ""
                first = False
                if comp is None:
                    lines.append(f"{name:<22} {median:>10}")
                    continue
                target = "" if comp["target"] is None else f"<= {comp['target']:g}"
                lines.append(
                    f"{name:<22} {median:>10}  {comp['operation']:<26} "
                    f"{_seconds(comp['floor_median']):>10} {comp['ratio']:>8.3g}  "
                    f"{target:<8} {_verdict(comp['target'], comp['meets'])}"
                )
        memory = entry["memory"]
        if memory is not None:
            name = entry["case"] if first else ""
            target = memory["target"]
            if target is None:
                shown = ""
            elif target["kind"] == "ratio":
                shown = f"<= {target['value']:g}"
            else:
                shown = f"<= {_mib(target['value'])}"
            lines.append(
                f"{name:<22} {_mib(memory['peak_extra_bytes']):>10}  "
                f"{'peak extra memory / input':<26} {_mib(memory['input_bytes']):>10} "
                f"{memory['ratio']:>8.3g}  {shown:<8} {_verdict(target, memory['meets'])}"
            )
    for item in result["skipped"]:
        lines.append(f"{item['case']:<22} skipped: {item['reason']}")
    return "\n".join(line.rstrip() for line in lines)
