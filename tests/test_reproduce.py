"""`ncgeom reproduce`: data, models, the sweep criterion, and a tiny end-to-end run."""

from __future__ import annotations

import io
import json
import random
import socket
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

import torch

from ncgeom.cli import main
from ncgeom.loss import ufm_objective
from ncgeom_torch.reproduce import (
    Preset,
    RunSpec,
    _evaluate,
    _plan,
    _Reporter,
    _train_all,
    run_reproduce,
    train_run,
)
from ncgeom_torch.reproduce_data import (
    build_model,
    imbalance_counts,
    load_pool,
    training_subset,
)

RUN_KEYS = {
    "dataset",
    "counts",
    "lambda_w",
    "lambda_h",
    "epochs",
    "train_accuracy",
    "objective",
    "optimum",
    "nc1",
    "gof_error",
    "classifier_gram_error",
    "logit_structure_error",
    "orthogonality_error",
}
SWEEP_KEYS = {
    "lambda_w",
    "lambda_h",
    "counts",
    "predicted_alive",
    "measured_norms",
    "predicted_norms",
}

TINY = Preset(
    "tiny",
    digits_head=20,
    digits_profiles=(("step", 10.0),),
    digits_epochs=6,
    mnist1d_head=20,
    mnist1d_profiles=(("longtail", 10.0),),
    mnist1d_epochs=1,
    mnist1d_batch=64,
    width=16,
    sweep_head=20,
    sweep_factors=(0.5, 3.0),
    sweep_epochs=6,
    seeds=1,
    evals=3,
)


# ----------------------------------------------------------------------------- data


def test_imbalance_profiles_give_the_documented_counts():
    assert imbalance_counts(170, "balanced") == [170] * 10
    assert imbalance_counts(170, "step", 100) == [170] * 5 + [2] * 5
    assert imbalance_counts(9, "step", 3, num_classes=3) == [9, 9, 3]
    long_tail = imbalance_counts(1000, "longtail", 100)
    expected = [round(1000 * 100 ** (-k / 9)) for k in range(10)]
    assert long_tail == expected and long_tail[0] == 1000 and long_tail[-1] == 10


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"head": 0, "profile": "step"}, "`head`"),
        ({"head": 5, "profile": "zipf"}, "`profile`.*'zipf'"),
        ({"head": 5, "profile": "step", "ratio": 0.5}, "`ratio`.*0.5"),
        ({"head": 5, "profile": "step", "num_classes": 1}, "`num_classes`.*1"),
    ],
)
def test_imbalance_counts_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        imbalance_counts(**kwargs)


