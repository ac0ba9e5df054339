"""`ncgeom theory` explains its columns, the threshold at fixed N and the inverse question."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
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


# ---------------------------------------------------------------------------
# survival intervals: closed form, exact at the integer ends, fast at any lambdas


def survives(m: int, rest: int, k: int, lw: float, lh: float) -> bool:
    """m (K-1) > (rest + m)^2 K lw lh, in exact rationals (the lambdas' binary values)."""
    return m * (k - 1) > (rest + m) ** 2 * k * Fraction(lw) * Fraction(lh)


def brute_force_interval(rest: int, k: int, lw: float, lh: float) -> tuple[int, int] | None:
    """Every count tried, 1 up to past the upper root, which lies below (K-1)/(K lw lh)."""
    p, q = (Fraction(lw) * Fraction(lh)).as_integer_ratio()
    bound = (k - 1) * q // (k * p) + 2
    alive_counts = [m for m in range(1, bound + 1) if m * (k - 1) * q > (rest + m) ** 2 * k * p]
    return (alive_counts[0], alive_counts[-1]) if alive_counts else None


def assert_exact_ends(span, rest: int, k: int, lw: float, lh: float) -> None:
    low, high = span
    assert survives(low, rest, k, lw, lh) and survives(high, rest, k, lw, lh)
    assert low == 1 or not survives(low - 1, rest, k, lw, lh)
    assert not survives(high + 1, rest, k, lw, lh)


def test_survival_intervals_match_a_brute_force_count():
    from ncgeom.integrations.cli import _survival_intervals

    rng = np.random.default_rng(18)
    seen_none = seen_span = 0
    for _ in range(150):
        k = int(rng.integers(2, 7))
        counts = [int(n) for n in rng.integers(1, 80, size=k)]
        lw = float(10.0 ** rng.uniform(-1.5, -0.5))
        lh = float(10.0 ** rng.uniform(-1.5, -0.5))
        spans = _survival_intervals(counts, lw, lh)
        for i, span in enumerate(spans):
            expected = brute_force_interval(sum(counts) - counts[i], k, lw, lh)
            assert span == expected, (counts, lw, lh, i)
            seen_none += span is None
            seen_span += span is not None
    assert seen_none > 20 and seen_span > 20  # both outcomes exercised


def test_survival_interval_ends_at_integer_roots():
    from ncgeom.integrations.cli import _survival_intervals

    # K = 2 and lw lh = 1/32 (exact binary values): class k is alive iff
    # (R + m)^2 < 16 m. With R = 3: (m - 1)(m - 9) < 0, integer roots, both
    # excluded by the strict inequality: [2, 8].
    assert _survival_intervals([3, 7], 0.25, 0.125)[1] == (2, 8)
    # lw lh = 1/16, R = 2: (m - 2)^2 < 0, a double root: no count survives.
    assert _survival_intervals([2, 5], 0.25, 0.25)[1] is None
    # lw lh = 1/16, R = 1: m^2 - 6 m + 1 < 0, m in (0.17, 5.83).
    assert _survival_intervals([1, 1], 0.25, 0.25) == [(1, 5), (1, 5)]
    for counts, lw, lh in (([3, 7], 0.25, 0.125), ([2, 5], 0.25, 0.25), ([1, 1], 0.25, 0.25)):
        assert _survival_intervals(counts, lw, lh)[1] == brute_force_interval(counts[0], 2, lw, lh)


def test_tiny_weight_decays_are_fast_and_exact(capsys):
    lw = lh = 3e-12
    started = time.perf_counter()
    assert main(["theory", "--counts", "10,20", "--lambda-w", str(lw), "--lambda-h", str(lh)]) == 0
    assert time.perf_counter() - started < 5.0  # 22 to 45 s when it stepped one count at a time
    out = capsys.readouterr().out
    ends = re.findall(r"survives for n_k in \[(\d+), (\d+) \(beyond 2\*\*63 - 1\)\]", out)
    assert len(ends) == 2
    for (low, high), rest in zip(ends, (20, 10), strict=True):
        assert int(high) > 2**63 - 1
        assert_exact_ends((int(low), int(high)), rest, 2, lw, lh)
    assert main(["theory", "--counts", "10,20", "--lambda-w", str(lw), "--lambda-h", str(lh),
                 "--json"]) == 0  # fmt: skip
    data = json.loads(capsys.readouterr().out)
    assert data["survival_interval"] == [[int(a), int(b)] for a, b in ends]


@pytest.mark.parametrize(("lw", "lh"), [(3e-12, 3e-12), (1e-4, 1e-5), (2e-3, 1e-3)])
def test_ten_thousand_classes_in_under_a_second(lw, lh):
    from ncgeom.integrations.cli import _survival_intervals

    counts = [1 + (7919 * i) % 20_000 for i in range(10_000)]  # 10,000 distinct counts
    started = time.perf_counter()
    spans = _survival_intervals(counts, lw, lh)
    assert time.perf_counter() - started < 1.0
    total, k = sum(counts), len(counts)
    for i in range(0, k, 997):
        rest = total - counts[i]
        if spans[i] is None:  # none survives: not even at the vertex of the quadratic
            vertex = max(1, int((k - 1) / (2 * k * Fraction(lw) * Fraction(lh))) - rest)
            assert not any(survives(m, rest, k, lw, lh) for m in (vertex - 1, vertex, vertex + 1))
        else:
            assert_exact_ends(spans[i], rest, k, lw, lh)


def test_narrow_interval_far_from_zero_is_exact():
    # 4 c R just below 1 (c = K lw lh / (K-1)): the float discriminant rounds to
    # 0 while the exact interval is 2.9e9 counts wide, 1.5e18 from zero.
    from ncgeom.integrations.cli import _survival_intervals

    rest = (2**62 - 1) // 3
    counts = [rest // 2, rest - rest // 2, 1]
    lw, lh = 2.0**-32, 2.0**-31
    started = time.perf_counter()
    span = _survival_intervals(counts, lw, lh)[2]
    assert time.perf_counter() - started < 1.0
    assert span is not None and span[1] - span[0] > 10**9
    assert_exact_ends(span, rest, 3, lw, lh)


def test_theory_answers_the_narrow_interval_quickly():
    rest = (2**62 - 1) // 3
    counts = f"{rest // 2},{rest - rest // 2},1"
    result = subprocess.run(
        [sys.executable, "-m", "ncgeom", "theory", "--counts", counts,
         "--lambda-w", repr(2.0**-32), "--lambda-h", repr(2.0**-31), "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    low, high = data["survival_interval"][2]
    assert data["min_samples_to_survive"][2] == low
    assert_exact_ends((low, high), rest, 3, 2.0**-32, 2.0**-31)
