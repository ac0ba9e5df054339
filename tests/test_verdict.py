"""The one vocabulary of metric names, and the verdict reports lead with."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest

from ncgeom import nc_report
from ncgeom.report import NCReport, theory_context
from ncgeom.theory import ufm_relu_optimum
from ncgeom.verdict import COLLAPSED_FRACTION, Verdict
from ncgeom.vocabulary import METRIC_NAMES, METRICS, PER_CLASS, label, per_class_label

COUNTS = [30, 20, 3, 1]


def optimum_report(objective: float | None = None, backend=None) -> NCReport:
    """The report of the optimum's own features, with its theory context.

    With `backend`, the optimum, its features and labels are on that backend.
    """
    on = {} if backend is None else {"xp": backend.xp, "device": backend.device}
    opt = ufm_relu_optimum(COUNTS, 2e-2, 2e-2, **on)
    y = np.repeat(np.arange(len(COUNTS)), COUNTS)
    if backend is None:
        features, labels = opt.means()[y], y
    else:
        labels = backend.asarray(y)
        features = backend.xp.take(opt.means(), labels, axis=0)
    report = nc_report((features, labels), opt.classifier(), theory=opt)
    return report.with_theory(opt, objective=objective)


def test_every_report_metric_and_field_comes_from_the_registry():
    assert NCReport.METRICS == METRIC_NAMES
    fields = {f.name for f in dataclasses.fields(NCReport)}
    assert set(METRIC_NAMES) <= fields
    for name in NCReport.PER_CLASS:
        assert name in PER_CLASS or name.rsplit("_", 1)[0] in PER_CLASS
    symbols = [metric.symbol for metric in METRICS.values()]
    assert len(set(symbols)) == len(symbols)  # one symbol, one metric


def test_labels_have_one_fixed_format():
    for name, metric in METRICS.items():
        assert label(name) == f"{name} ({metric.symbol})" == metric.label
    assert per_class_label("feature_norms") == "feature_norms (‖h_k‖)"
    with pytest.raises(KeyError, match=r"ncgeom\.vocabulary\.METRICS.*; got .NC2_H."):
        label("NC2_H")


def test_text_lists_every_metric_by_its_label_with_a_reason_for_each_dash():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=90)
    x = np.eye(3)[y] * 4 + 0.1 * rng.normal(size=(90, 3))
    text = str(nc_report((x, y)))
    for name in METRIC_NAMES:
        (line,) = [row for row in text.splitlines() if row.strip().startswith(label(name))]
        cells = line.split()
        if "-" in cells[2:5]:
            assert "  - " in line, line  # every dash has its reason
    assert "no classifier given" in text and "no theory given" in text


def test_verdict_numbers_match_the_json_and_the_formulas(backend):
    report = optimum_report(objective=0.75, backend=backend)
    saved = json.loads(json.dumps(report.to_dict()))
    verdict = saved["verdict"]
    f_star = 0.730155472976704  # docs test vector
    assert verdict["optimum"] == pytest.approx(f_star, rel=1e-12)
    assert verdict["gap"] == pytest.approx(0.75 - f_star, rel=1e-12)
    assert verdict["gap_percent"] == pytest.approx(100 * (0.75 - f_star) / f_star, rel=1e-12)
    n_total = sum(COUNTS)
    n_crit = n_total**2 * 2e-2 * 2e-2 * 4 / 3
    assert verdict["collapse_count"] == pytest.approx(n_crit, rel=1e-12)
    assert verdict["predicted_collapsed"] == [k for k, n in enumerate(COUNTS) if n <= n_crit]
    assert verdict["observed_collapsed"] == [3]
    assert verdict["collapsed_fraction"] == COLLAPSED_FRACTION
    assert all(c["as_predicted"] for c in verdict["classes"])
    for name, check in verdict["metrics"].items():
        assert name in METRICS and check["label"] == label(name)
        assert check["measured"] == saved[name]
        if check["distance"] is not None:
            assert check["distance"] == pytest.approx(abs(saved[name] - check["target"]))
            assert check["distance"] < 1e-9, name  # the optimum against itself
    assert verdict["metrics"]["nc1"]["target"] == 0.0
    # value metrics are evaluated at the optimum, e.g. ETF error of an orthogonal frame
    assert verdict["metrics"]["etf_error"]["target"] == pytest.approx(saved["etf_error"])
    text = str(report)
    assert f"gap {verdict['gap']:.4g} ({verdict['gap_percent']:.2f}% of f*)" in text
    assert "Predicted to collapse: class 3" in text and "as predicted" in text


def test_per_class_headers_are_unambiguous():
    text = str(optimum_report())
    header = next(row for row in text.splitlines() if row.split()[:2] == ["class", "n_k"])
    cells = header.split()
    assert len(cells) == len(set(cells))
    table = optimum_report().verdict().class_table().splitlines()[0]
    heads = [cell.strip() for cell in table.strip("|").split("|")]
    assert len(heads) == len(set(heads))


def test_without_theory_every_missing_number_has_a_reason():
    opt = ufm_relu_optimum(COUNTS, 2e-2, 2e-2)
    y = np.repeat(np.arange(4), COUNTS)
    verdict = Verdict.of(nc_report((opt.means()[y], y)))
    assert verdict.gap is None and verdict.gap_reason
    assert verdict.collapse_count is None and verdict.collapse_reason
    for check in verdict.metrics:
        if check.distance is None:
            assert check.reason, check.name


def test_theory_context_names_undefined_targets():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        context = theory_context(ufm_relu_optimum([5, 5], 0.5, 0.5))  # global collapse
    assert context["alive"] == [False, False]
    missing = [name for name, value in context["targets"].items() if value is None]
    assert missing and all(context["target_reasons"][name] for name in missing)


def test_docs_name_table_is_the_registry():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    documented = {}
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        if len(cells) == 4 and cells[0].strip("`") in METRICS:
            documented[cells[0].strip("`")] = (cells[1], cells[2])
    assert documented == {name: (m.symbol, m.words) for name, m in METRICS.items()}


def test_registry_text_fits_in_markdown_tables():
    for metric in METRICS.values():
        assert "|" not in metric.symbol + metric.words, metric.name


def test_docs_degenerate_table_is_the_registry():
    from pathlib import Path

    from ncgeom.metrics import DEGENERATE_METRICS, DEGENERATE_REASONS

    page = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()
    table = page[page.index("| geometry (the reason the report gives) | NaN |") :]
    rows = [line for line in table.split("\n\n")[0].splitlines()[2:]]
    documented = {}
    for row in rows:
        reason, names = (cell.strip() for cell in row.strip("|").split(" | "))
        documented[reason] = {name.strip("` ") for name in names.split(",")}
    registry = {}
    for flag, reason in DEGENERATE_REASONS.items():
        names = {name for name, needs in DEGENERATE_METRICS.items() if flag in needs}
        if names:
            registry[reason] = names
    assert documented == registry
