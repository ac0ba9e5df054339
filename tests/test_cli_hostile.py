"""The command line against hostile input: every failure one line naming the option.

Non-finite solver results fail `verify`, `@FILE` reads are bounded, counts may
be given with spaces, output paths are checked before any work, a missing extra
names the pip command, Ctrl-C ends with status 130, and every option of `demo`
and `reproduce` with a wrong value names itself.
"""

from __future__ import annotations

import builtins
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import numpy as np
import pytest

from ncgeom import cli as cli_module
from ncgeom.cli import main
from ncgeom.integrations.cli import _gaps, _passes, _worst
from ncgeom.theory import ufm_relu_optimum

THEORY = ["theory", "--lambda-w", "2e-2", "--lambda-h", "2e-2"]
VERIFY = ["verify", "--configs", "3", "--max-classes", "3", "--max-count", "6", "--seed", "1"]
NON_FINITE = [math.nan, math.inf, -math.inf]


# ---------------------------------------------------------------------------
# verify: any non-finite value fails its row


def _row(objective=1e-12, geometry=1e-9, nc1=None, finite=True):
    return {"objective": objective, "geometry": geometry, "nc1": nc1, "finite": finite}


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("key", ["objective", "geometry", "nc1"])
def test_a_non_finite_value_fails_its_row(key, bias, value):
    good = _row(geometry=None if bias else 1e-9, nc1=1e-8)
    assert _passes(good, bias)  # the same row with finite values passes
    assert not _passes({**good, key: value}, bias)


@pytest.mark.parametrize("bias", [False, True])
def test_a_row_with_non_finite_arrays_fails(bias):
    assert not _passes(_row(geometry=None if bias else 1e-9, finite=False), bias)


def test_a_missing_geometry_fails_without_bias():
    assert not _passes(_row(geometry=None), bias=False)


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("position", [0, 1, 2])
def test_worst_is_nan_when_any_row_is_not_finite(value, position):
    rows = [_row(objective=1e-9, geometry=2e-9, nc1=3e-9) for _ in range(3)]
    for key in ("objective", "geometry", "nc1"):
        broken = [dict(row) for row in rows]
        broken[position][key] = value
        for bias in (False, True):
            worst = _worst(broken, bias)
            assert math.isnan(worst[key]), (key, bias)
    assert _worst(rows, False) == {"objective": 1e-9, "geometry": 2e-9, "nc1": 3e-9}
    assert _worst([_row()], True)["nc1"] is None  # not measured: None, not NaN


def _exact_solution(opt, *, nan_in=None, objective=None):
    """The closed form as a solver result, optionally with NaN in one array."""
    arrays = {"classifier": np.asarray(opt.classifier()), "means": np.asarray(opt.means())}
    if nan_in is not None:
        arrays[nan_in] = arrays[nan_in].copy()
        arrays[nan_in][0, 0] = math.nan
    return SimpleNamespace(
        objective=float(opt.objective) if objective is None else objective,
        features=None,
        labels=None,
        bias=None,
        converged=True,
        **arrays,
    )


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(
    ("nan_in", "objective"), [("means", None), ("classifier", None), (None, math.nan)]
)
def test_gaps_of_a_non_finite_solution(bias, nan_in, objective):
    opt = ufm_relu_optimum([30, 20, 3, 1], 2e-2, 2e-2)
    exact = _gaps(opt, _exact_solution(opt), bias)
    assert exact.finite and _passes(exact._asdict(), bias)
    gaps = _gaps(opt, _exact_solution(opt, nan_in=nan_in, objective=objective), bias)
    assert not gaps.finite
    assert not _passes(gaps._asdict(), bias)


def _nan_solver(*args, **kwargs):
    counts, lw, lh = args[:3]
    opt = ufm_relu_optimum(counts, lw, lh)
    return _exact_solution(opt, nan_in="means", objective=math.nan)


