"""The `ncgeom` command: bad files and arguments, and output paths.

The contract of every command: bad input gets one line on stderr,
``ncgeom COMMAND: error: ...``, naming the option, and exit status 2, before
any work starts. `CliProbe.guards` name the expensive functions of a command;
the probe replaces them by a function that fails the probe, so an error that
comes only after the work started is caught too.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ncgeom.cli import main

THEORY = ["--lambda-w", "1e-3", "--lambda-h", "1e-3"]
#: The expensive step of each command: solving, training. (`theory` validates its
#: input in `ufm_relu_optimum` itself; only its output paths are guarded.)
GUARDS = {
    "verify": ("ncgeom.theory.solve.solve_ufm",),
    "demo": ("ncgeom_torch.demo._build_model",),
    "reproduce": ("ncgeom_torch.reproduce._train_all",),
}
_THEORY_WORK = ("ncgeom.integrations.cli.ufm_relu_optimum",)
#: A folder nobody can write in, not even root.
READ_ONLY = "/proc"


class WorkStarted(BaseException):
    """Raised by a guard: the command started its work before refusing the input."""


@dataclass(frozen=True)
class CliProbe:
    """`ncgeom ARGS` (ARGS built in a fresh folder) and what it must give.

    expect: "error" (exit 2, one line naming `option`, containing `hint`),
    "ok" (exit 0), or "ok-or-error" (either, the error with `hint`).
    """

    id: str
    args: Callable[[Path], list[str]]
    expect: str = "error"
    option: str | None = None
    hint: str | None = None
    #: Run in a subprocess with this timeout (s) and a 1 GiB address-space limit.
    timeout: float | None = None
    #: Functions that must not run before the refusal; default: `GUARDS` of the command.
    guards: tuple[str, ...] | None = None
    #: Modules made unimportable for the run (a missing optional dependency).
    hide: tuple[str, ...] = ()


def _file(name: str, content: bytes) -> Callable[[Path], str]:
    def make(folder: Path) -> str:
        path = folder / name
        path.write_bytes(content)
        return str(path)

    return make


_empty, _junk = _file("empty.txt", b""), _file("junk.txt", b"10, abc, 20\n")
_binary = _file("binary.txt", bytes(range(128, 256)) * 4)
_existing = _file("existing.txt", b"keep me\n")


def _theory(*counts: str) -> Callable[[Path], list[str]]:
    return lambda folder: ["theory", "--counts", *counts, *THEORY]


PROBES = [
    # ncgeom theory: counts files and lists
    CliProbe(
        "theory-counts-missing-file",
        lambda d: ["theory", "--counts", f"@{d}/missing.txt", *THEORY],
        option="counts",
    ),
    CliProbe(
        "theory-counts-empty-file",
        lambda d: ["theory", "--counts", f"@{_empty(d)}", *THEORY],
        option="counts",
    ),
    CliProbe(
        "theory-counts-junk-file",
        lambda d: ["theory", "--counts", f"@{_junk(d)}", *THEORY],
        option="counts",
    ),
    CliProbe(
        "theory-counts-binary-file",
        lambda d: ["theory", "--counts", f"@{_binary(d)}", *THEORY],
        option="counts",
    ),
    CliProbe(
        "theory-counts-folder", lambda d: ["theory", "--counts", f"@{d}", *THEORY], option="counts"
    ),
    CliProbe(
        "theory-counts-dev-zero",
        lambda d: ["theory", "--counts", "@/dev/zero", *THEORY],
        option="counts",
        timeout=20,
    ),
    CliProbe(
        "theory-counts-spaces-separate-args",
        _theory("5000", "500", "50", "5"),
        "ok-or-error",
        hint="5000,500,50,5",
    ),
    CliProbe("theory-counts-spaces-one-arg", _theory("10 20 30"), "ok-or-error", hint="10,20,30"),
    CliProbe("theory-counts-negative", _theory("10,-5,20"), option="counts"),
    CliProbe("theory-counts-zero", _theory("0,10,20"), option="counts"),
    CliProbe("theory-counts-above-int64", _theory("99999999999999999999,5"), option="counts"),
    CliProbe("theory-counts-fraction", _theory("2.5,10"), option="counts"),
    CliProbe("theory-missing-counts", lambda d: ["theory", *THEORY], option="counts"),
    CliProbe(
        "theory-lambda-nan",
        lambda d: ["theory", "--counts", "10,20", "--lambda-w", "nan", "--lambda-h", "1e-3"],
        option="lambda-w",
    ),
    CliProbe(
        "theory-lambda-inf",
        lambda d: ["theory", "--counts", "10,20", "--lambda-w", "1e-3", "--lambda-h", "inf"],
        option="lambda-h",
    ),
    CliProbe(
        "theory-lambda-zero",
        lambda d: ["theory", "--counts", "10,20", "--lambda-w", "0", "--lambda-h", "1e-3"],
        option="lambda-w",
    ),
    CliProbe(
        "theory-dim-zero",
        lambda d: ["theory", "--counts", "10,20", *THEORY, "--dim", "0"],
        option="dim",
    ),
    CliProbe(
        "theory-tiny-lambdas-fast",
        lambda d: ["theory", "--counts", "10,20", "--lambda-w", "3e-12", "--lambda-h", "3e-12"],
        "ok",
        timeout=10,
    ),
    # ncgeom theory: output paths (refused before any work)
    CliProbe(
        "theory-plot-folder",
        lambda d: ["theory", "--counts", "10,20", *THEORY, "--plot", str(d)],
        option="plot",
        guards=_THEORY_WORK,
    ),
    CliProbe(
        "theory-plot-read-only-folder",
        lambda d: [
            "theory",
            "--counts",
            "10,20",
            *THEORY,
            "--plot",
            f"{READ_ONLY}/ncgeom-probe.png",
        ],
        option="plot",
        guards=_THEORY_WORK,
    ),
    CliProbe(
        "theory-plot-missing-folder",
        lambda d: ["theory", "--counts", "10,20", *THEORY, "--plot", f"{d}/no/such/fig.png"],
        option="plot",
        guards=_THEORY_WORK,
    ),
    CliProbe(
        "theory-plot-bad-suffix",
        lambda d: ["theory", "--counts", "10,20", *THEORY, "--plot", f"{d}/fig.docx"],
        option="plot",
        guards=_THEORY_WORK,
    ),
    # ncgeom verify
    CliProbe("verify-seed-negative", lambda d: ["verify", "--seed", "-1"], option="seed"),
    CliProbe(
        "verify-backend-unknown", lambda d: ["verify", "--backend", "bogus"], option="backend"
    ),
    CliProbe(
        "verify-backend-not-installed", lambda d: ["verify", "--backend", "cupy"], option="backend"
    ),
    CliProbe("verify-configs-zero", lambda d: ["verify", "--configs", "0"], option="configs"),
    CliProbe("verify-tol-nan", lambda d: ["verify", "--tol", "nan"], option="tol", guards=()),
    CliProbe("verify-tol-negative", lambda d: ["verify", "--tol", "-1"], option="tol", guards=()),
    CliProbe("verify-max-iter-zero", lambda d: ["verify", "--max-iter", "0"], option="max-iter"),
    # ncgeom demo (all refused before training)
    CliProbe(
        "demo-seed-negative",
        lambda d: ["demo", "--seed", "-1", "--out", str(d / "out")],
        option="seed",
    ),
    CliProbe(
        "demo-ratio-above-one",
        lambda d: ["demo", "--ratio", "5", "--out", str(d / "out")],
        option="ratio",
    ),
    CliProbe(
        "demo-device-index-missing",
        lambda d: ["demo", "--device", "cpu:5", "--out", str(d / "out")],
        option="device",
    ),
    CliProbe(
        "demo-device-unknown",
        lambda d: ["demo", "--device", "gpu", "--out", str(d / "out")],
        option="device",
    ),
    CliProbe(
        "demo-counts-wrong-number",
        lambda d: ["demo", "--counts", "1,2", "--out", str(d / "out")],
        option="counts",
    ),
    CliProbe(
        "demo-counts-junk",
        lambda d: ["demo", "--counts", "a,b", "--out", str(d / "out")],
        option="counts",
    ),
    CliProbe(
        "demo-epochs-zero",
        lambda d: ["demo", "--epochs", "0", "--out", str(d / "out")],
        option="epochs",
    ),
    CliProbe(
        "demo-without-torch",
        lambda d: ["demo", "--out", str(d / "out")],
        hint="pip install 'ncgeom[demo]'",
        hide=("torch",),
    ),
    CliProbe("demo-out-existing-file", lambda d: ["demo", "--out", _existing(d)], option="out"),
    CliProbe(
        "demo-out-read-only",
        lambda d: ["demo", "--out", f"{READ_ONLY}/ncgeom-probe"],
        option="out",
    ),
    # ncgeom reproduce (all refused before training)
    CliProbe(
        "reproduce-out-existing-file", lambda d: ["reproduce", "--out", _existing(d)], option="out"
    ),
    CliProbe(
        "reproduce-out-read-only",
        lambda d: ["reproduce", "--out", f"{READ_ONLY}/ncgeom-probe"],
        option="out",
    ),
    CliProbe(
        "reproduce-seed-negative",
        lambda d: ["reproduce", "--seed", "-1", "--out", str(d / "out")],
        option="seed",
    ),
    CliProbe(
        "reproduce-device-unknown",
        lambda d: ["reproduce", "--device", "gpu", "--out", str(d / "out")],
        option="device",
    ),
    CliProbe(
        "reproduce-device-index-missing",
        lambda d: ["reproduce", "--device", "cpu:5", "--out", str(d / "out")],
        option="device",
    ),
]


def _command(args: list[str]) -> str:
    return args[0] if args and not args[0].startswith("-") else ""


def run_in_process(
    probe: CliProbe, args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> tuple[int | None, str]:
    """Exit status and stderr of ``ncgeom ARGS``, with the command's work guarded."""
    calls: list[str] = []
    guards = GUARDS.get(_command(args), ()) if probe.guards is None else probe.guards
    for target in guards:
        module, _, name = target.rpartition(".")

        def guard(*_: Any, target: str = target, **__: Any) -> Any:
            calls.append(target)
            raise WorkStarted(target)

        monkeypatch.setattr(f"{module}.{name}", guard)
    for name in probe.hide:
        monkeypatch.setitem(sys.modules, name, None)
    try:
        status = main(args)
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    except WorkStarted:
        status = None
    err = capsys.readouterr().err
    if calls:
        raise AssertionError(f"the work started ({calls[0]}) before the input was refused")
    return status, err


