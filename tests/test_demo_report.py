"""What a reader of the demo's report.md learns, checked against report.json."""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from ncgeom.vocabulary import METRICS
from ncgeom_torch.demo import DemoConfig, run_demo


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    config = DemoConfig(dataset="synthetic", epochs=40, eval_every=20, width=32, out=str(out))
    with pytest.warns(UserWarning, match="did not reach the terminal phase"):  # 40 epochs
        run_demo(config, progress=False)
    return out, json.loads((out / "report.json").read_text())


def test_report_md_verdict_numbers_are_the_json_ones(demo_run):
    out, saved = demo_run
    text = (out / "report.md").read_text()
    verdict = saved["final"]["verdict"]
    assert verdict["optimum"] == pytest.approx(saved["objective_optimum"], rel=1e-12)
    assert verdict["gap"] == pytest.approx(verdict["objective"] - verdict["optimum"], rel=1e-12)
    expected = (
        f"Objective {verdict['objective']:.6g} against the optimum f* = "
        f"{verdict['optimum']:.6g}: gap {verdict['gap']:.4g} ({verdict['gap_percent']:.2f}% of f*)"
    )
    assert expected in text
    assert f"n_crit = {verdict['collapse_count']:.4g}" in text
    # the verdict leads: it comes before the history and per-class tables
    assert text.index("## Verdict") < text.index("## During training") < text.index("## Per class")
    for name, check in verdict["metrics"].items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {check['label']} |"))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        measured = saved["final"][name]
        assert cells[2] == ("-" if measured is None else f"{measured:.4g}")
        if cells[3] == "-":
            assert cells[4], name  # a reason for every dash
        else:
            assert float(cells[3]) == pytest.approx(check["distance"], rel=1e-3)


def test_report_md_names_metrics_from_the_registry_and_embeds_figures(demo_run):
    out, _ = demo_run
    text = (out / "report.md").read_text()
    labels = set(re.findall(r"^\| (\w+ \([^)]*\)) \|", text, flags=re.M))
    assert labels == {metric.label for metric in METRICS.values()}
    for name in ("metrics.png", "gram.png", "classes.png", "depth.png"):
        assert f"]({name})" in text and (out / name).stat().st_size > 0
    header = next(line for line in text.splitlines() if line.startswith("| class | n_k |"))
    heads = [cell.strip() for cell in header.strip("|").split("|")]
    assert len(heads) == len(set(heads)) == 8


def test_ncc_agreement_and_objective_are_measured_at_every_evaluation(demo_run):
    _, saved = demo_run
    for entry in saved["history"]:
        assert 0 <= entry["ncc_agreement"] <= 1
        assert entry["objective"] > saved["objective_optimum"]
    assert len(saved["objective_per_epoch"]) == saved["config"]["epochs"]
