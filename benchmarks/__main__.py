"""Command line: ``python -m benchmarks --backend numpy --size ci``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .backends import BACKENDS, BackendUnavailable
from .cases import CASES, SIZES
from .runner import format_table, run_benchmarks


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "Time ncgeom against floors measured in the same run (one read of X, "
            "X @ V, X.T @ X, a scatter-add) and print median times and ratios."
        ),
    )
    parser.add_argument("--backend", choices=BACKENDS, default="numpy")
    parser.add_argument("--size", choices=tuple(SIZES), default="ci")
    parser.add_argument(
        "--repeat", type=int, default=None, help="timed rounds per case (default by size)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument(
        "--cases", default=None, help=f"comma-separated subset of: {','.join(CASES)}"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random data")
    parser.add_argument(
        "--chunk-mib",
        type=float,
        default=None,
        metavar="MIB",
        help="MiB of features per chunk, on every device (default: ncgeom's own choice)",
    )
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 when a target is missed"
    )
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; return the exit status."""
    args = parse_args(argv)
    if args.list:
        for case in CASES.values():
            print(f"{case.name:<22} {case.description}")
        return 0
    cases = None if args.cases is None else args.cases.split(",")
    try:
        result = run_benchmarks(
            args.backend,
            args.size,
            repeat=args.repeat,
            cases=cases,
            seed=args.seed,
            chunk_mib=args.chunk_mib,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except BackendUnavailable as exc:
        print(f"backend {args.backend} is not available: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=str)
            f.write("\n")
    if args.check:
        missed = [
            entry["case"]
            for entry in result["cases"]
            for check in [*entry["comparisons"], entry["memory"] or {}]
            if check.get("meets") is False
        ]
        if missed:
            print(f"targets missed: {', '.join(missed)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
