"""`ncgeom demo`: a short run writes every output and its metrics fall."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from ncgeom.cli import main
from ncgeom_torch.demo import DemoConfig, default_counts, load_dataset, run_demo


def test_default_counts_fall_geometrically_to_a_tenth():
    counts = default_counts(178, 10)
    assert counts[0] == 178 and counts[-1] == round(17.8)
    ratios = np.array(counts[1:]) / np.array(counts[:-1])
    np.testing.assert_allclose(ratios, 0.1 ** (1 / 9), atol=0.03)


@pytest.mark.parametrize("dataset", ["digits", "synthetic"])
def test_datasets_give_the_requested_counts(dataset):
    pytest.importorskip("sklearn") if dataset == "digits" else None
    x, y, counts = load_dataset(dataset, None, 0.1, seed=3)
    assert x.dtype == np.float32 and x.ndim == 2 and len(x) == len(y)
    np.testing.assert_array_equal(np.bincount(y, minlength=10), counts)


def test_short_run_writes_every_file_and_metrics_fall(tmp_path):
    config = DemoConfig(dataset="synthetic", epochs=60, eval_every=20, width=64, out=str(tmp_path))
    with pytest.warns(UserWarning, match="did not reach the terminal phase"):  # 60 epochs
        summary = run_demo(config, progress=False)
    for name in (
        "report.json",
        "report.md",
        "depth.json",
        "metrics.png",
        "gram.png",
        "classes.png",
        "depth.png",
    ):
        path = tmp_path / name
        assert path.exists() and path.stat().st_size > 0, name
    saved = json.loads((tmp_path / "report.json").read_text())
    history = saved["history"]
    assert [entry["epoch"] for entry in history] == [1, 20, 40, 60]
    assert history[-1]["nc1"] < history[0]["nc1"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert saved["counts"] == summary["counts"]
    assert len(history[-1]["margins_predicted"]) == 10
    assert "| nc1 (NC1) |" in (tmp_path / "report.md").read_text()


def test_command_line_runs_and_checks_its_options(tmp_path, capsys):
    args = [
        "demo",
        "--dataset",
        "synthetic",
        "--epochs",
        "3",
        "--eval-every",
        "1",
        "--width",
        "16",
    ]
    assert main([*args, "--no-plots", "--out", str(tmp_path)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path), "--counts", "5,5"]) == 2
    assert "`--counts` must give 10 classes" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path), "--lambda-w", "0"]) == 2
    assert "`--lambda-w` must be a finite number > 0; got 0.0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (
            ["--device", "gpu"],
            r"`--device` must be a torch device such as cpu, cuda or cuda:1; got 'gpu'",
        ),
        (["--device", "cuda:99"], r"`--device` 'cuda:99' (is not available|does not exist)"),
        (["--device", "cpu:5"], r"`--device` 'cpu:5' does not exist: torch has one CPU device"),
        (["--device", "meta"], r"`--device` 'meta' holds no data"),
    ],
)
def test_bad_device_is_one_line_before_training(extra, match, tmp_path, capsys):
    import torch

    if extra[1].startswith("cuda") and torch.cuda.device_count() > 99:
        pytest.skip("a machine with 100 GPUs")
    args = ["demo", "--dataset", "synthetic", "--epochs", "2", "--out", str(tmp_path / "o")]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(match, err)
    assert not (tmp_path / "o").exists()  # nothing trained, nothing written


def test_cuda_without_cuda_says_so(monkeypatch):
    import torch

    from ncgeom_torch.demo import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        ValueError, match=r"`device` 'cuda' is not available: this torch .*; use cpu"
    ):
        check_device("cuda")


def test_out_that_is_a_file_is_refused_first(tmp_path, capsys):
    target = tmp_path / "report.txt"
    target.write_text("keep me")
    args = ["demo", "--dataset", "synthetic", "--epochs", "2", "--out", str(target)]
    assert main(args) == 2
    assert "`--out` must name a folder" in capsys.readouterr().err
    assert target.read_text() == "keep me"


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--lambda-w", "1e300"], r"training diverged: the objective is inf after epoch 1"),
        (["--lr", "1e30"], r"training diverged: the network's outputs hold NaN or Inf"),
    ],
)
def test_diverging_training_names_the_settings(extra, match, tmp_path, capsys):
    args = ["demo", "--dataset", "synthetic", "--epochs", "3", "--width", "16", "--no-plots"]
    assert main([*args, "--out", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(match, err)
    assert "lower `lambda_w`" in err and "or `lr`" in err
    assert not (tmp_path / "out").exists()  # no report of a diverged run