@pytest.mark.parametrize("extra", [[], ["--bias"], ["--json"], ["--bias", "--json"]])
def test_verify_fails_a_solver_that_returns_nan(extra, monkeypatch, capsys):
    import ncgeom.theory.solve as solve

    monkeypatch.setattr(solve, "solve_ufm", _nan_solver)
    assert main([*VERIFY, *extra]) == 1
    out = capsys.readouterr().out
    if "--json" in extra:
        import json

        data = json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
        assert data["failed"] == [0, 1, 2]
        assert data["worst"]["objective"] is None  # NaN, written as null
        assert all(row["finite"] is False for row in data["configs"])
    else:
        assert "3 configuration(s) outside the limits" in out
        assert "finite=False" in out
        assert "all configurations within the limits" not in out


# ---------------------------------------------------------------------------
# --counts: spaces, files, bounds


def test_counts_with_spaces_are_the_same_counts(capsys):
    outputs = []
    for counts in (["30,20,3,1"], ["30", "20", "3", "1"], ["30,20", "3", "1"]):
        assert main([*THEORY, "--json", "--counts", *counts]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] == outputs[2]
    assert '"counts": [\n    30,\n    20,\n    3,\n    1\n  ]' in outputs[0]


def _usage_error(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_counts_file_is_bounded(capsys):
    started = time.perf_counter()
    err = _usage_error([*THEORY, "--counts", "@/dev/zero"], capsys)
    assert time.perf_counter() - started < 10.0
    assert err.startswith("ncgeom theory: error: argument --counts: ")
    assert "'/dev/zero' must hold at most 16 MiB" in err


def test_counts_file_limit_is_exact(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli_module, "MAX_COUNTS_FILE_BYTES", 12)
    path = tmp_path / "counts.txt"
    path.write_text("30,20,3,1\n  ")  # 12 bytes: accepted
    assert main([*THEORY, "--counts", f"@{path}"]) == 0
    capsys.readouterr()
    path.write_text("30,20,3,1\n   ")  # 13 bytes: refused
    assert "must hold at most" in _usage_error([*THEORY, "--counts", f"@{path}"], capsys)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"30,20,\xff\xfe", "must be text (UTF-8); byte 6 is not"),
        (b"30,20 x", "got 'x' in the counts file"),
        (b"30,1_000", "got '1_000'"),
        ("30,\u0663".encode(), "got '\u0663'"),  # an Arabic-Indic digit three
    ],
)
def test_bad_counts_file_is_one_line(content, match, tmp_path, capsys):
    path = tmp_path / "counts.txt"
    path.write_bytes(content)
    err = _usage_error([*THEORY, "--counts", f"@{path}"], capsys)
    assert "argument --counts" in err and match in err


def test_counts_file_that_is_a_folder(tmp_path, capsys):
    err = _usage_error([*THEORY, "--counts", f"@{tmp_path}"], capsys)
    assert "argument --counts: cannot read the counts file" in err


# ---------------------------------------------------------------------------
# missing extras name the pip command


def _hide(monkeypatch, *names):
    """Make `import NAME` fail, for both sys.modules and __import__ lookups."""
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name.split(".")[0] in names:
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def _error(argv, capsys, status=2):
    assert main(argv) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("argv", "hidden", "pip"),
    [
        (["demo", "--dataset", "synthetic", "--no-plots"], "torch", "ncgeom[demo]"),
        (["demo", "--dataset", "digits", "--no-plots"], "sklearn", "ncgeom[demo]"),
        (["demo", "--dataset", "synthetic"], "matplotlib", "ncgeom[demo]"),
        (["reproduce"], "torch", "ncgeom[reproduce]"),
        (["reproduce", "--no-plots"], "mnist1d", "ncgeom[reproduce]"),
        (["reproduce"], "matplotlib", "ncgeom[reproduce]"),
        ([*THEORY, "--counts", "3,2", "--plot", "PLOT"], "matplotlib", "ncgeom[plots]"),
        (["verify", "--backend", "jax", "--configs", "1"], "jax", "ncgeom[jax]"),
        (["verify", "--backend", "torch", "--configs", "1"], "torch", "ncgeom[torch]"),
    ],
)
def test_a_missing_extra_names_the_pip_command(argv, hidden, pip, tmp_path, monkeypatch, capsys):
    argv = [str(tmp_path / "fig.png") if a == "PLOT" else a for a in argv]
    monkeypatch.chdir(tmp_path)
    _hide(monkeypatch, hidden)
    err = _error(argv, capsys)
    assert f"pip install '{pip}'" in err
    assert hidden in err
    assert sorted(os.listdir(tmp_path)) == []  # nothing written


