"""The `ncgeom` command: theory table, JSON, figure, verify, errors."""

from __future__ import annotations

import argparse
import errno
import io
import json
import re
import subprocess
import sys
import tempfile
import time

import pytest

from ncgeom import cli as cli_module
from ncgeom._progress import Progress
from ncgeom.cli import COMMANDS, available_commands, check_output_dir, main

THEORY = ["theory", "--counts", "30,20,3,1", "--lambda-w", "2e-2", "--lambda-h", "2e-2"]
# Published values for these counts and lambdas.
MARGINS = [2.678841704153, 2.428722710734, 0.938269638593, 0.0]
F_STAR = 0.730155472976704


def test_theory_table(capsys):
    assert main(THEORY) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(
        i for i, line in enumerate(lines) if line.split()[:3] == ["class", "n_k", "alive"]
    )
    assert "cos(w_k,h_k)" in lines[header]
    rows = [line.split() for line in lines[header + 1 : header + 5]]
    assert [row[1] for row in rows] == ["30", "20", "3", "1"]
    assert [row[2] for row in rows] == ["yes", "yes", "yes", "no"]
    for row, margin in zip(rows, MARGINS, strict=True):
        assert float(row[3]) == pytest.approx(margin, abs=5e-6)
    assert rows[3][3] == rows[3][4] == "0" and rows[3][6] == "-"
    assert "3 of 4 classes alive" in out
    assert "collapses" in out
    # 2 (K-1) > (53 + 2)^2 K lambda_W lambda_H holds; with 1 sample it does not.
    assert "class 3: 2" in out
    assert f"f* = {F_STAR:.12g}" in out


