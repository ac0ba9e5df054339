"""Numbers and statements of the docs that no other test checks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ncgeom.solve import solve_ufm


def _geometry(sol) -> tuple[np.ndarray, float]:
    means = np.asarray(sol.means)
    norms = np.linalg.norm(means, axis=1)
    alive = norms > 1e-9 * norms.max()
    unit = means[alive] / norms[alive, None]
    cosines = np.abs(unit @ unit.T)
    np.fill_diagonal(cosines, 0)
    return norms, float(cosines.max())


@pytest.mark.parametrize(("dim", "restarts"), [(4, 8), (8, 32)])
def test_solver_with_a_bias_puts_the_largest_class_at_zero(dim, restarts):
    """docs/solver.md, "With a bias"."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sol = solve_ufm([30, 20, 3, 1], 2e-2, 2e-2, dim, bias=True, seed=0, restarts=restarts)
    norms, largest_cos = _geometry(sol)
    assert sol.converged
    assert norms[0] < 1e-9 * norms.max()  # the largest class at h = 0
    assert largest_cos == pytest.approx(0.78, abs=0.01)  # far from orthogonal


def test_solver_with_a_bias_on_the_page_example():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sol = solve_ufm([5000, 2000, 500, 100, 20], 5e-4, 1e-4, 5, bias=True, seed=0)
    norms, _ = _geometry(sol)
    assert norms[0] < 1e-9 * norms.max()


def test_cli_page_verify_example_stays_within_its_limits(capsys):
    """docs/cli.md, the `ncgeom verify` example."""
    from ncgeom.cli import main

    assert main(["verify", "--configs", "3", "--max-classes", "4", "--max-count", "20"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("3 random configurations, collapsed form, backend numpy: 3 converged")
    assert "all configurations within the limits" in out
    gaps = [float(line.split(": ")[1].split()[0]) for line in out.splitlines()[1:3]]
    assert gaps[0] < 1e-12 and gaps[1] < 1e-8


def test_theory_page_console_output_is_what_the_command_prints(capsys, tmp_path):
    """docs/theory.md, the worked example: every number as the command prints it."""
    from pathlib import Path

    from ncgeom.cli import main

    page = (Path(__file__).resolve().parents[1] / "docs" / "theory.md").read_text()
    command = "ncgeom theory --counts 5000,2000,500,100,20 --lambda-w 5e-3 --lambda-h 1e-3"
    start = page.index(f"$ {command} --plot theory.png\n")
    block = page[start : page.index("```", start)].splitlines()[1:]
    figure = tmp_path / "theory.png"
    assert main([*command.split()[1:], "--plot", str(figure)]) == 0
    printed = capsys.readouterr().out.replace(str(figure), "theory.png").splitlines()
    assert printed == block