# ---------------------------------------------------------------------------
# Ctrl-C: status 130 and one line


def _interrupting_solver(*args, **kwargs):
    raise KeyboardInterrupt


def test_interrupt_in_the_solver_is_status_130(monkeypatch, capsys):
    import ncgeom.theory.solve as solve

    monkeypatch.setattr(solve, "solve_ufm", _interrupting_solver)
    assert main(VERIFY) == 130
    assert capsys.readouterr().err == "ncgeom verify: error: interrupted\n"


def test_an_interrupt_a_library_swallows_still_ends_verify(monkeypatch, capsys):
    # JAX's bare `except:` clauses (its shape checks, run for every operation
    # outside a compiled function) catch a KeyboardInterrupt that lands in them.
    import ncgeom.theory.solve as solve

    calls = []

    def swallowing_solver(*args, **kwargs):
        calls.append(args)
        try:
            signal.raise_signal(signal.SIGINT)
        except:  # noqa: E722 (what the library does)
            pass
        counts, lw, lh = args[:3]
        return _exact_solution(ufm_relu_optimum(counts, lw, lh))

    monkeypatch.setattr(solve, "solve_ufm", swallowing_solver)
    assert main(VERIFY) == 130
    assert capsys.readouterr().err == "ncgeom verify: error: interrupted\n"
    assert len(calls) == 1  # the next configuration never started
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def _command(run):
    return cli_module.Command("test command", lambda parser: None, run)


def test_an_interrupt_dropped_by_a_command_that_returns_is_status_130(monkeypatch, capsys):
    def run(args):
        try:
            signal.raise_signal(signal.SIGINT)
        except:  # noqa: E722 (a library that catches everything)
            pass
        print("done")
        return 0

    monkeypatch.setitem(cli_module.COMMANDS, "drops", _command(run))
    assert main(["drops"]) == 130
    assert capsys.readouterr() == ("done\n", "ncgeom drops: error: interrupted\n")