def test_theory_json(capsys):
    assert main([*THEORY, "--json", "--dim", "5"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["counts"] == [30, 20, 3, 1]
    assert data["dim"] == 5
    assert data["alive"] == [True, True, True, False]
    assert data["margins"] == pytest.approx(MARGINS, abs=1e-10)
    assert data["objective"] == pytest.approx(F_STAR, abs=1e-10)
    assert data["cosines"][3] is None  # undefined where h_k = 0; JSON has no NaN
    assert data["num_samples"] == 54
    assert len(data["critical_regularization"]) == 4
    assert len(data["min_samples_to_survive"]) == 4
    assert data["min_samples_to_survive"][3] == 2


def test_theory_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "theory.png"
    assert main([*THEORY, "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"figure written to {path}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--lambda-w", "0"], r"`lambda_w` must be > 0; got 0\.0: .*no minimiser"),
        (["--lambda-h=-1e-3"], r"`lambda_h` must be > 0"),
        (["--dim", "2"], r"`dim` must be at least 3, the number of alive classes"),
        (["--counts", "5"], r"`counts` must describe at least 2 classes"),
        (["--counts", "5,0"], r"`counts` must be positive integers .* got 0 at index 1"),
    ],
)
def test_theory_bad_input(args, match, capsys):
    assert main([*THEORY, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ncgeom theory: error: ")
    assert re.search(match, err)


def test_unparsable_counts_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["theory", "--counts", "5,x", "--lambda-w", "1", "--lambda-h", "1"])
    assert info.value.code == 2
    assert "must be integers separated by commas or spaces" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "theory" in err and "verify" in err


def test_commands_table_is_extensible():
    assert set(COMMANDS) >= {"theory", "verify"}
    for command in COMMANDS.values():
        assert callable(command.add_arguments) and callable(command.run) and command.help


def test_python_dash_m():
    result = subprocess.run(
        [sys.executable, "-m", "ncgeom", *THEORY, "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["objective"] == pytest.approx(F_STAR, abs=1e-10)


# ---------------------------------------------------------------------------
# verify

SMALL = [
    *("--configs", "2", "--max-classes", "3", "--max-count", "6"),
    *("--seed", "3", "--max-iter", "5000"),
]


def test_verify_text(capsys):
    pytest.importorskip("ncgeom.solve")
    code = main(["verify", *SMALL])
    out = capsys.readouterr().out
    assert "2 random configurations, collapsed form, backend numpy" in out
    assert "worst objective gap" in out and "worst geometry gap" in out
    # The solver reaches the closed form on these small configurations: a
    # verify that reported them as failed would be wrong, not merely honest.
    assert "all configurations within the limits" in out
    assert code == 0


def test_verify_json_full_form(capsys):
    pytest.importorskip("ncgeom.solve")
    code = main(["verify", *SMALL, "--form", "full", "--json", "--backend", "array-api-strict"])
    data = json.loads(capsys.readouterr().out)
    assert data["form"] == "full" and data["backend"] == "array-api-strict"
    assert len(data["configs"]) == 2
    for row in data["configs"]:
        assert 2 <= len(row["counts"]) <= 3
        assert all(1 <= n <= 6 for n in row["counts"])
        assert row["nc1"] is not None  # the full form reports the within-class spread
    assert not data["failed"]
    assert code == 0


def test_verify_with_bias(capsys):
    pytest.importorskip("ncgeom.solve")
    code = main(["verify", *SMALL, "--bias", "--json", "--restarts", "2"])
    data = json.loads(capsys.readouterr().out)
    assert data["bias"] is True
    assert all(row["geometry"] is None for row in data["configs"])
    assert not data["failed"]
    assert code == 0


def test_verify_without_solver(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ncgeom.theory.solve", None)
    assert main(["verify", "--configs", "1"]) == 2
    assert "solver is unavailable" in capsys.readouterr().err


def test_verify_bad_options(capsys):
    pytest.importorskip("ncgeom.solve")
    assert main(["verify", "--configs", "0"]) == 2
    assert "`--configs` must be >= 1; got 0" in capsys.readouterr().err
    assert main(["verify", "--max-classes", "1"]) == 2
    assert "`--max-classes` must be >= 2" in capsys.readouterr().err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal():
    tty, pipe = _Terminal(), io.StringIO()
    for stream in (tty, pipe):
        bar = Progress(4, stream, width=8)
        bar.update(2, "worst objective gap 1.50e-12")
        bar.close()
    assert tty.getvalue() == "\r[####....] 2/4  worst objective gap 1.50e-12\n"
    assert pipe.getvalue() == ""


def test_installed_commands_join_and_broken_ones_warn(monkeypatch, capsys):
    import importlib.metadata

    from ncgeom import cli

    class Entry:
        def __init__(self, name, target):
            self.name, self.value, self._target = name, f"pkg:{name}", target

        def load(self):
            if isinstance(self._target, Exception):
                raise self._target
            return self._target

    def hello_arguments(parser):
        parser.add_argument("--who", default="world")

    def hello_run(args):
        print(f"hello {args.who}")
        return 0

    entries = [
        Entry("hello", cli.Command("say hello", hello_arguments, hello_run)),
        Entry("broken", ImportError("no module named nowhere")),
        Entry("theory", ImportError("never loaded: the built-in wins")),
    ]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: entries)
    with pytest.warns(
        RuntimeWarning,
        match=r"skips the command of entry point 'broken' .*ImportError: no module named nowhere",
    ):
        assert main(["hello", "--who", "ncgeom"]) == 0
    assert capsys.readouterr().out == "hello ncgeom\n"


# ---------------------------------------------------------------------------
# failures: one line, no traceback, output checked before work


def _raising(error: BaseException):
    def run(args):
        raise error

    return cli_module.Command("fails on purpose", lambda parser: None, run)


def test_unexpected_error_is_one_line_unless_debug(monkeypatch, capsys):
    monkeypatch.setitem(COMMANDS, "boom", _raising(RuntimeError("deep inside\nsecond line")))
    assert main(["boom"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "ncgeom boom: error: RuntimeError: deep inside second line "
        "(rerun with --debug for the traceback)\n"
    )
    for argv in (["--debug", "boom"], ["boom", "--debug"]):
        with pytest.raises(RuntimeError, match="deep inside"):
            main(argv)


def test_full_disk_names_the_file(monkeypatch, capsys):
    error = OSError(errno.ENOSPC, "No space left on device", "/data/out.png")
    monkeypatch.setitem(COMMANDS, "boom", _raising(error))
    assert main(["boom"]) == 1
    assert capsys.readouterr().err == (
        "ncgeom boom: error: cannot write /data/out.png: No space left on device\n"
    )
    monkeypatch.setitem(COMMANDS, "boom", _raising(MemoryError()))
    assert main(["boom"]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(["theory", "--counts", "3,2", "--lambda-w", "x", "--lambda-h", "1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--lambda-w" in err and "Traceback" not in err


def test_plot_to_a_folder_writes_nothing(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "figs"
    folder.mkdir()
    called = []
    monkeypatch.setattr(cli_module, "ufm_relu_optimum", lambda *a: called.append(a))
    assert main([*THEORY, "--plot", str(folder)]) == 2
    assert "`--plot` must name a file, not a folder" in capsys.readouterr().err
    assert not called  # checked before any work
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figs"]  # no figs.png


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("missing/fig.png", r"`--plot` must be in an existing folder; .*missing"),
        ("file.txt/fig.png", r"`--plot` must be in an existing folder; .*file\.txt"),
        ("fig.xyz", r"`--plot` must end in one of .*\.png.*got .*fig\.xyz"),
        ("", r"`--plot` must name a file, not a folder; got ''"),
    ],
)
def test_plot_path_is_checked_first(name, match, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("")
    path = str(tmp_path / name) if name else ""
    assert main([*THEORY, "--plot", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(match, err)


def test_unwritable_folder_is_reported(tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    assert main([*THEORY, "--plot", str(tmp_path / "fig.png")]) == 2
    err = capsys.readouterr().err
    assert "`--plot` must be writable; cannot create a file in" in err
    assert "Permission denied" in err


def test_plot_without_suffix_says_the_file_it_wrote(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main([*THEORY, "--plot", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
    assert f"figure written to {tmp_path / 'fig.png'}" in capsys.readouterr().out


def test_output_dir_check():
    with pytest.raises(ValueError, match=r"`--out` must name a folder; .* is a file"):
        check_output_dir(__file__, "--out")
    with pytest.raises(ValueError, match=r"`--out` must be inside a folder; .* is a file"):
        check_output_dir(f"{__file__}/sub", "--out")


def _option_helps():
    commands = available_commands()
    parser = cli_module._parser(commands)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, child in sub.choices.items():
        formatter = child._get_formatter()
        for action in child._actions:
            if action.option_strings and action.help is not argparse.SUPPRESS:
                text = formatter._expand_help(action)
                yield name, action.option_strings[0], text


def test_every_option_says_what_it_does_and_its_default():
    seen = set()
    for command, option, text in _option_helps():
        seen.add(command)
        if option == "-h":
            continue
        assert "(default: None)" not in text, (command, option, text)
        assert len(text.split()) >= 3, (command, option, text)
        assert "(default" in text or "(required)" in text, (command, option, text)
    assert {"theory", "verify"} <= seen


def test_theory_is_fast_with_twenty_thousand_classes(capsys):
    counts = ",".join(str(1 + (7919 * i) % 5000) for i in range(20_000))
    started = time.perf_counter()
    assert main(["theory", "--counts", counts, "--lambda-w", "1e-4", "--lambda-h", "1e-4"]) == 0
    elapsed = time.perf_counter() - started
    assert "K = 20000 classes" in capsys.readouterr().out
    assert elapsed < 6.0  # 12 s when every class re-validated all counts


def test_verify_refuses_huge_k_before_allocating(capsys):
    pytest.importorskip("ncgeom.solve")
    started = time.perf_counter()
    assert main(["verify", "--max-classes", "100000"]) == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - started < 5.0
    assert err.count("\n") == 1
    assert re.search(r"`--max-classes` 100000 would need up to [\d.]+ TiB", err)
    assert re.search(r"pass `--max-classes` \d+ or less", err)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--seed", "-1"], r"`--seed` must lie in \[0, 2\*\*63\); got -1"),
        (["--max-count", str(2**62), "--max-classes", "4"], r"`--max-count` \* `--max-classes`"),
        (["--form", "full", "--max-count", "10000000"], r"would need up to .*--max-count"),
    ],
)
def test_verify_numeric_options_are_checked(args, match, capsys):
    pytest.importorskip("ncgeom.solve")
    assert main(["verify", *args]) == 2
    assert re.search(match, capsys.readouterr().err)


class _Entry:
    def __init__(self, name, target):
        self.name, self.value, self._target = name, f"pkg_{name}:command", target

    def load(self):
        if isinstance(self._target, BaseException):
            raise self._target
        return self._target


def test_broken_command_entry_points_never_take_down_the_cli(monkeypatch, capsys):
    import importlib.metadata

    def bad_arguments(parser):
        raise RuntimeError("cannot add options")

    entries = [
        _Entry("function", lambda args: 0),
        _Entry("exits", SystemExit(3)),
        _Entry("options", cli_module.Command("bad options", bad_arguments, lambda a: 0)),
    ]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: entries)
    with pytest.warns(RuntimeWarning) as caught:
        assert main(THEORY) == 0
    messages = [str(w.message) for w in caught]
    assert len(messages) == 3
    assert any("'function'" in m and "must load an ncgeom.cli.Command" in m for m in messages)
    assert any("'exits'" in m and "SystemExit(3) raised at import" in m for m in messages)
    assert any("'options'" in m and "RuntimeError: cannot add options" in m for m in messages)
    assert "f* =" in capsys.readouterr().out


def test_counts_from_a_file(tmp_path, capsys):
    path = tmp_path / "counts.txt"
    path.write_text("30, 20\n3 1\n")
    assert (
        main(["theory", "--counts", f"@{path}", "--lambda-w", "2e-2", "--lambda-h", "2e-2"]) == 0
    )
    assert f"f* = {F_STAR:.12g}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(
            [
                "theory",
                "--counts",
                f"@{tmp_path / 'none.txt'}",
                "--lambda-w",
                "1",
                "--lambda-h",
                "1",
            ]
        )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read the counts file" in err
