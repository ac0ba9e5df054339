"""`ncgeom theory` explains its columns, the threshold at fixed N and the inverse question."""

from __future__ import annotations

import json
import re
from fractions import Fraction

import pytest

from ncgeom.cli import main

COUNTS, LW, LH = [5000, 2000, 500, 100, 20], 5e-3, 1e-3


def alive(m: int, rest: int, k: int) -> bool:
    """Class with m samples next to `rest` others survives: m (K-1) > (rest+m)^2 K lw lh."""
    return m * (k - 1) > (rest + m) ** 2 * k * Fraction(LW) * Fraction(LH)


def test_survival_intervals_are_exact(capsys):
    args = ["theory", "--counts", ",".join(map(str, COUNTS)), "--lambda-w", str(LW)]
    assert main([*args, "--lambda-h", str(LH)]) == 0
    out = capsys.readouterr().out
    spans = re.findall(
        r"class (\d+) \((alive|collapsed) with n_k = (\d+)\): "
        r"survives for n_k in \[(\d+), (\d+)\]",
        out,
    )
    assert len(spans) == len(COUNTS)
    total, k = sum(COUNTS), len(COUNTS)
    for index, state, count, low, high in spans:
        rest = total - COUNTS[int(index)]
        low, high = int(low), int(high)
        assert alive(low, rest, k) and alive(high, rest, k)
        assert not alive(low - 1, rest, k) and not alive(high + 1, rest, k)
        assert (state == "alive") == (low <= int(count) <= high)
    assert "at this total N = 7620" in out and "inverse question" in out
    for column in ("n_k", "alive", "M_k", "||h_k||", "||w_k||", "cos(w_k,h_k)"):
        assert f"{column} = " in out.replace("\n", " ")


def test_json_has_the_intervals(capsys):
    args = ["theory", "--counts", "30,20,3,1", "--lambda-w", "2e-2", "--lambda-h", "2e-2"]
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["survival_interval"][3][0] == data["min_samples_to_survive"][3] == 2


@pytest.mark.parametrize("option", ["--lambda-w", "--lambda-h", "--json"])
def test_theory_help_explains_options(option, capsys):
    with pytest.raises(SystemExit):
        main(["theory", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert option in text
    assert "summed over all N" in text and "survival_interval" in text