def test_an_interrupt_during_an_import_lets_the_import_finish(tmp_path, monkeypatch, capsys):
    # An exception raised inside an extension module's initialisation can abort the
    # process (jaxlib's does): the interrupt is recorded and raised after the import.
    (tmp_path / "ncgeom_probe_slow_import.py").write_text(
        "import signal\nsignal.raise_signal(signal.SIGINT)\nFINISHED = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    imported = []

    def run(args):
        import ncgeom_probe_slow_import

        imported.append(ncgeom_probe_slow_import.FINISHED)
        return 0

    monkeypatch.setitem(cli_module.COMMANDS, "imports", _command(run))
    monkeypatch.delitem(sys.modules, "ncgeom_probe_slow_import", raising=False)
    assert main(["imports"]) == 130
    assert imported == [True]
    assert capsys.readouterr().err == "ncgeom imports: error: interrupted\n"


def test_interrupt_before_the_command_runs(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "available_commands", interrupted)
    assert main(VERIFY) == 130
    assert capsys.readouterr().err == "ncgeom: error: interrupted\n"


_PROGRAM = """
import sys, time
from ncgeom import cli
{setup}
sys.argv = ["ncgeom", *{argv!r}]
print("ready", flush=True)
sys.exit(cli.main())
"""


def _interrupted_program(argv, setup=""):
    code = textwrap.dedent(_PROGRAM.format(setup=textwrap.dedent(setup), argv=argv))
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline() == "ready\n"
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        sent = time.perf_counter()
        _, err = process.communicate(timeout=60)
        return process.returncode, err, time.perf_counter() - sent
    finally:
        process.kill()
        process.wait()


def test_ctrl_c_ends_the_program_with_status_130():
    argv = ["verify", "--configs", "1000000", "--max-classes", "3", "--max-count", "5"]
    status, err, _ = _interrupted_program(argv)
    assert status == 130
    assert err == "ncgeom verify: error: interrupted\n"


def test_ctrl_c_ends_a_command_that_swallows_it():
    setup = """
    def run(args):
        while True:
            try:
                time.sleep(0.01)
            except:  # a library that catches everything, KeyboardInterrupt included
                pass

    cli.COMMANDS["stuck"] = cli.Command("never stops", lambda parser: None, run)
    cli._INTERRUPT_GRACE_S = 0.5
    """
    status, err, waited = _interrupted_program(["stuck"], setup)
    assert status == 130
    assert err == "ncgeom stuck: error: interrupted\n"
    assert waited < 20.0


# ---------------------------------------------------------------------------
# demo and reproduce: outputs checked and options named before any training


def _never_train(monkeypatch):
    from ncgeom_torch import demo, reproduce

    def fail(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(demo, "_build_model", fail)
    monkeypatch.setattr(reproduce, "_train_all", fail)


DEMO = ["demo", "--dataset", "synthetic", "--epochs", "2", "--no-plots"]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--device", "cpu:5"], r"`--device` 'cpu:5' does not exist"),
        (["--device", "meta"], r"`--device` 'meta' holds no data"),
        (["--device", ""], r"`--device` must be a torch device"),
        (["--seed", "-1"], r"`--seed` must be an integer in \[0, 2\*\*63\); got -1"),
        (["--seed", str(2**64)], r"`--seed` must be an integer in \[0, 2\*\*63\)"),
        (["--ratio", "5"], r"`--ratio` .*must lie in \(0, 1\]; got 5\.0"),
        (["--ratio", "nan"], r"`--ratio` must be a finite number > 0; got nan"),
        (["--width", "3"], r"`--width` \(the feature dimension\) must be at least 10"),
        (["--width", "0"], r"`--width` must be a positive integer; got 0"),
        (["--depth", "0"], r"`--depth` must be a positive integer"),
        (["--epochs", "-1"], r"`--epochs` must be a positive integer"),
        (["--eval-every", "0"], r"`--eval-every` must be a positive integer"),
        (["--lr", "inf"], r"`--lr` must be a finite number > 0; got inf"),
        (["--lambda-h", "-1"], r"`--lambda-h` must be a finite number > 0"),
        (["--threads", str(10**6)], r"`--threads` must be at most \d+, the CPUs"),
        (["--threads", "0"], r"`--threads` must be a positive integer"),
        (["--counts", "5", "5"], r"`--counts` must give 10 classes for 'synthetic'; got 2"),
        (["--counts", *["5"] * 9, "5000"], r"`--counts` for class 9 must lie in \[1, 200\]"),
        (["--counts", *["5"] * 9, "0"], r"`--counts` must be positive integers \(>= 1\); got 0"),
        (["--out", ""], r"`--out` must name a folder; got ''"),
        (["--out", "FILE"], r"`--out` must name a folder; .* is a file"),
        (["--out", "FILE/sub"], r"`--out` must be inside a folder"),
        (["--out", "HOLDS_FOLDER"], r"`--out` must not hold a folder named 'report.json'"),
    ],
)
def test_demo_names_the_wrong_option_before_training(extra, match, tmp_path, monkeypatch, capsys):
    import re

    pytest.importorskip("torch")
    _never_train(monkeypatch)
    (tmp_path / "file").write_text("keep")
    (tmp_path / "holds" / "report.json").mkdir(parents=True)
    places = {"FILE": "file", "FILE/sub": "file/sub", "HOLDS_FOLDER": "holds"}
    extra = [str(tmp_path / places[a]) if a in places else a for a in extra]
    out = [] if "--out" in extra else ["--out", str(tmp_path / "new")]
    err = _error([*DEMO, *out, *extra], capsys)
    assert err.startswith("ncgeom demo: error: ")
    assert re.search(match, err), err
    assert not (tmp_path / "new").exists()
    assert (tmp_path / "file").read_text() == "keep"


