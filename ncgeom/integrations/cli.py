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
import importlib.util
import json
import math
import os
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple, NoReturn, TextIO

from .._lib.backend import BACKENDS, backend_namespace, to_host
from .._lib.jsonable import jsonable
from .._lib.progress import Progress
from .._lib.validate import check_output_dir, check_output_file
from ..theory.optimum import (
    UFMOptimum,
    _survival_counts,
    critical_regularization,
    ufm_relu_optimum,
)
from .plugins import load_entry_points

__all__ = [
    "COMMANDS",
    "COMMAND_ENTRY_POINTS",
    "Command",
    "PLOT_SUFFIXES",
    "available_commands",
    "check_output_dir",
    "check_output_file",
    "main",
]

#: Entry-point group through which installed packages add subcommands (each
#: entry point names a `Command`), e.g. the PyTorch plugin's ``demo``.
COMMAND_ENTRY_POINTS = "ncgeom.commands"

_MAX_TOTAL = 2**63 - 1  # the largest total count (int64)

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

    Every failure is one line on stderr, ``ncgeom COMMAND: error: ...``,
    and a non-zero status; ``--debug`` (before or after the command) shows
    the traceback of an unexpected error instead. Output files are checked
    before any work starts.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; ``sys.argv[1:]`` by default.

    Returns
    -------
    int
        0 on success; 1 when ``verify`` finds a gap above its limits, or an
        output cannot be written, or an unexpected error occurs; 2 for bad
        input (a usage error exits through `SystemExit` with status 2, as
        argparse does); 130 when interrupted.

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
    name = f"ncgeom {args.command}"
    try:
        return commands[args.command].run(args)
    except BrokenPipeError:
        # The reader (e.g. `head`) left early: stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        _fail(name, "interrupted")
        return 130
    except (ValueError, TypeError) as err:
        if args.debug:
            raise
        _fail(name, str(err))
        return 2
    except OSError as err:
        if args.debug:
            raise
        where = f"cannot write {err.filename}" if err.filename else "input/output failed"
        _fail(name, f"{where}: {err.strerror or err}")
        return 1
    except MemoryError:
        if args.debug:
            raise
        _fail(name, "out of memory; try a smaller problem")
        return 1
    except Exception as err:
        if args.debug:
            raise
        _fail(name, f"{type(err).__name__}: {err} (rerun with --debug for the traceback)")
        return 1


def _fail(name: str, message: str) -> None:
    """One line on stderr: ``ncgeom COMMAND: error: message``."""
    print(f"{name}: error: {' '.join(message.split())}", file=sys.stderr)


def available_commands() -> dict[str, Command]:
    """Built-in subcommands plus those installed under `COMMAND_ENTRY_POINTS`.

    Installed commands load through `ncgeom.plugins.load_entry_points`, the
    loader of plugins too: a built-in name wins over an installed one, and an
    entry point that fails to import (`SystemExit` included), does not name a
    `Command`, or whose options cannot be added to a parser is left out with
    one warning naming it and its distribution.

    Examples
    --------
    >>> from ncgeom.cli import available_commands
    >>> {"theory", "verify"} <= set(available_commands())
    True
    """
    commands = dict(COMMANDS)
    loaded, _ = load_entry_points(
        COMMAND_ENTRY_POINTS, _checked_command, kind="command", skip=commands
    )
    for entry in loaded:
        commands.setdefault(entry.name, entry.value)
    return commands


