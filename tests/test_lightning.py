"""NeuralCollapseCallback: one process and a 2-process DDP (gloo) fit equal nc_report to 1e-10."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning")

import torch
from lightning_ddp_fit import LAMBDA, K, Tiny, loader, trainer_for

from ncgeom import ClassStats, NCReport, nc_report
from ncgeom.theory import ufm_relu_optimum
from ncgeom_torch.lightning import NeuralCollapseCallback, default_labels

HERE = Path(__file__).resolve().parent


def reference(h: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, theory: bool) -> NCReport:
    stats = ClassStats.from_features(h.double(), y, K)
    optimum = None
    if theory:
        optimum = ufm_relu_optimum(stats.counts.tolist(), LAMBDA, LAMBDA)
    return nc_report(stats, weight.double(), theory=optimum)


def assert_matches(got: dict, want: NCReport, tol: float = 1e-10) -> None:
    assert got["counts"] == list(want.counts)
    compared = 0
    for metric in NCReport.METRICS:
        value, expected = got[metric], getattr(want, metric)
        assert (value is None) == (expected is None), metric
        if expected is not None:
            assert abs(value - expected) <= tol * max(1.0, abs(expected)), metric
            compared += 1
    assert compared >= 10


def test_one_process_fit_logs_and_matches_nc_report(tmp_path: Path) -> None:
    model = Tiny()
    callback = NeuralCollapseCallback(K, lambda_w=LAMBDA, lambda_h=LAMBDA)
    trainer = trainer_for(tmp_path, callback, max_epochs=2)
    trainer.fit(model, loader())
    assert callback.layer is model.head  # the input of the last linear layer
    assert [epoch for epoch, _ in callback.history] == [0, 1]
    h, y = model.features("train", 1)
    want = reference(h, y, model.head.weight.detach(), theory=True)
    assert_matches(callback.history[-1][1], want)
    assert callback.last_report.gof_error == pytest.approx(want.gof_error, rel=1e-10)
    # every metric reaches the logger, once an epoch
    assert trainer.callback_metrics["nc/nc1"].item() == pytest.approx(want.nc1, rel=1e-6)
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    logged = [row for row in rows if row.get("nc/nc1")]
    assert len(logged) == 2 and "nc/gof_error" in rows[0]
    saved = json.loads(callback.report_path.read_text())
    assert saved["layer"] == "head" and len(saved["history"]) == 2
    assert (callback.report_path.parent / "neural_collapse.md").exists()


def test_validation_stage_every_second_epoch(tmp_path: Path) -> None:
    model = Tiny()
    callback = NeuralCollapseCallback(
        K, layer="head", stage="validate", every_n_epochs=2, report_dir=tmp_path / "nc"
    )
    trainer = trainer_for(tmp_path, callback, max_epochs=3, num_sanity_val_steps=1)
    trainer.fit(model, loader(), loader(48, seed=1))
    assert [epoch for epoch, _ in callback.history] == [1]
    h, y = model.features("validate", 1)
    assert h.shape[0] == 48
    # the weight of epoch 1's validation is not the final one: compare the statistics
    got = callback.history[0][1]
    want = nc_report(ClassStats.from_features(h, y, K))
    assert got["nc1"] == pytest.approx(want.nc1, rel=1e-10)
    assert got["cdnv"] == pytest.approx(want.cdnv, rel=1e-10)
    assert (tmp_path / "nc" / "neural_collapse.json").exists()


def test_labels_and_arguments_are_checked() -> None:
    assert default_labels({"x": 1, "target": 2}) == 2
    assert default_labels((1, 2, 3)) == 2
    with pytest.raises(ValueError, match="keys"):
        default_labels({"x": 1})
    with pytest.raises(ValueError, match="stage"):
        NeuralCollapseCallback(K, stage="test")
    with pytest.raises(ValueError, match="together"):
        NeuralCollapseCallback(K, lambda_w=1e-3)
    with pytest.raises(ValueError, match=r"no nn\.Linear"):
        NeuralCollapseCallback(K).setup(None, torch.nn.ReLU(), "fit")


def test_two_process_ddp_fit_matches_nc_report_of_all_ranks(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent / "plugins"), str(HERE)]))
    env.pop("MASTER_PORT", None)
    out = subprocess.run(
        [sys.executable, str(HERE / "lightning_ddp_fit.py"), str(tmp_path), "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["history"] == ranks[1]["history"]  # the same report on every rank
    assert torch.equal(ranks[0]["weight"], ranks[1]["weight"])
    h = torch.cat([rank["features"] for rank in ranks])
    y = torch.cat([rank["labels"] for rank in ranks])
    assert h.shape[0] == 96  # each rank saw half of the samples
    want = reference(h, y, ranks[0]["weight"], theory=True)
    assert_matches(ranks[0]["history"][-1][1], want)
    saved = json.loads((tmp_path / "neural_collapse.json").read_text())
    assert saved["history"][-1]["report"]["nc1"] == pytest.approx(want.nc1, rel=1e-10)
