"""`ncgeom demo` through depth and minority collapse: the collapse preset, the depth report,
and the terminal-phase check."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from ncgeom.cli import main  # noqa: E402
from ncgeom.theory import ufm_relu_optimum  # noqa: E402
from ncgeom_torch.demo import (  # noqa: E402
    PRESETS,
    _build_model,
    preset_config,
    run_demo,
    terminal_check,
)


def critical_products(counts: list[int]) -> np.ndarray:
    """lambda_W lambda_H at which each class collapses: n_k (K-1) / (K N^2)."""
    n = np.asarray(counts, dtype=np.float64)
    k = n.size
    return n * (k - 1) / (k * n.sum() ** 2)


def test_the_collapse_preset_collapses_the_three_rare_classes_far_from_the_threshold():
    preset = PRESETS["collapse"]
    counts = list(preset["counts"])
    product = preset["lambda_w"] * preset["lambda_h"]
    critical = critical_products(counts)
    rare = np.asarray(counts) == min(counts)
    assert rare.sum() == 3
    # Rare classes: the product is at least 3x past their critical value (collapse);
    # the others: at least 3x below theirs (alive). No class near its threshold.
    assert np.all(product >= 3 * critical[rare])
    assert np.all(product <= critical[~rare] / 3)
    # The closed form agrees: zero norms exactly for the rare classes.
    norms = np.asarray(
        ufm_relu_optimum(counts, preset["lambda_w"], preset["lambda_h"]).feature_norms
    )
    np.testing.assert_array_equal(norms == 0, rare)


def test_terminal_check_at_the_optimum_and_away_from_it():
    counts, lam = [30, 20, 3, 1], 2e-2  # class 3 collapses at the optimum
    theory = ufm_relu_optimum(counts, lam, lam)
    assert np.asarray(theory.feature_norms)[3] == 0
    labels = np.repeat(np.arange(4), counts)
    features = np.asarray(theory.means())[labels]  # non-negative: ReLU passes them
    dim = features.shape[1]
    model = _build_model(dim, dim, 1, 4).double()
    with torch.no_grad():
        model.linear1.weight.copy_(torch.eye(dim, dtype=torch.float64))
        model.classifier.weight.copy_(torch.as_tensor(np.asarray(theory.classifier())))
    x, y = torch.as_tensor(features), torch.as_tensor(labels)
    at = terminal_check(model, x, y, theory, lam, lam)
    with torch.no_grad():  # the collapsed class's sample (h = 0, logits 0) is misclassified
        assert float((model(x).argmax(dim=1) == y).double().mean()) == 53 / 54
    assert at.reached, at.reasons
    assert at.kkt_residual < 1e-8 and at.train_accuracy_alive == 1.0 and at.grad_norm < 1e-6
    with torch.no_grad():
        model.classifier.weight.mul_(1.2)
    away = terminal_check(model, x, y, theory, lam, lam)
    assert not away.reached and away.kkt_residual > 0.02


@pytest.fixture(scope="module")
def short_collapse_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("collapse")
    config = preset_config(
        "collapse", dataset="synthetic", epochs=4, eval_every=2, width=16, out=str(out)
    )
    with pytest.warns(UserWarning, match="did not reach the terminal phase"):
        run_demo(config, progress=False)
    return out, json.loads((out / "report.json").read_text())


def test_short_collapse_run_reports_depth_and_warns(short_collapse_run):
    out, saved = short_collapse_run
    text = (out / "report.md").read_text()
    assert saved["config"]["preset"] == "collapse"
    assert saved["counts"] == list(PRESETS["collapse"]["counts"])
    # A short run is not in the terminal phase, and the report says so first.
    assert saved["terminal_phase"]["reached"] is False
    assert text.index("**Warning: training did not reach the terminal phase**") < text.index(
        "## Verdict"
    )
    assert saved["criteria"]["collapsed_fraction"] == 0.05
    # The rare classes are named as predicted to collapse, with the verdict on them.
    assert saved["final"]["verdict"]["predicted_collapsed"] == [7, 8, 9]
    assert "Minority collapse: the theorem collapses classes 7, 8, 9" in text
    # The depth report: every hidden layer, the progression sentence, the table, the figure.
    depth = saved["depth"]
    assert depth["layers"] == ["relu1", "relu2", "relu3"]
    assert json.loads((out / "depth.json").read_text())["layers"] == depth["layers"]
    sentence = depth["progression"]["sentence"]
    assert sentence in text and "Spearman" in sentence
    section = text.split("## Through depth", 1)[1]
    rows = [line for line in section.splitlines() if re.match(r"\| relu\d \|", line)]
    assert len(rows) == 3
    assert "](depth.png)" in text and (out / "depth.png").stat().st_size > 0
    # The last layer of the depth report is the classifier's input: its NC1 is the final one.
    assert depth["values"]["relu3"]["nc1"] == pytest.approx(saved["final"]["nc1"], rel=1e-9)


def test_command_line_preset_and_explicit_options(tmp_path, capsys):
    args = ["demo", "--dataset", "synthetic", "--epochs", "2", "--width", "16", "--no-plots"]
    out = tmp_path / "run"
    assert main([*args, "--preset", "collapse", "--lambda-w", "3e-3", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "warning: training did not reach the terminal phase" in captured.err
    config = json.loads((out / "report.json").read_text())["config"]
    assert config["preset"] == "collapse"
    assert config["lambda_w"] == 3e-3  # given explicitly: wins over the preset
    assert config["epochs"] == 2 and config["eval_every"] == PRESETS["collapse"]["eval_every"]
    assert config["lambda_h"] == PRESETS["collapse"]["lambda_h"]
    assert tuple(config["counts"]) == PRESETS["collapse"]["counts"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--preset", "nope", "--out", str(out)])
    assert exit_info.value.code == 2
    assert "argument --preset: invalid choice: 'nope'" in capsys.readouterr().err