def test_mnist1d_is_generated_offline_deterministically_and_keeps_global_rngs(monkeypatch):
    pytest.importorskip("mnist1d")

    def no_network(*args, **kwargs):
        raise AssertionError("MNIST-1D must be generated without the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    np.random.seed(123)  # noqa: NPY002
    random.seed(123)
    expected_np, expected_py = np.random.random(), random.random()  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002
    random.seed(123)
    x, y = load_pool("mnist1d", 7, seed=5)
    assert (np.random.random(), random.random()) == (expected_np, expected_py)  # noqa: NPY002
    assert x.shape == (70, 40) and x.dtype == np.float32
    assert np.bincount(y).tolist() == [7] * 10
    again, _ = load_pool("mnist1d", 7, seed=5)
    other, _ = load_pool("mnist1d", 7, seed=6)
    np.testing.assert_array_equal(x, again)
    assert not np.array_equal(x, other)


def test_load_pool_and_subset_check_their_arguments():
    with pytest.raises(ValueError, match=r"`dataset`.*'cifar'"):
        load_pool("cifar", 5)
    with pytest.raises(ValueError, match=r"`per_class`.*1000"):
        load_pool("digits", 1000)
    x, y = load_pool("digits", 10)
    sub_x, sub_y = training_subset(x, y, [10, 1, 2, 3, 4, 5, 6, 7, 8, 9], seed=1)
    assert np.bincount(sub_y).tolist() == [10, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    # every row of the subset is a row of the pool with the same label
    index = {row.tobytes(): label for row, label in zip(x, y, strict=True)}
    assert all(index[row.tobytes()] == label for row, label in zip(sub_x, sub_y, strict=True))
    with pytest.raises(ValueError, match=r"`counts` for class 0"):
        training_subset(x, y, [500] + [1] * 9)


@pytest.mark.parametrize(("dataset", "dim"), [("digits", 64), ("mnist1d", 40)])
def test_models_have_relu_features_and_a_bias_free_classifier(dataset, dim):
    model = build_model(dataset, 24)
    body, classifier = model[0], model[1]
    assert classifier.bias is None and tuple(classifier.weight.shape) == (10, 24)
    features = body(torch.randn(8, dim))
    assert features.shape == (8, 24) and bool((features >= 0).all())
    assert isinstance(body[-1], torch.nn.ReLU)
    with pytest.raises(ValueError, match=r"`width`.*4"):
        build_model(dataset, 4)


# ----------------------------------------------------------------------------- objective


def test_reported_objective_is_the_ufm_objective_of_the_library():
    counts = (6, 4, 2)
    spec = RunSpec("t", "digits", "step", 3.0, counts, 2e-3, 5e-3, width=12)
    model = build_model("digits", 12, 3)
    gen = torch.Generator().manual_seed(0)
    inputs = torch.rand(12, 64, generator=gen)
    labels = torch.tensor([0] * 6 + [1] * 4 + [2] * 2)
    from ncgeom.theory import ufm_relu_optimum

    result = _evaluate(spec, model, inputs, labels, ufm_relu_optimum(counts, 2e-3, 5e-3))
    with torch.no_grad():
        features = model[0](inputs).double()
    expected = ufm_objective(
        model[1].weight.detach().double().numpy(), features.numpy(), labels.numpy(), 2e-3, 5e-3
    )
    np.testing.assert_allclose(result["objective"], float(expected), rtol=1e-6)


def test_mini_batch_penalty_averages_to_the_full_sample_feature_term():
    # The training loss carries lambda_H * (N/B) * sum over the batch: over a
    # partition of the N samples into batches its mean is lambda_H * sum over all.
    from ncgeom_torch import ufm_penalty

    gen = torch.Generator().manual_seed(1)
    features = torch.rand(12, 5, dtype=torch.float64, generator=gen)
    weight = torch.zeros(3, 5, dtype=torch.float64)
    batches = [
        ufm_penalty(weight, chunk, lambda_w=0.0, lambda_h=0.3, num_samples=12)
        for chunk in torch.split(features, 4)
    ]
    full = 0.5 * 0.3 * float((features**2).sum())
    np.testing.assert_allclose(float(sum(batches) / len(batches)), full, rtol=1e-12)


# ----------------------------------------------------------------------------- runs


def test_train_run_is_deterministic_on_cpu_and_checks_its_spec():
    counts = tuple(imbalance_counts(12, "step", 4))
    x, y = training_subset(*load_pool("digits", 12), counts)
    spec = RunSpec("d", "digits", "step", 4.0, counts, 1e-3, 1e-3, epochs=4, width=16, evals=2)
    first, second = train_run(spec, x, y), train_run(spec, x, y)
    assert first["measured_norms"] == second["measured_norms"]
    assert first["objective"] == second["objective"]
    assert [e["epoch"] for e in first["history"]] == [1, 2, 4]
    with pytest.raises(ValueError, match=r"`warmup`.*1.5"):
        train_run(RunSpec("d", "digits", "step", 4.0, counts, 1e-3, 1e-3, warmup=1.5), x, y)
    with pytest.raises(ValueError, match=r"`setting`.*'adam'"):
        train_run(RunSpec("d", "digits", "step", 4.0, counts, 1e-3, 1e-3, setting="adam"), x, y)
    with pytest.raises(ValueError, match=r"`y` must hold"):
        train_run(spec, x[:-1], y[:-1])


def test_tiny_suite_writes_the_report_schema_and_figures(tmp_path):
    pytest.importorskip("mnist1d")
    summary = run_reproduce(TINY, out=tmp_path, progress=False)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert [run["experiment"] for run in saved["runs"]] == ["a", "a", "plain", "controlled"]
    assert [run["dataset"] for run in saved["runs"]] == ["digits", "mnist1d", "digits", "digits"]
    for run in saved["runs"]:
        assert RUN_KEYS <= run.keys()
        assert sum(run["counts"]) > 0 and 0.0 <= run["train_accuracy"] <= 1.0
    assert saved["runs"][0]["counts"] == imbalance_counts(20, "step", 10)
    assert saved["runs"][2]["optimum"] is None  # plain weight decay: no closed form
    # two starts x two points, the balanced start with class-balanced cross-entropy first
    sweep = saved["threshold_sweep"]
    assert [(p["group"], p["balanced_start"]) for p in sweep] == [
        ("standard", 0.0), ("standard", 0.0), ("balanced", 0.3), ("balanced", 0.3)
    ]  # fmt: skip
    for point in sweep:
        assert SWEEP_KEYS <= point.keys() and len(point["measured_norms"]) == 10
        assert {"terminal", "outcomes", "kkt_residual", "grad_norm", "alignment"} <= point.keys()
    # the second point is 3x the minority's critical lambda: minority predicted collapsed
    assert sweep[0]["predicted_alive"] == [True] * 10
    assert sweep[1]["predicted_alive"] == [True] * 5 + [False] * 5
    assert all(check["objective_gap"] < 1e-6 for check in saved["ufm"])
    assert {"criteria", "threshold", "alignment", "claims", "not_terminal", "machine"} <= set(
        saved
    )
    assert {"fitted_over_predicted", "ci", "seeds", "method"} <= saved["threshold"].keys()
    assert {"exponent", "ci"} <= saved["alignment"].keys()
    # six epochs reach no terminal phase: every run is reported apart, none is pooled
    trained = len(saved["runs"]) - 1 + len(sweep)  # the plain run has no UFM+ residual
    assert len(saved["not_terminal"]) == trained
    assert saved["threshold"]["pairs"] == 0
    text = (tmp_path / "report.md").read_text()
    assert text.split("\n## ")[1].startswith("Claims")
    for path in summary["files"][2:]:
        name = Path(path).name
        assert (tmp_path / name).stat().st_size > 0 and f"![{name}]({name})" in text
    assert "## Runs that missed the terminal phase" in text and "| run | seed |" in text


def test_parallel_jobs_give_the_runs_of_one_process_in_plan_order():
    pytest.importorskip("mnist1d")
    plan = _plan(TINY, 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as run_reproduce trains, and as each job does
    try:
        serial, _ = _train_all(plan, TINY, 3, "cpu", False, jobs=1)
    finally:
        torch.set_num_threads(threads)
    parallel, _ = _train_all(plan, TINY, 3, "cpu", False, jobs=2)
    assert serial.keys() == parallel.keys()
    for kind in serial:
        assert [r["name"] for r in serial[kind]] == [r["name"] for r in parallel[kind]]
        for one, two in zip(serial[kind], parallel[kind], strict=True):
            assert one["measured_norms"] == two["measured_norms"]
            assert one["objective"] == two["objective"]
            assert one["history"] == two["history"]
    with pytest.raises(ValueError, match=r"`jobs`.*0"):
        run_reproduce(TINY, jobs=0)
    with pytest.raises(ValueError, match=r"`jobs`.*True"):
        run_reproduce(TINY, jobs=True)


def test_progress_without_a_terminal_logs_a_line_every_five_percent():
    stream = io.StringIO()
    reporter = _Reporter(200, stream)
    reporter.start("run a")
    for done in range(0, 201, 2):
        reporter.to(done)
    lines = stream.getvalue().splitlines()
    assert [line.split("]")[0] for line in lines] == [f"[{p:3d}%" for p in range(0, 101, 5)]
    assert all(line.endswith("run a") for line in lines)
    silent = io.StringIO()
    quiet = _Reporter(10, silent, enabled=False)
    quiet.to(10)
    assert silent.getvalue() == ""


def test_command_line_checks_its_options(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["reproduce", "--preset", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err
    assert main(["reproduce", "--device", "nonsense"]) == 2
    assert "`--device` must be a torch device" in capsys.readouterr().err
    # an option of the paper preset with another preset is an error, not ignored
    assert main(["reproduce", "--preset", "quick", "--data-root", str(tmp_path)]) == 2
    assert "`--data-root` applies to --preset paper only" in capsys.readouterr().err
    assert main(["reproduce", "--epochs", "3"]) == 2
    assert "`--epochs` applies to --preset paper only" in capsys.readouterr().err
    assert main(["reproduce", "--preset", "paper", "--jobs", "2"]) == 2
    assert "`--jobs` applies to --preset quick and full only" in capsys.readouterr().err
    assert main(["reproduce", "--jobs", "0", "--out", str(tmp_path / "j")]) == 2
    assert "`--jobs` must be an integer >= 1; got 0" in capsys.readouterr().err
    # the paper preset is dispatched: without a local copy of CIFAR it says what is needed
    assert main(["reproduce", "--preset", "paper", "--out", str(tmp_path / "p")]) == 2
    assert "`--data-root` is required" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"`seed`.*-1"):
        run_reproduce("quick", seed=-1)
    with pytest.raises(ValueError, match=r"`preset`.*'huge'"):
        run_reproduce("huge")


# ----------------------------------------------------------------------------- presets (slow)


@pytest.mark.slow
def test_quick_preset_fits_a_threshold_within_ten_minutes(tmp_path):
    summary = run_reproduce("quick", out=tmp_path, progress=False)
    assert summary["threshold"]["seeds"] >= 2
    assert summary["threshold"]["fitted_over_predicted"] is not None
    assert summary["train_seconds"] < 600