# Kept here: a Command is checked by building this module's parser with its options.
def _checked_command(name: str, command: Any) -> Command:
    """`check` of the command group: a `Command` whose options build a parser."""
    if not isinstance(command, Command):
        msg = f"it must load an ncgeom.cli.Command; got {type(command).__name__}"
        raise TypeError(msg)
    if not isinstance(command.help, str) or not callable(command.run):
        msg = "its Command must have a help string and a callable run"
        raise TypeError(msg)
    command.add_arguments(_Parser(prog=f"ncgeom {name}", add_help=False))
    return command


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line (and exit with status 2)."""

    def error(self, message: str) -> NoReturn:
        _fail(self.prog, f"{message} (see {self.prog} --help)")
        raise SystemExit(2)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Adds "(default: X)" to options that have one; "(required)" to required ones.

    Unlike argparse's ArgumentDefaultsHelpFormatter it never prints
    "(default: None)": an option without a default says in its own help
    what happens when it is left out.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "(default" in text or not action.option_strings:
            return text
        if action.required:
            return f"{text} (required)"
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        if action.default is None or action.default is argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


def _parser(commands: dict[str, Command]) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ncgeom",
        description="Neural-collapse geometry of class-imbalanced classifiers.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in commands.items():
        child = sub.add_parser(
            name, help=command.help, description=command.help, formatter_class=_HelpFormatter
        )
        child.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP
        )
        command.add_arguments(child)
    return parser


_DEBUG_HELP = "show the traceback of an unexpected error instead of one line (default: off)"


# ---------------------------------------------------------------------------
# output files


#: File types matplotlib writes, by suffix.
PLOT_SUFFIXES = (
    ".eps", ".jpeg", ".jpg", ".pdf", ".pgf", ".png", ".ps", ".raw", ".rgba", ".svg", ".svgz",
    ".tif", ".tiff", ".webp",
)  # fmt: skip


# ---------------------------------------------------------------------------
# ncgeom theory


def _theory_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--counts",
        type=_counts,
        required=True,
        metavar="N1,N2,...",
        help="samples per class, comma-separated positive integers in any order, or @FILE "
        "to read them from a file (commas or whitespace)",
    )
    parser.add_argument(
        "--lambda-w",
        type=float,
        required=True,
        metavar="X",
        help="lambda_W > 0: the penalty (lambda_W/2)||W||_F^2 on the classifier",
    )
    parser.add_argument(
        "--lambda-h",
        type=float,
        required=True,
        metavar="X",
        help="lambda_H > 0: the penalty (lambda_H/2) sum_i ||h_i||^2, summed over all N "
        "samples' features (a per-sample mean penalty beta is lambda_H = beta / N)",
    )
    parser.add_argument(
        "--dim",
        type=int,
        default=None,
        help="feature dimension of the optimal instance, at least the number of alive "
        "classes (default: the number of classes)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print JSON instead of a table (adds critical_regularization, "
        "min_samples_to_survive and survival_interval per class)",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE",
        default=None,
        help="also write a figure of margins and norms to FILE; the suffix picks the format, "
        "none means .png; needs matplotlib (default: no figure)",
    )


def _run_theory(args: argparse.Namespace) -> int:
    plot = None
    if args.plot is not None:
        plot = check_output_file(
            args.plot, "--plot", suffixes=PLOT_SUFFIXES, default_suffix=".png"
        )
        if importlib.util.find_spec("matplotlib") is None:
            msg = "`--plot` needs matplotlib: pip install 'ncgeom[plots]'"
            raise ValueError(msg)
    opt = ufm_relu_optimum(args.counts, args.lambda_w, args.lambda_h, args.dim)
    counts = to_host(opt.counts)
    critical = [float(v) for v in critical_regularization(counts)]
    survive = _survival_counts(counts, opt.lambda_w, opt.lambda_h)
    if plot is not None:
        from ..theory.plot import theory_figure

        theory_figure(opt).savefig(plot)
    if args.json:
        data = opt.to_dict()
        data["num_samples"] = opt.num_samples
        data["critical_regularization"] = critical
        data["min_samples_to_survive"] = survive
        data["survival_interval"] = [
            None if span is None else list(span)
            for span in _survival_intervals(counts, opt.lambda_w, opt.lambda_h)
        ]
        print(json.dumps(jsonable(data), indent=2))
    else:
        _print_theory(opt, critical, survive, sys.stdout)
        if plot is not None:
            print(f"figure written to {plot}")
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
    _say(
        "columns: n_k = samples of class k; alive = the class keeps a non-zero feature mean "
        "(no: minority collapse, h_k = 0); M_k = margin, the true logit minus each other "
        "logit of a class-k feature (logits W h_k = M_k (e_k - 1/K)); ||h_k|| = length of "
        "the class-mean feature; ||w_k|| = length of the classifier row; cos(w_k,h_k) = "
        "their cosine ('-' where h_k = 0, as the angle is undefined)",
        out,
    )
    print(file=out)
    _say(
        f"collapse threshold at this total N = {n_total}: a class with n_k <= "
        f"{opt.collapse_count:.6g} samples collapses (h_k = 0), n_crit = N^2 lambda_W "
        f"lambda_H K/(K-1); {opt.num_alive} of {k} classes alive",
        out,
    )
    _say(
        f"lambda_W * lambda_H = {product:.6g}; all classes stay alive only below "
        f"{min(critical):.6g} (the limit of the rarest class)",
        out,
    )
    _say(
        "the inverse question: giving class k more samples also raises N, and n_crit grows "
        "as N^2, so the threshold above does not say which count keeps a class alive. With "
        "the other counts fixed, class k survives exactly for counts in [a, b] "
        "(n_k (K-1) > N^2 K lambda_W lambda_H); none when the other classes alone are too "
        "many for this regularisation:",
        out,
    )
    intervals = _survival_intervals(to_host(opt.counts), opt.lambda_w, opt.lambda_h)
    shown = range(k) if k <= 20 else [i for i in range(k) if not data["alive"][i]][:20]
    for i in shown:
        span = intervals[i]
        where = "none" if span is None else f"[{span[0]}, {span[1]}]"
        state = "alive" if data["alive"][i] else "collapsed"
        print(
            f"  class {i} ({state} with n_k = {data['counts'][i]}): survives for n_k in {where}",
            file=out,
        )
    if k > 20:
        print("  (--json lists every class)", file=out)
    dead = [i for i in range(k) if not data["alive"][i]]
    if dead:
        parts = [
            f"class {i}: " + ("impossible" if survive[i] is None else str(survive[i]))
            for i in dead
        ]
        print("samples a collapsed class needs to survive: " + ", ".join(parts), file=out)
    print(f"optimal objective f* = {data['objective']:.12g}", file=out)


def _say(text: str, out: TextIO) -> None:
    """Print a paragraph wrapped at 88 columns."""
    print(textwrap.fill(text, width=88), file=out)


def _survival_intervals(
    counts: Any, lambda_w: float, lambda_h: float
) -> list[tuple[int, int] | None]:
    """Per class, the counts [a, b] that keep it alive with the other counts fixed.

    Solved once per distinct count; the bounds are settled with the exact
    integer test of `ncgeom.theory`.
    """
    from ..theory.optimum import _min_count, _survives

    host = [int(n) for n in counts]
    total, num = sum(host), len(host)
    cache: dict[int, tuple[int, int] | None] = {}
    out = []
    for n in host:
        if n not in cache:
            rest = total - n
            low = _min_count(rest, num, lambda_w, lambda_h)
            if low is None:
                cache[n] = None
            else:
                c = num * lambda_w * lambda_h / (num - 1)
                disc = max(1.0 - 4.0 * c * rest, 0.0)
                high = max(low, math.floor((1.0 - 2.0 * c * rest + math.sqrt(disc)) / (2.0 * c)))
                while high > low and not _survives(high, rest, num, lambda_w, lambda_h):
                    high -= 1
                while _survives(high + 1, rest, num, lambda_w, lambda_h):
                    high += 1
                cache[n] = (low, high)
        out.append(cache[n])
    return out


# ---------------------------------------------------------------------------
# ncgeom verify


class _Gaps(NamedTuple):
    objective: float  # relative, signed: (solver - closed form) / closed form
    geometry: float  # max abs error of margins, norms, orthogonality (nan with a bias)
    nc1: float  # max spread of a class's features (nan in the collapsed form)
    converged: bool


def _verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--configs", type=int, default=20, metavar="N", help="random configurations to solve"
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, default="numpy", help="array library of the solver"
    )
    parser.add_argument(
        "--bias",
        action="store_true",
        help="solve with a free bias; then only f_solver <= f* (bias-free) is checked",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed of the configurations, >= 0"
    )
    parser.add_argument(
        "--form",
        choices=("collapsed", "full"),
        default="collapsed",
        help="optimise one mean per class, or one feature per sample",
    )
    parser.add_argument(
        "--restarts", type=int, default=8, metavar="N", help="solver starts per configuration"
    )
    parser.add_argument(
        "--tol",
        type=float,
        default=None,
        metavar="X",
        help="solver KKT tolerance, > 0 (default: 1e-10, the solver's float64 default)",
    )
    parser.add_argument(
        "--max-iter", type=int, default=20_000, metavar="N", help="solver iterations per start"
    )
    parser.add_argument(
        "--max-classes",
        type=int,
        default=10,
        metavar="K",
        help="the number of classes is drawn in 2..K",
    )
    parser.add_argument(
        "--max-count",
        type=int,
        default=200,
        metavar="N",
        help="samples per class are drawn in 1..N",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _run_verify(args: argparse.Namespace) -> int:
    import numpy as np

    try:
        from ..theory.solve import MAX_BYTES, _format_bytes, _solver_bytes, solve_ufm
    except ImportError as err:
        msg = f"the numerical solver is unavailable ({err})"
        raise ValueError(msg) from None
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
    if not 0 <= args.seed < 2**63:
        msg = f"`--seed` must lie in [0, 2**63); got {args.seed}"
        raise ValueError(msg)
    if args.max_count * args.max_classes > _MAX_TOTAL:
        msg = (
            f"`--max-count` * `--max-classes` must be at most 2**63 - 1 (the total count); "
            f"got {args.max_count} * {args.max_classes}"
        )
        raise ValueError(msg)

    def memory(k: int) -> int:  # the largest configuration: K classes of max_count samples
        return _solver_bytes(k, k * args.max_count, k, args.form, args.restarts, 8)

    needed = memory(args.max_classes)
    if needed > MAX_BYTES:
        largest = _largest_fitting(memory, args.max_classes, MAX_BYTES)
        fits = (
            f"pass `--max-classes` {largest} or less"
            if largest >= 2
            else "lower `--max-count` or `--restarts`"
        )
        msg = (
            f"`--max-classes` {args.max_classes} would need up to {_format_bytes(needed)} of "
            f"solver memory (dim = K = {args.max_classes}, {args.restarts} restarts, "
            f"{args.form} form, counts up to {args.max_count}), more than the solver's limit "
            f"of {_format_bytes(MAX_BYTES)}; {fits}"
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


def _largest_fitting(cost: Callable[[int], int], high: int, limit: int) -> int:
    """Largest k in [2, high] with cost(k) <= limit (cost increasing), or 1 if none."""
    low = 1
    while low < high:
        mid = (low + high + 1) // 2
        if mid >= 2 and cost(mid) <= limit:
            low = mid
        else:
            high = mid - 1
    return low


def _gaps(opt: UFMOptimum, solution: Any, bias: bool) -> _Gaps:
    import numpy as np

    from .._lib.backend import to_host
    from ..theory.comparison import gof_error, margin_comparison, norm_comparison

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
        xp = backend_namespace(name)
        if name == "torch":
            import torch

            return xp, "cuda" if torch.cuda.is_available() else "cpu"
        return xp, None
    except ImportError as err:
        msg = f"`--backend` {name!r} is not installed ({err})"
        raise ValueError(msg) from None


# ---------------------------------------------------------------------------
# shared helpers


def _counts(text: str) -> list[int]:
    """Counts from "5000,200,20", or from a file with "@FILE" (commas or whitespace).

    A command line holds at most 128 KiB in one argument, about 25,000
    four-digit counts; more classes come from a file.
    """
    source = text
    if text.startswith("@"):
        try:
            source = Path(text[1:]).read_text()
        except (OSError, UnicodeDecodeError) as err:
            reason = getattr(err, "strerror", None) or err
            msg = f"cannot read the counts file {text[1:]!r}: {reason}"
            raise argparse.ArgumentTypeError(msg) from None
    parts = source.replace(",", " ").split()
    try:
        return [int(part) for part in parts]
    except ValueError:
        shown = text if len(text) <= 60 else text[:57] + "..."
        msg = f"must be comma-separated integers, e.g. 5000,200,20, or @FILE; got {shown!r}"
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
