"""The ``ncgeom`` command.

Subcommands are registered in :data:`COMMANDS`, a mapping from a name to its
help line, a function adding its options to an argparse parser, and a function
running it on the parsed arguments (returning the exit status):

``ncgeom theory``
    The closed-form UFM+ optimum for given class counts and weight decays:
    which classes collapse, margins, norms, thresholds, optimal objective.
``ncgeom verify``
    Solve random configurations numerically and report the worst gap to the
    closed form.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, NamedTuple, TextIO

from ._json import jsonable
from ._progress import Progress
from .theory import (
    UFMOptimum,
    critical_regularization,
    min_samples_to_survive,
    ufm_relu_optimum,
)

__all__ = ["COMMANDS", "COMMAND_ENTRY_POINTS", "Command", "available_commands", "main"]

#: Entry-point group through which installed packages add subcommands (each
#: entry point names a `Command`), e.g. the PyTorch plugin's ``demo``.
COMMAND_ENTRY_POINTS = "ncgeom.commands"

# Pass/fail limits of `ncgeom verify`.
_OBJECTIVE_TOL = 1e-6  # relative gap of the solver's objective above f*
_BELOW_TOL = 1e-9  # relative amount the solver may go below f* (rounding)
_GEOMETRY_TOL = 1e-4  # margins, norms, orthogonality
_NC1_TOL = 1e-5  # spread of the features of a class (full form)


class Command(NamedTuple):
    """A subcommand: help line, option builder and runner."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ncgeom`` command line; return the exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; ``sys.argv[1:]`` by default.

    Returns
    -------
    int
        0 on success, 1 when ``verify`` finds a gap above its limits, 2 for
        bad input.

    Examples
    --------
    >>> from ncgeom.cli import main
    >>> main(["theory", "--counts", "10,10,10", "--lambda-w", "1e-2", "--lambda-h", "1e-3",
    ...       "--json"])  # doctest: +ELLIPSIS
    {...}
    0
    """
    commands = available_commands()
    parser = _parser(commands)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return commands[args.command].run(args)
    except (ValueError, TypeError) as err:
        print(f"ncgeom {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader (e.g. `head`) left early: stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def available_commands() -> dict[str, Command]:
    """Built-in subcommands plus those installed under `COMMAND_ENTRY_POINTS`.

    A built-in name wins over an installed one; an entry point that fails to
    load is left out with a warning naming it and the error.
    """
    commands = dict(COMMANDS)
    for entry in importlib.metadata.entry_points(group=COMMAND_ENTRY_POINTS):
        if entry.name in commands:
            continue
        try:
            command = entry.load()
        except Exception as err:  # a broken plugin must not break the other commands
            warnings.warn(
                f"ncgeom command {entry.name!r} ({entry.value}) failed to load: {err}",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        commands[entry.name] = command
    return commands


def _parser(commands: dict[str, Command]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ncgeom",
        description="Neural-collapse geometry of class-imbalanced classifiers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in commands.items():
        child = sub.add_parser(
            name,
            help=command.help,
            description=command.help,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        command.add_arguments(child)
    return parser


# ---------------------------------------------------------------------------
# ncgeom theory


def _theory_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--counts",
        type=_counts,
        required=True,
        metavar="N1,N2,...",
        help="samples per class, comma-separated, in any order",
    )
    parser.add_argument("--lambda-w", type=float, required=True, help="weight decay on W")
    parser.add_argument("--lambda-h", type=float, required=True, help="weight decay on H")
    parser.add_argument(
        "--dim", type=int, default=None, help="feature dimension (checked against alive classes)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--plot", metavar="FILE", help="write a figure (needs matplotlib)")


def _run_theory(args: argparse.Namespace) -> int:
    opt = ufm_relu_optimum(args.counts, args.lambda_w, args.lambda_h, args.dim)
    critical = [float(v) for v in critical_regularization(args.counts)]
    survive = [
        min_samples_to_survive(args.counts, k, args.lambda_w, args.lambda_h)
        for k in range(len(args.counts))
    ]
    if args.plot:
        from .plot import theory_figure

        theory_figure(opt).savefig(args.plot)
    if args.json:
        data = opt.to_dict()
        data["num_samples"] = sum(args.counts)
        data["critical_regularization"] = critical
        data["min_samples_to_survive"] = survive
        print(json.dumps(jsonable(data), indent=2))
    else:
        _print_theory(opt, critical, survive, sys.stdout)
        if args.plot:
            print(f"figure written to {args.plot}")
    return 0


def _print_theory(
    opt: UFMOptimum, critical: list[float], survive: list[int | None], out: TextIO
) -> None:
    data = opt.to_dict()
    k = opt.num_classes
    n_total = sum(data["counts"])
    product = opt.lambda_w * opt.lambda_h
    print(
        f"UFM+ optimum (no bias): K = {k} classes, N = {n_total} samples, "
        f"lambda_W = {opt.lambda_w:g}, lambda_H = {opt.lambda_h:g}",
        file=out,
    )
    print(file=out)
    header = ("class", "n_k", "alive", "M_k", "||h_k||", "||w_k||", "cos(w_k,h_k)")
    widths = (5, 9, 5, 11, 11, 11, 12)
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)), file=out)
    for i in range(k):
        cos = data["cosines"][i]
        row = (
            str(i),
            str(data["counts"][i]),
            "yes" if data["alive"][i] else "no",
            f"{data['margins'][i]:.6g}",
            f"{data['feature_norms'][i]:.6g}",
            f"{data['classifier_norms'][i]:.6g}",
            "-" if math.isnan(cos) else f"{cos:.6g}",
        )
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)), file=out)
    print(file=out)
    print(
        f"collapse threshold: a class with n_k <= {opt.collapse_count:.6g} samples collapses "
        f"(h_k = 0); {opt.num_alive} of {k} classes alive",
        file=out,
    )
    print(
        f"lambda_W * lambda_H = {product:.6g}; all classes stay alive only below "
        f"{min(critical):.6g} (the limit of the rarest class)",
        file=out,
    )
    dead = [i for i in range(k) if not data["alive"][i]]
    if dead:
        parts = [
            f"class {i}: " + ("impossible" if survive[i] is None else str(survive[i]))
            for i in dead
        ]
        print("samples a collapsed class needs to survive: " + ", ".join(parts), file=out)
    print(f"optimal objective f* = {data['objective']:.12g}", file=out)


# ---------------------------------------------------------------------------
# ncgeom verify

_BACKENDS = ("numpy", "torch", "cupy", "array-api-strict")


class _Gaps(NamedTuple):
    objective: float  # relative, signed: (solver - closed form) / closed form
    geometry: float  # max abs error of margins, norms, orthogonality (nan with a bias)
    nc1: float  # max spread of a class's features (nan in the collapsed form)
    converged: bool


def _verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configs", type=int, default=20, help="random configurations")
    parser.add_argument("--backend", choices=_BACKENDS, default="numpy", help="array library")
    parser.add_argument(
        "--bias",
        action="store_true",
        help="solve with a free bias; then only f_solver <= f* (bias-free) is checked",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the configurations")
    parser.add_argument(
        "--form",
        choices=("collapsed", "full"),
        default="collapsed",
        help="optimise one mean per class, or one feature per sample",
    )
    parser.add_argument("--restarts", type=int, default=8, help="solver starts per config")
    parser.add_argument("--tol", type=float, default=None, help="solver KKT tolerance")
    parser.add_argument("--max-iter", type=int, default=20_000, help="solver iterations")
    parser.add_argument("--max-classes", type=int, default=10, help="K is drawn in 2..this")
    parser.add_argument("--max-count", type=int, default=200, help="n_k is drawn in 1..this")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _run_verify(args: argparse.Namespace) -> int:
    import numpy as np

    try:
        from .solve import solve_ufm
    except ImportError as err:
        print(
            f"ncgeom verify: error: the numerical solver is unavailable ({err})", file=sys.stderr
        )
        return 2
    for name in ("configs", "restarts", "max_iter"):
        if getattr(args, name) < 1:
            msg = f"`--{name.replace('_', '-')}` must be >= 1; got {getattr(args, name)}"
            raise ValueError(msg)
    if args.max_classes < 2 or args.max_count < 1:
        msg = (
            f"`--max-classes` must be >= 2 and `--max-count` >= 1; got "
            f"{args.max_classes} and {args.max_count}"
        )
        raise ValueError(msg)
    xp, device = _backend(args.backend)
    rng = np.random.default_rng(args.seed)
    rows = []
    progress = Progress(args.configs, sys.stderr)
    started = time.perf_counter()
    for index in range(args.configs):
        k = int(rng.integers(2, args.max_classes + 1))
        counts = [int(v) for v in rng.integers(1, args.max_count + 1, size=k)]
        lw, lh = (float(v) for v in 10.0 ** rng.uniform(-5.0, -1.0, size=2))
        opt = ufm_relu_optimum(counts, lw, lh)
        solution = solve_ufm(
            counts, lw, lh, k,
            bias=args.bias, form=args.form, restarts=args.restarts, tol=args.tol,
            max_iter=args.max_iter, seed=int(rng.integers(2**31)), xp=xp, device=device,
        )  # fmt: skip
        gaps = _gaps(opt, solution, args.bias)
        rows.append({"counts": counts, "lambda_w": lw, "lambda_h": lh, **gaps._asdict()})
        progress.update(
            index + 1, f"worst objective gap {_worst(rows, args.bias)['objective']:.2e}"
        )
    progress.close()
    elapsed = time.perf_counter() - started
    failed = [i for i, row in enumerate(rows) if not _passes(row, args.bias)]
    if args.json:
        summary = {
            "backend": args.backend,
            "form": args.form,
            "bias": args.bias,
            "seconds": elapsed,
            "worst": _worst(rows, args.bias),
            "failed": failed,
            "configs": rows,
        }
        print(json.dumps(jsonable(summary), indent=2))
    else:
        _print_verify(rows, failed, args, elapsed, sys.stdout)
    return 1 if failed else 0


def _gaps(opt: UFMOptimum, solution: Any, bias: bool) -> _Gaps:
    import numpy as np

    from ._array import to_host
    from .theory_metrics import gof_error, margin_comparison, norm_comparison

    target = float(opt.objective)
    objective = (solution.objective - target) / target
    geometry = nc1 = math.nan
    if not bias:
        margins = margin_comparison(solution.classifier, solution.means, opt)
        norms = norm_comparison(solution.means, opt)
        errors = [
            np.max(np.abs(to_host(margins.measured) - to_host(margins.predicted))),
            np.max(np.abs(to_host(norms.measured) - to_host(norms.predicted))),
        ]
        if opt.num_alive > 0:
            errors.append(float(to_host(gof_error(solution.means, opt))))
        geometry = float(max(errors))
    if solution.features is not None:
        features = to_host(solution.features)
        means = to_host(solution.means)
        labels = to_host(solution.labels)
        nc1 = float(np.max(np.abs(features - means[labels]))) if features.size else 0.0
    return _Gaps(objective, geometry, nc1, bool(solution.converged))


def _passes(row: dict[str, Any], bias: bool) -> bool:
    # With a bias the optimum lies at or below the bias-free f* (b = 0 is
    # feasible), by an unknown amount: only the side above f* is checked.
    if row["objective"] > _OBJECTIVE_TOL:
        return False
    if not bias and (row["objective"] < -_BELOW_TOL or not row["geometry"] <= _GEOMETRY_TOL):
        return False
    return math.isnan(row["nc1"]) or row["nc1"] <= _NC1_TOL


def _worst(rows: list[dict[str, Any]], bias: bool) -> dict[str, float]:
    # Without a bias the gap is |f_solver - f*| / f*; with a bias the solver
    # may (and usually does) go below the bias-free f*, so the worst case is
    # the largest amount above it.
    objective = [row["objective"] if bias else abs(row["objective"]) for row in rows]
    out = {"objective": max(objective)}
    for key in ("geometry", "nc1"):
        values = [row[key] for row in rows if not math.isnan(row[key])]
        out[key] = max(values) if values else math.nan
    return out


def _print_verify(
    rows: list[dict[str, Any]],
    failed: list[int],
    args: argparse.Namespace,
    elapsed: float,
    out: TextIO,
) -> None:
    worst = _worst(rows, args.bias)
    converged = sum(row["converged"] for row in rows)
    print(
        f"{len(rows)} random configurations, {args.form} form, backend {args.backend}"
        f"{', with bias' if args.bias else ''}: {converged} converged, {elapsed:.1f} s",
        file=out,
    )
    if args.bias:
        lowest = min(row["objective"] for row in rows)
        print(
            f"objective with bias relative to the bias-free f*: at most {worst['objective']:+.3e}"
            f" (limit {_OBJECTIVE_TOL:g}), down to {lowest:+.3e}",
            file=out,
        )
    else:
        print(
            f"worst objective gap |f_solver - f*| / f*: {worst['objective']:.3e} "
            f"(limit {_OBJECTIVE_TOL:g})",
            file=out,
        )
        print(
            f"worst geometry gap (margins, norms, orthogonality): {worst['geometry']:.3e} "
            f"(limit {_GEOMETRY_TOL:g})",
            file=out,
        )
    if not math.isnan(worst["nc1"]):
        print(
            f"worst within-class spread (NC1): {worst['nc1']:.3e} (limit {_NC1_TOL:g})", file=out
        )
    if failed:
        print(f"{len(failed)} configuration(s) outside the limits:", file=out)
        for i in failed:
            row = rows[i]
            print(
                f"  #{i}: counts={row['counts']} lambda_w={row['lambda_w']:.3g} "
                f"lambda_h={row['lambda_h']:.3g} objective gap={row['objective']:+.3e} "
                f"geometry={row['geometry']:.3e} converged={row['converged']}",
                file=out,
            )
    else:
        print("all configurations within the limits", file=out)


def _backend(name: str) -> tuple[ModuleType, Any]:
    try:
        if name == "numpy":
            import array_api_compat.numpy as xp

            return xp, None
        if name == "torch":
            import array_api_compat.torch as xp
            import torch

            return xp, "cuda" if torch.cuda.is_available() else "cpu"
        if name == "cupy":
            import array_api_compat.cupy as xp

            return xp, None
        import array_api_strict as xp

        return xp, None
    except ImportError as err:
        msg = f"`--backend` {name!r} is not installed ({err})"
        raise ValueError(msg) from None


# ---------------------------------------------------------------------------
# shared helpers


def _counts(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        msg = f"must be comma-separated integers, e.g. 5000,200,20; got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


COMMANDS: dict[str, Command] = {
    "theory": Command(
        "closed-form UFM+ optimum: collapsed classes, margins, norms, thresholds",
        _theory_arguments,
        _run_theory,
    ),
    "verify": Command(
        "solve random configurations numerically and compare with the closed form",
        _verify_arguments,
        _run_verify,
    ),
}
