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
import json
import math
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, NamedTuple, NoReturn, TextIO

from .._lib.backend import BACKENDS, backend_namespace, to_host
from .._lib.jsonable import jsonable
from .._lib.progress import Progress
from .._lib.validate import check_output_dir, check_output_file
from ..theory.optimum import UFMOptimum, critical_regularization, survival_span, ufm_relu_optimum
from .plugins import load_entry_points

__all__ = [
    "COMMANDS",
    "COMMAND_ENTRY_POINTS",
    "Command",
    "MAX_COUNTS_FILE_BYTES",
    "PLOT_SUFFIXES",
    "add_counts_option",
    "available_commands",
    "check_interrupted",
    "check_output_dir",
    "check_output_file",
    "main",
    "require_extra",
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
    with _Interrupts(program=argv is None) as interrupts:
        try:
            return _main(argv, interrupts)
        except KeyboardInterrupt:
            if interrupts.program:
                interrupts.exit()
            interrupts.report()
            return 130


def _main(argv: Sequence[str] | None, interrupts: _Interrupts) -> int:
    commands = available_commands()
    parser = _parser(commands)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    name = interrupts.name = f"ncgeom {args.command}"
    try:
        status = commands[args.command].run(args)
        check_interrupted()  # an interrupt that a library dropped still ends with 130
        return status
    except BrokenPipeError:
        # The reader (e.g. `head`) left early: stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
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


# Seconds the program waits, after Ctrl-C, for a command to stop before it exits anyway.
_INTERRUPT_GRACE_S = 5.0


class _Interrupts:
    """Ctrl-C (SIGINT) during a command: `KeyboardInterrupt`, remembered.

    A library may catch the `KeyboardInterrupt` that Python raises in whatever
    code runs when the signal arrives: JAX's bare ``except:`` clauses (in its
    shape checks, run for every operation outside a compiled function) did,
    and `ncgeom verify --backend jax` then ran on. The handler here also
    records the signal, and `check_interrupted` raises it again at the next
    check (each `verify` configuration, each `demo` epoch, the end of the
    command). Inside an import the handler only records it. When the program
    runs as the ``ncgeom`` command (not ``main(argv)`` from Python) it ends
    with `exit` once the interrupt reaches `main`, at a second Ctrl-C, or if
    the command has not stopped `_INTERRUPT_GRACE_S` seconds after the signal.
    """

    def __init__(self, *, program: bool) -> None:
        self.program = program
        self.name = "ncgeom"
        self.previous: Any = None
        self.installed = False
        self.finished = threading.Event()
        self.reported = False

    def __enter__(self) -> _Interrupts:
        global _ACTIVE
        _PENDING.clear()
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
            self.installed = True
            _ACTIVE = self
        return self

    def __exit__(self, *exc: object) -> None:
        global _ACTIVE
        self.finished.set()
        _PENDING.clear()
        if self.installed:
            _ACTIVE = None
            previous = signal.SIG_DFL if self.previous is None else self.previous
            signal.signal(signal.SIGINT, previous)

    def report(self) -> None:
        """The one line of an interrupted command (once)."""
        if not self.reported:
            self.reported = True
            _fail(self.name, "interrupted")

    def exit(self) -> NoReturn:
        """End the program now with status 130 and the one line.

        The interrupted frames are never released: jaxlib can crash
        (segmentation fault) when they are, if Ctrl-C came during an XLA
        compilation or a JAX import.
        """
        self.report()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe or stream
                pass
        os._exit(130)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.program and _PENDING.is_set():
            self.exit()
        _PENDING.set()
        if self.program:
            threading.Thread(target=self._watch, daemon=True).start()
        if not _importing(frame):
            raise KeyboardInterrupt
        # An exception inside a module's import can abort the process (jaxlib's
        # C++ initialisation calls `std::terminate`): the interrupt waits for
        # the next `check_interrupted`, the end of the command, or the grace.

    def _watch(self) -> None:
        if not self.finished.wait(_INTERRUPT_GRACE_S):
            self.exit()


def _importing(frame: Any) -> bool:
    """Whether `frame` runs inside an import (a frame of importlib's bootstrap)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


_PENDING = threading.Event()  # Ctrl-C seen during the running command
_ACTIVE: _Interrupts | None = None


def check_interrupted() -> None:
    """Raise `KeyboardInterrupt` if Ctrl-C was pressed during the running command.

    A no-op outside `main`. Long loops of commands call it, so that an
    interrupt that a library caught and dropped still ends the command.

    Examples
    --------
    >>> from ncgeom.cli import check_interrupted
    >>> check_interrupted()  # no command running: nothing to do
    """
    if _ACTIVE is not None and _PENDING.is_set():
        raise KeyboardInterrupt


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
    add_counts_option(
        parser,
        required=True,
        help="samples per class: positive integers in any order, separated by commas or "
        "spaces, or @FILE to read them from a file (commas or whitespace, at most 16 MiB)",
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
        require_extra("plots", {"matplotlib": "the figure"}, needed_by="`--plot`")
    opt = ufm_relu_optimum(args.counts, args.lambda_w, args.lambda_h, args.dim)
    counts = to_host(opt.counts)
    critical = [float(v) for v in critical_regularization(counts)]
    intervals = _survival_intervals(counts, opt.lambda_w, opt.lambda_h)
    survive = [None if span is None else span[0] for span in intervals]
    if plot is not None:
        from ..theory.plot import theory_figure

        theory_figure(opt).savefig(plot)
    if args.json:
        data = opt.to_dict()
        data["num_samples"] = opt.num_samples
        data["critical_regularization"] = critical
        data["min_samples_to_survive"] = survive
        data["survival_interval"] = [None if span is None else list(span) for span in intervals]
        print(json.dumps(jsonable(data), indent=2))
    else:
        _print_theory(opt, critical, intervals, sys.stdout)
        if plot is not None:
            print(f"figure written to {plot}")
    return 0


def _print_theory(
    opt: UFMOptimum,
    critical: list[float],
    intervals: list[tuple[int, int] | None],
    out: TextIO,
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
    shown = range(k) if k <= 20 else [i for i in range(k) if not data["alive"][i]][:20]
    for i in shown:
        span = intervals[i]
        where = "none" if span is None else f"[{_count(span[0])}, {_count(span[1])}]"
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
            f"class {i}: " + ("impossible" if intervals[i] is None else _count(intervals[i][0]))
            for i in dead
        ]
        print("samples a collapsed class needs to survive: " + ", ".join(parts), file=out)
    print(f"optimal objective f* = {data['objective']:.12g}", file=out)


def _count(n: int) -> str:
    """A count of the survival intervals, exact; marked when beyond the int64 range."""
    return str(n) if n <= _MAX_TOTAL else f"{n} (beyond 2**63 - 1)"


def _say(text: str, out: TextIO) -> None:
    """Print a paragraph wrapped at 88 columns."""
    print(textwrap.fill(text, width=88), file=out)


def _survival_intervals(
    counts: Any, lambda_w: float, lambda_h: float
) -> list[tuple[int, int] | None]:
    """Per class, the counts [a, b] that keep it alive with the other counts fixed
    (`ncgeom.theory.optimum.survival_span`, once per distinct count)."""
    host = [int(n) for n in counts]
    total, num = sum(host), len(host)
    cache: dict[int, tuple[int, int] | None] = {}
    for n in host:
        if n not in cache:
            cache[n] = survival_span(total - n, num, lambda_w, lambda_h)
    return [cache[n] for n in host]


# ---------------------------------------------------------------------------
# ncgeom verify


class _Gaps(NamedTuple):
    objective: float  # relative, signed: (solver - closed form) / closed form
    geometry: float | None  # max abs error of margins, norms, orthogonality (None with a bias)
    nc1: float | None  # max spread of a class's features (None in the collapsed form)
    finite: bool  # the solver's objective and every array it returned are finite
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
    try:
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
            check_interrupted()
            gaps = _gaps(opt, solution, args.bias)
            rows.append({"counts": counts, "lambda_w": lw, "lambda_h": lh, **gaps._asdict()})
            progress.update(
                index + 1, f"worst objective gap {_worst(rows, args.bias)['objective']:.2e}"
            )
    finally:
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
    """The solver's gaps to the closed form, computed on the host in float64.

    A solution with a non-finite objective or array is not compared (its
    gaps are NaN where they apply): such a row fails.
    """
    import numpy as np

    from ..theory.comparison import gof_error, margin_comparison, norm_comparison

    target = float(opt.objective)
    objective = (float(solution.objective) - target) / target
    arrays = {
        name: to_host(getattr(solution, name)).astype(np.float64)
        for name in ("classifier", "means", "features", "bias")
        if getattr(solution, name, None) is not None
    }
    finite = math.isfinite(objective) and all(np.isfinite(a).all() for a in arrays.values())
    geometry = nc1 = None
    if not bias:
        geometry = math.nan
        if finite:
            margins = margin_comparison(arrays["classifier"], arrays["means"], opt)
            norms = norm_comparison(arrays["means"], opt)
            errors = [
                float(np.max(np.abs(to_host(margins.measured) - to_host(margins.predicted)))),
                float(np.max(np.abs(to_host(norms.measured) - to_host(norms.predicted)))),
            ]
            if opt.num_alive > 0:
                errors.append(float(to_host(gof_error(arrays["means"], opt))))
            geometry = max(errors)
    if "features" in arrays:
        nc1 = math.nan
        if finite:
            features, means = arrays["features"], arrays["means"]
            labels = to_host(solution.labels)
            nc1 = float(np.max(np.abs(features - means[labels]))) if features.size else 0.0
    return _Gaps(objective, geometry, nc1, finite, bool(solution.converged))


def _passes(row: dict[str, Any], bias: bool) -> bool:
    """Whether a row of `verify` is within the limits; any non-finite value fails it."""
    measured = [row[key] for key in ("objective", "geometry", "nc1") if row[key] is not None]
    if not row["finite"] or not all(math.isfinite(value) for value in measured):
        return False
    # With a bias the optimum lies at or below the bias-free f* (b = 0 is
    # feasible), by an unknown amount: only the side above f* is checked.
    if row["objective"] > _OBJECTIVE_TOL:
        return False
    if not bias:
        if row["objective"] < -_BELOW_TOL:
            return False
        if row["geometry"] is None or row["geometry"] > _GEOMETRY_TOL:
            return False
    return row["nc1"] is None or row["nc1"] <= _NC1_TOL


def _worst(rows: list[dict[str, Any]], bias: bool) -> dict[str, float | None]:
    """The worst objective, geometry and NC1 gaps: NaN when any row's value is not finite.

    Without a bias the objective gap is |f_solver - f*| / f*; with a bias the
    solver may (and usually does) go below the bias-free f*, so the worst
    case is the largest amount above it. Geometry and NC1 are None when no
    row has them.
    """
    objective = [row["objective"] if bias else abs(row["objective"]) for row in rows]
    out: dict[str, float | None] = {"objective": _largest(objective)}
    for key in ("geometry", "nc1"):
        values = [row[key] for row in rows if row[key] is not None]
        out[key] = _largest(values) if values else None
    return out


def _largest(values: list[float]) -> float:
    """The largest value; NaN if any value is not finite (``max`` would skip a NaN)."""
    if not all(math.isfinite(value) for value in values):
        return math.nan
    return max(values)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3e}"


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
        lowest = -_largest([-row["objective"] for row in rows])
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
            f"worst geometry gap (margins, norms, orthogonality): {_number(worst['geometry'])} "
            f"(limit {_GEOMETRY_TOL:g})",
            file=out,
        )
    if worst["nc1"] is not None:
        print(
            f"worst within-class spread (NC1): {_number(worst['nc1'])} (limit {_NC1_TOL:g})",
            file=out,
        )
    if failed:
        print(f"{len(failed)} configuration(s) outside the limits:", file=out)
        for i in failed:
            row = rows[i]
            print(
                f"  #{i}: counts={row['counts']} lambda_w={row['lambda_w']:.3g} "
                f"lambda_h={row['lambda_h']:.3g} objective gap={row['objective']:+.3e} "
                f"geometry={_number(row['geometry'])} nc1={_number(row['nc1'])} "
                f"finite={row['finite']} converged={row['converged']}",
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
        install = _BACKEND_INSTALL.get(name, f"pip install {name}")
        msg = f"`--backend` {name!r} is not installed ({err}): {install}"
        raise ValueError(msg) from None


# How to install each backend of `ncgeom verify`.
_BACKEND_INSTALL = {
    "torch": "pip install 'ncgeom[torch]'",
    "jax": "pip install 'ncgeom[jax]'",
    "cupy": "pip install 'ncgeom[cupy]'",
}


# ---------------------------------------------------------------------------
# shared helpers


def require_extra(extra: str, modules: dict[str, str], *, needed_by: str) -> None:
    """Import each module a command needs; if one fails, name the pip command.

    Parameters
    ----------
    extra : str
        The install extra that brings the modules, e.g. ``"demo"``.
    modules : dict of str to str
        Module name to what it is needed for, e.g. ``{"torch": "training"}``.
    needed_by : str
        Who needs them, for the message, e.g. ``"`ncgeom demo`"``.

    Raises
    ------
    ValueError
        ``NEEDED_BY needs MODULE (PURPOSE), which cannot be imported here
        (REASON): pip install 'ncgeom[EXTRA]'`` for the first module that
        does not import.

    Examples
    --------
    >>> from ncgeom.cli import require_extra
    >>> require_extra("plots", {"json": "reports"}, needed_by="`ncgeom theory --plot`")
    >>> try:
    ...     require_extra("demo", {"no_such_module": "training"}, needed_by="`ncgeom demo`")
    ... except ValueError as err:
    ...     print(str(err).split(", ")[0], "...", str(err).split(": ")[-1])
    `ncgeom demo` needs no_such_module (training) ... pip install 'ncgeom[demo]'
    """
    for module, purpose in modules.items():
        try:
            __import__(module)
        except ImportError as err:
            msg = (
                f"{needed_by} needs {module} ({purpose}), which cannot be imported here "
                f"({err}): pip install 'ncgeom[{extra}]'"
            )
            raise ValueError(msg) from None


#: Largest ``--counts @FILE`` read, in bytes (16 MiB: over a million ten-digit counts).
MAX_COUNTS_FILE_BYTES = 16 * 2**20


def add_counts_option(parser: argparse.ArgumentParser, *, required: bool, help: str) -> None:
    """Add ``--counts``: class counts separated by commas or spaces, or ``@FILE``.

    Every word after ``--counts`` up to the next option is read (``5000,500``,
    ``5000 500`` and ``5000, 500`` give the same counts); ``@FILE`` reads the
    counts from a file of at most `MAX_COUNTS_FILE_BYTES`. The parsed value
    is a list of int (None when the option is left out). Range checks are
    left to the command.

    Examples
    --------
    >>> import argparse
    >>> from ncgeom.cli import add_counts_option
    >>> parser = argparse.ArgumentParser()
    >>> add_counts_option(parser, required=True, help="samples per class")
    >>> parser.parse_args(["--counts", "5000,500", "50", "5"]).counts
    [5000, 500, 50, 5]
    """
    parser.add_argument(
        "--counts",
        type=_counts,
        nargs="+",
        action=_JoinCounts,
        required=required,
        default=None,
        metavar=("N1,N2,...", "N"),
        help=help,
    )


class _JoinCounts(argparse.Action):
    """The counts of every word given to ``--counts``, in order, as one list."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, [n for part in values for n in part])


def _counts(text: str) -> list[int]:
    """Counts from "5000,200,20", or from a file with "@FILE" (commas or whitespace).

    A command line holds at most 128 KiB in one argument, about 25,000
    four-digit counts; more classes come from a file, read up to
    `MAX_COUNTS_FILE_BYTES`.
    """
    source = _read_counts_file(text[1:]) if text.startswith("@") else text
    parts = source.replace(",", " ").split()
    for part in parts:
        if not _is_integer(part):
            where = f" in the counts file {text[1:]!r}" if text.startswith("@") else ""
            msg = (
                f"must be integers separated by commas or spaces, e.g. 5000,200,20, or "
                f"@FILE; got {_shorten(part)!r}{where}"
            )
            raise argparse.ArgumentTypeError(msg)
    return [int(part) for part in parts]


def _is_integer(word: str) -> bool:
    """An optionally signed run of ASCII digits (no "1_000", no other scripts' digits)."""
    digits = word[1:] if word[:1] in "+-" else word
    return digits.isascii() and digits.isdigit() and len(digits) <= 4000


def _read_counts_file(name: str) -> str:
    """The text of a counts file, read up to `MAX_COUNTS_FILE_BYTES` (one extra byte
    tells a longer file)."""
    try:
        with open(name, "rb") as file:
            data = file.read(MAX_COUNTS_FILE_BYTES + 1)
    except OSError as err:
        msg = f"cannot read the counts file {name!r}: {err.strerror or err}"
        raise argparse.ArgumentTypeError(msg) from None
    if len(data) > MAX_COUNTS_FILE_BYTES:
        msg = (
            f"the counts file {name!r} must hold at most {MAX_COUNTS_FILE_BYTES // 2**20} MiB "
            f"of counts; it is longer"
        )
        raise argparse.ArgumentTypeError(msg)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        msg = f"the counts file {name!r} must be text (UTF-8); byte {err.start} is not"
        raise argparse.ArgumentTypeError(msg) from None


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