#: ``python -m ncgeom`` with its address space limited to 1 GiB: set in the child
#: itself (a `preexec_fn` would fork a process that may run JAX's threads).
_LIMITED = (
    "import resource, runpy, sys; "
    "resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30)); "
    "sys.argv[0] = 'ncgeom'; "
    "runpy.run_module('ncgeom', run_name='__main__', alter_sys=True)"
)


def run_in_subprocess(args: list[str], timeout: float) -> tuple[int, str]:
    """Exit status and stderr of ``python -m ncgeom ARGS``, within `timeout` seconds."""
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-c", _LIMITED, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after {timeout:g} s") from None
    seconds = time.perf_counter() - started
    if done.returncode != 0 and "MemoryError" in done.stderr:
        tail = done.stderr.strip().splitlines()[-1]
        raise AssertionError(
            f"ran out of memory after {seconds:.1f} s (1 GiB limit), exit {done.returncode}, "
            f"{len(done.stderr.splitlines())} lines on stderr ending {tail!r}"
        )
    return done.returncode, done.stderr


def check_outcome(probe: CliProbe, args: list[str], status: int | None, err: str) -> None:
    """The exit status and stderr against the probe's expectation."""
    lines = [line for line in err.splitlines() if line.strip()]
    shown = f"exit {status}, stderr {err.strip()[-400:]!r}"
    if probe.expect == "ok" or (probe.expect == "ok-or-error" and status == 0):
        if status != 0:
            raise AssertionError(f"expected success; got {shown}")
        return
    command = _command(args)
    prefix = f"ncgeom {command}: error:" if command else "ncgeom: error:"
    if status != 2:
        raise AssertionError(f"expected exit status 2; got {shown}")
    if len(lines) != 1 or not lines[0].startswith(prefix):
        raise AssertionError(f"expected one line starting {prefix!r}; got {shown}")
    text = lines[0]
    if probe.option is not None:
        forms = (f"--{probe.option}", f"`{probe.option}`", f"`{probe.option.replace('-', '_')}`")
        if not any(form in text for form in forms):
            raise AssertionError(f"the message must name --{probe.option}; got {text!r}")
    if probe.hint is not None and probe.hint not in text:
        raise AssertionError(f"the message must show {probe.hint!r}; got {text!r}")