def test_demo_figure_names_are_checked_only_with_plots(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    _never_train(monkeypatch)
    (tmp_path / "gram.png").mkdir()
    args = ["demo", "--dataset", "synthetic", "--epochs", "2", "--out", str(tmp_path)]
    assert "must not hold a folder named 'gram.png'" in _error(args, capsys)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--out", "FILE"], r"`--out` must name a folder; .* is a file"),
        (["--out", "HOLDS_FOLDER"], r"`--out` must not hold a folder named 'report.json'"),
        (["--out", ""], r"`--out` must name a folder; got ''"),
        (["--device", "cpu:5"], r"`--device` 'cpu:5' does not exist"),
        (["--device", "nonsense"], r"`--device` must be a torch device"),
        # The quick preset's two seeds run from --seed to --seed + 1.
        (["--seed", "-1"], r"`--seed` must be an integer in \[0, 2\*\*63 - 2\]; got -1"),
        (["--seed", str(2**63 - 1)], r"`--seed` must be an integer in \[0, 2\*\*63 - 2\]"),
    ],
)
def test_reproduce_checks_its_options_before_training(extra, match, tmp_path, monkeypatch, capsys):
    import re

    pytest.importorskip("torch")
    pytest.importorskip("mnist1d")
    pytest.importorskip("sklearn")
    _never_train(monkeypatch)
    (tmp_path / "file").write_text("keep")
    (tmp_path / "holds" / "report.json").mkdir(parents=True)
    places = {"FILE": "file", "HOLDS_FOLDER": "holds"}
    extra = [str(tmp_path / places[a]) if a in places else a for a in extra]
    out = [] if "--out" in extra else ["--out", str(tmp_path / "new")]
    err = _error(["reproduce", "--no-plots", *out, *extra], capsys)
    assert err.startswith("ncgeom reproduce: error: ")
    assert re.search(match, err), err
    assert (tmp_path / "file").read_text() == "keep"


def test_reproduce_python_api_checks_out_before_training(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from ncgeom_torch.reproduce import run_reproduce

    _never_train(monkeypatch)
    target = tmp_path / "existing.txt"
    target.write_text("keep")
    with pytest.raises(ValueError, match=r"`out` must name a folder"):
        run_reproduce("quick", out=target, progress=False)
    assert target.read_text() == "keep"


# ---------------------------------------------------------------------------
# the Lightning callback's counts


def test_callback_counts_given_as_a_string_is_a_type_error():
    pytest.importorskip("lightning")
    from ncgeom_torch.lightning import NeuralCollapseCallback

    with pytest.raises(TypeError, match=r"`counts` must be a sequence of positive integers"):
        NeuralCollapseCallback(3, counts="1,2,3")
    with pytest.raises(
        ValueError, match=r"`counts` must give one training count per class \(3\); got 2"
    ):
        NeuralCollapseCallback(3, counts=[1, 2])
    with pytest.raises(ValueError, match=r"`counts` must be positive integers; got 2\.5"):
        NeuralCollapseCallback(3, counts=[1, 2.5, 3])
    assert NeuralCollapseCallback(3, counts=np.array([4, 5, 6])).counts == [4, 5, 6]
