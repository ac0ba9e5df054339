"""The `ncgeom` command: theory table, JSON, figure, verify, errors."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import pytest

from ncgeom._progress import Progress
from ncgeom.cli import COMMANDS, main

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
    assert "comma-separated integers" in capsys.readouterr().err


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
    assert code == (0 if "all configurations within the limits" in out else 1)


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
    assert code == (1 if data["failed"] else 0)


def test_verify_with_bias(capsys):
    pytest.importorskip("ncgeom.solve")
    code = main(["verify", *SMALL, "--bias", "--json", "--restarts", "2"])
    data = json.loads(capsys.readouterr().out)
    assert data["bias"] is True
    assert all(row["geometry"] is None for row in data["configs"])
    assert code == (1 if data["failed"] else 0)


def test_verify_without_solver(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ncgeom.solve", None)
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
