"""The PyTorch plugin: FeatureTap, NCTracker, the UFM+ regulariser, and conformance."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
if str(PLUGINS) not in sys.path:
    sys.path.insert(0, str(PLUGINS))

import ncgeom_torch  # noqa: E402
from ncgeom import ClassStats, nc_report  # noqa: E402
from ncgeom.report import NCReport  # noqa: E402
from ncgeom.testing.conformance import CHECKS, check_plugin  # noqa: E402
from ncgeom_torch import (  # noqa: E402
    FeatureTap,
    NCTracker,
    UFMRegularizer,
    ufm_penalty,
)

K, D = 4, 6


def make_model(seed: int = 0, bias: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 16),
        nn.ReLU(),
        nn.Sequential(nn.Linear(16, D), nn.ReLU()),
        nn.Linear(D, K, bias=bias),
    ).double()


def make_data(seed: int = 0, n: int = 90) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (n,), generator=g)
    y[:K] = torch.arange(K)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64) + y[:, None].double()
    return x, y


def direct_nc1(h: np.ndarray, y: np.ndarray, k: int) -> float:
    """tr(Sigma_W pinv(Sigma_B)) / K by the direct float64 formula."""
    means = np.stack([h[y == c].mean(axis=0) for c in range(k)])
    dev = h - means[y]
    sigma_w = dev.T @ dev / len(y)
    centred = means - h.mean(axis=0)
    sigma_b = centred.T @ centred / k
    return float(np.trace(sigma_w @ np.linalg.pinv(sigma_b)) / k)


def assert_same_report(got: NCReport, want: NCReport, rel: float = 1e-10) -> None:
    assert got.counts == want.counts
    for metric in NCReport.METRICS:
        expected = getattr(want, metric)
        if expected is None:
            assert getattr(got, metric) is None, metric
        else:
            assert getattr(got, metric) == pytest.approx(expected, rel=rel, abs=1e-12), metric


# ----------------------------------------------------------------------------- plugin
@pytest.mark.parametrize("check", CHECKS)
def test_torch_plugin_conforms(check: str) -> None:
    import array_api_strict

    outcome = check_plugin(
        ncgeom_torch.plugin,
        lambda a: torch.from_numpy(a).clone(),
        mutate=lambda t: t.add_(1),
        foreign=[np.zeros(3), array_api_strict.asarray([1.0])],
        checks=[check],
    )
    assert outcome == {check: "passed"}


def test_plugin_to_array_is_the_tensor_and_rejects_others() -> None:
    x = torch.ones(3, 2, requires_grad=True)
    array = ncgeom_torch.plugin.to_array(x)
    assert array.data_ptr() == x.data_ptr()
    assert not array.requires_grad
    with pytest.raises(TypeError, match=r"`tensor` must be a torch.Tensor; got ndarray"):
        ncgeom_torch.plugin.to_array(np.ones(2))
    with pytest.raises(TypeError, match=r"`tensor` must be a dense \(strided\) tensor"):
        ncgeom_torch.plugin.to_array(torch.eye(2).to_sparse())


def test_plugin_detection_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(PLUGINS)!r})\n"
        "import numpy as np\n"
        "import ncgeom_torch\n"
        "from ncgeom.plugins import get_plugin, register_plugin\n"
        "register_plugin(ncgeom_torch.plugin)\n"
        "assert get_plugin('torch') is ncgeom_torch.plugin\n"
        "assert not ncgeom_torch.plugin.owns(np.zeros(3))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=PLUGINS.parent,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# ----------------------------------------------------------------------------- FeatureTap
def test_feature_tap_captures_the_penultimate_features_exactly() -> None:
    model = make_model()
    x, _ = make_data()
    with FeatureTap(model, "3") as tap:
        assert tap.active
        logits = model(x)
        first = tap.features
        model(x[:7])

    def manual(inputs: torch.Tensor) -> torch.Tensor:
        return model[2](model[1](model[0](inputs)))

    assert torch.equal(first, manual(x))
    assert torch.equal(tap.features, manual(x[:7]))
    assert torch.equal(logits, first @ model[3].weight.T)
    assert tap.num_forwards == 2
    assert not first.requires_grad
    assert first.device == next(model.parameters()).device


def test_feature_tap_accepts_dotted_names_modules_and_wrappers() -> None:
    model = make_model()
    x, _ = make_data()
    with FeatureTap(model, "2.0") as tap:  # input of the inner Linear
        model(x)
    assert torch.equal(tap.features, model[1](model[0](x)))
    wrapped = nn.DataParallel(model)  # on CPU it calls the module directly
    for layer in (model[3], "3", "module.3"):
        with FeatureTap(wrapped, layer) as tap:
            wrapped(x)
        assert tap.layer is model[3]
        assert torch.equal(tap.features, model[2](model[1](model[0](x))))


def test_feature_tap_keeps_the_graph_when_asked() -> None:
    model = make_model()
    x, _ = make_data()
    with FeatureTap(model, model[3], detach=False) as tap:
        model(x)
    assert tap.features.requires_grad
    tap.features.sum().backward()
    assert model[0].weight.grad is not None


def test_feature_tap_removes_its_hook_on_exceptions() -> None:
    model = make_model()
    x, _ = make_data()
    tap = FeatureTap(model, "3")
    with pytest.raises(RuntimeError, match="boom"), tap:
        model(x)
        assert len(model[3]._forward_pre_hooks) == 1
        raise RuntimeError("boom")
    assert len(model[3]._forward_pre_hooks) == 0
    assert not tap.active
    model(x[:3])
    assert tap.num_forwards == 1  # the forward after the block was not captured
    assert tap.features.shape[0] == x.shape[0]


class Named(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(5, D), nn.ReLU())
        self.classifier = nn.Linear(D, K, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))


def test_feature_tap_bad_layers_and_misuse() -> None:
    named = Named()
    with pytest.raises(
        ValueError, match=r"`layer` 'clasifier' is not in the model; did you mean \['classifier'"
    ):
        FeatureTap(named, "clasifier")
    with pytest.raises(ValueError, match=r"`layer` 'zzz' is not in the model; its layers: \["):
        FeatureTap(named, "zzz")
    model = make_model()
    with pytest.raises(ValueError, match=r"`layer` must be a submodule of `model`; got a Linear"):
        FeatureTap(model, nn.Linear(D, K))
    with pytest.raises(TypeError, match=r"`layer` must be a torch.nn.Module or a dotted name"):
        FeatureTap(model, 3)
    with pytest.raises(TypeError, match=r"`model` must be a torch.nn.Module; got str"):
        FeatureTap("model", "3")
    tap = FeatureTap(model, "3")
    with pytest.raises(RuntimeError, match=r"no forward pass has been captured yet"):
        _ = tap.features
    with tap, pytest.raises(RuntimeError, match=r"already active"):
        tap.__enter__()
    assert len(model[3]._forward_pre_hooks) == 0


# ----------------------------------------------------------------------------- NCTracker
def test_tracker_report_equals_nc_report_on_all_features() -> None:
    model = make_model()
    x, y = make_data(n=150)
    tracker = NCTracker(K)
    features = []
    with torch.no_grad(), FeatureTap(model, "3") as tap:
        for batch in torch.split(torch.arange(x.shape[0]), 32):
            model(x[batch])
            tracker.observe(tap.features, y[batch])
            features.append(tap.features)
    h = torch.cat(features).numpy()
    w = model[3].weight.detach().numpy()
    report = tracker.report(model[3])
    assert report.backend == "torch"
    assert tracker.stats.shift.dtype == torch.float64
    expected = nc_report(ClassStats.from_features(h, y.numpy(), K), w)
    assert_same_report(report, expected)
    assert report.nc1 == pytest.approx(direct_nc1(h, y.numpy(), K), rel=1e-10)
    assert tracker.num_batches == 5


def test_tracker_promotes_float32_features_to_float64() -> None:
    g = torch.Generator().manual_seed(4)
    y = torch.randint(0, 3, (200,), generator=g)
    h = (5 * torch.eye(3)[y] + 0.01 * torch.randn(200, 3, generator=g)).float()
    tracker = NCTracker(3)
    for part in range(4):
        rows = slice(50 * part, 50 * (part + 1))
        tracker.observe(h[rows], y[rows])
    h64 = h.double().numpy()
    expected = nc_report(ClassStats.from_features(h64, y.numpy(), 3))
    assert_same_report(tracker.report(), expected)
    assert tracker.report().nc1 == pytest.approx(direct_nc1(h64, y.numpy(), 3), rel=1e-10)


def test_tracker_evaluate_restores_modes_and_disables_grad() -> None:
    model = make_model()
    model.train()
    model[2].eval()  # a submodule in its own mode (e.g. a frozen block)
    x, y = make_data(n=120)
    loader = [(x[i : i + 40], y[i : i + 40]) for i in range(0, 120, 40)]
    tracker = NCTracker(K)
    tracker.observe(torch.ones(3, D, dtype=torch.float64), torch.tensor([0, 1, 2]))
    report = tracker.evaluate(model, loader, "3", step=7)
    assert model.training and model[0].training and not model[2].training
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        h = model[2](model[1](model[0](x))).numpy()
    weight = model[3].weight.detach().numpy()
    expected = nc_report(ClassStats.from_features(h, y.numpy(), K), weight)
    # the NCC agreement comes from evaluate's second pass, as on in-memory features
    ncc = nc_report((h, y.numpy()), weight, num_classes=K).ncc_agreement
    expected = dataclasses.replace(expected, ncc_agreement=ncc)
    assert_same_report(report, expected)  # the earlier batch was cleared
    assert tracker.history[-1][0] == 7
    assert tracker.history[-1][1]["num_samples"] == 120


def test_tracker_evaluate_restores_modes_on_errors() -> None:
    model = make_model()
    model.train()
    x, _ = make_data(n=10)
    loader = [(x, torch.full((10,), K))]  # labels out of range
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 4\); got max 4 at row 0"):
        NCTracker(K).evaluate(model, loader, "3")
    assert all(m.training for m in model.modules())
    assert len(model[3]._forward_pre_hooks) == 0
    with pytest.raises(TypeError, match=r"each batch of `loader` must be \(inputs, labels"):
        NCTracker(K).evaluate(model, [x], "3")


def test_tracker_bad_input() -> None:
    tracker = NCTracker(3)
    with pytest.raises(RuntimeError, match=r"no batch has been observed yet: call observe"):
        tracker.report()
    with pytest.raises(RuntimeError, match=r"no batch has been observed yet"):
        _ = tracker.stats
    h = torch.randn(6, 4)
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 3\); got max 3 at row 2"):
        tracker.observe(h, torch.tensor([0, 1, 3, 1, 0, 2]))
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 3\); got min -1 at row 0"):
        tracker.observe(h, torch.tensor([-1, 1, 2, 1, 0, 2]))
    with pytest.raises(
        ValueError,
        match=r"`features` must be 2-D \(batch, dim\) with at least one column; got shape \(6,\)",
    ):
        tracker.observe(torch.randn(6), torch.zeros(6, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"`labels` must be a torch.Tensor; got list"):
        tracker.observe(h, [0, 1, 2, 0, 1, 2])
    with pytest.raises(TypeError, match=r"`labels` must have an integer dtype"):
        tracker.observe(h, torch.zeros(6))
    tracker.observe(h, torch.tensor([0, 1, 2, 1, 0, 2]))
    with pytest.raises(ValueError, match=r"`features` must have 4 columns like the statistics"):
        tracker.observe(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(
        ValueError, match=r"must be given together; got lambda_w=0.1, lambda_h=None"
    ):
        tracker.report(lambda_w=0.1)
    with pytest.raises(ValueError, match=r"`lambda_h` must be > 0; got -1"):
        tracker.report(lambda_w=0.1, lambda_h=-1)
    with pytest.raises(ValueError, match=r"`num_classes` must be at least 2; got 1"):
        NCTracker(1)
    with pytest.raises(TypeError, match=r"`dtype` must be a floating torch.dtype"):
        NCTracker(3, dtype=torch.int64)


def test_tracker_warns_about_a_classifier_bias_only_for_theory() -> None:
    tracker = NCTracker(3)
    g = torch.Generator().manual_seed(5)
    y = torch.arange(30) % 3
    tracker.observe(torch.eye(3)[y] + 0.1 * torch.rand(30, 3, generator=g), y)
    layer = nn.Linear(3, 3)  # with a bias
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tracker.report(layer)  # no lambdas: the bias does not matter
    with pytest.warns(UserWarning, match=r"has a bias, but the UFM\+ closed form is bias-free"):
        tracker.report(layer, lambda_w=5e-3, lambda_h=5e-3)
    entry = tracker.history[-1][1]
    assert entry["lambda_w"] == 5e-3
    assert entry["gof_error"] is not None


def test_tracker_theory_comparison_equals_the_core_report() -> None:
    from ncgeom.theory import ufm_relu_optimum

    g = torch.Generator().manual_seed(6)
    y = torch.tensor([0] * 12 + [1] * 6 + [2] * 3)
    h = torch.eye(3, dtype=torch.float64)[y] * torch.tensor([1.0, 1.2, 1.5])[y, None]
    h = h + 0.01 * torch.rand(21, 3, generator=g, dtype=torch.float64)
    w = torch.randn(3, 3, generator=g, dtype=torch.float64)
    tracker = NCTracker(3)
    tracker.observe(h, y)
    got = tracker.report(w, lambda_w=5e-3, lambda_h=1e-2)
    want = nc_report(
        ClassStats.from_features(h, y, 3), w, theory=ufm_relu_optimum([12, 6, 3], 5e-3, 1e-2)
    )
    for name in ("gof_error", "classifier_gram_error", "logit_structure_error"):
        assert getattr(got, name) == pytest.approx(getattr(want, name), rel=1e-10)
    assert got.margins_predicted == pytest.approx(want.margins_predicted, rel=1e-12)
    other = tracker.report(w, lambda_w=5e-3, lambda_h=1e-2, counts=[100, 50, 1])
    assert other.margins_predicted[2] == 0.0  # class 2 collapses for these counts
    partial = NCTracker(4)
    partial.observe(h, y)
    with (
        pytest.warns(UserWarning, match=r"classes \[3\] were not observed: no theory"),
        pytest.warns(UserWarning, match=r"classes \[3\] have no samples"),
    ):
        report = partial.report(lambda_w=5e-3, lambda_h=1e-2)
    assert report.gof_error is None


def test_tracker_history_and_save(tmp_path: Path) -> None:
    tracker = NCTracker(3)
    y = torch.arange(12) % 3
    tracker.observe(torch.eye(3)[y] * 2 + 0.1 * torch.randn(12, 3), y)
    tracker.report()
    tracker.report(step=10)
    assert [step for step, _ in tracker.history] == [0, 10]
    saved = json.loads(tracker.save(tmp_path / "nc.json").read_text())
    assert saved["num_classes"] == 3
    assert [e["step"] for e in saved["history"]] == [0, 10]
    assert saved["history"][1]["report"]["counts"] == [4, 4, 4]
    assert saved["history"][1]["report"]["nc1"] == pytest.approx(tracker.history[1][1]["nc1"])
    tracker.history.append((11, {"nc1": math.nan}))
    text = tracker.save(tmp_path / "nan.json").read_text()
    assert json.loads(text)["history"][-1]["report"]["nc1"] is None


# ----------------------------------------------------------------------------- regulariser
def test_ufm_penalty_matches_the_formula() -> None:
    g = torch.Generator().manual_seed(6)
    w = torch.randn(K, D, generator=g, dtype=torch.float64)
    h = torch.rand(10, D, generator=g, dtype=torch.float64)
    lw, lh, n = 3e-3, 7e-3, 250
    wn, hn = w.numpy(), h.numpy()
    expected = lw / 2 * (wn**2).sum() + (n / 10) * lh / 2 * (hn**2).sum()
    got = ufm_penalty(w, h, lambda_w=lw, lambda_h=lh, num_samples=n)
    assert float(got) == pytest.approx(expected, rel=1e-14)
    reg = UFMRegularizer(lw, lh, n)
    assert float(reg(w, h)) == pytest.approx(expected, rel=1e-14)


def test_ufm_penalty_is_unbiased_over_a_partition_into_batches() -> None:
    # The mean of the batch penalties over an equal-size partition of the N
    # samples is (lambda_W/2)||W||^2 + (lambda_H/2)||H||_F^2 of all samples.
    g = torch.Generator().manual_seed(7)
    w = torch.randn(K, D, generator=g, dtype=torch.float64)
    h = torch.rand(60, D, generator=g, dtype=torch.float64)
    lw, lh = 0.02, 0.05
    batches = torch.split(h, 12)
    mean = sum(
        float(ufm_penalty(w, b, lambda_w=lw, lambda_h=lh, num_samples=60)) for b in batches
    ) / len(batches)
    full = lw / 2 * (w.numpy() ** 2).sum() + lh / 2 * (h.numpy() ** 2).sum()
    assert mean == pytest.approx(full, rel=1e-13)


def test_sgd_weight_decay_is_lambda_w() -> None:
    # One SGD step with weight_decay=wd on the classifier equals one step on
    # CE + (wd/2)||W||^2: the documented mapping lambda_W = wd.
    x, y = make_data(n=32)
    wd, lr = 0.03, 0.5
    steps = []
    for decay in (True, False):
        model = make_model(seed=1)
        opt = torch.optim.SGD(
            [
                {"params": model[3].parameters(), "weight_decay": wd if decay else 0.0},
                {"params": [p for m in model[:3] for p in m.parameters()]},
            ],
            lr=lr,
            momentum=0.9,
        )
        for _ in range(3):
            opt.zero_grad()
            with FeatureTap(model, "3", detach=False) as tap:
                loss = F.cross_entropy(model(x), y)
            extra = (
                0.0
                if decay
                else ufm_penalty(
                    model[3].weight, tap.features, lambda_w=wd, lambda_h=0.0, num_samples=32
                )
            )
            (loss + extra).backward()
            opt.step()
        steps.append(model[3].weight.detach().clone())
    torch.testing.assert_close(steps[0], steps[1], rtol=1e-12, atol=1e-14)


def test_regularizer_warns_once_about_a_bias_and_rejects_bad_values() -> None:
    reg = UFMRegularizer(1e-3, 1e-3, 100)
    layer = nn.Linear(D, K)
    h = torch.rand(5, D)
    with pytest.warns(UserWarning, match=r"bias is not regularised \(lambda_b = 0\)"):
        reg(layer, h)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg(layer, h)
    with pytest.raises(ValueError, match=r"`lambda_w` must be >= 0; got -0.1"):
        UFMRegularizer(-0.1, 1e-3, 100)
    with pytest.raises(ValueError, match=r"`num_samples` must be a positive integer; got 0"):
        UFMRegularizer(1e-3, 1e-3, 0)
    with pytest.raises(
        ValueError,
        match=r"`weight` must have shape \(num_classes, 6\), as many columns as `features`; "
        r"got \(4, 5\)",
    ):
        ufm_penalty(torch.ones(4, 5), h, lambda_w=0.1, lambda_h=0.1, num_samples=10)
    with pytest.raises(TypeError, match=r"`classifier` must be a \(K, d\) tensor or a layer"):
        reg(nn.ReLU(), h)


def test_plugin_all_reduce_is_identity_without_a_process_group() -> None:
    stats = ClassStats.from_features(torch.eye(4), torch.tensor([0, 1, 1, 0]), 2)
    assert ncgeom_torch.all_reduce_stats(stats) is stats
    with pytest.raises(TypeError, match=r"`stats` must be a ClassStats; got Tensor"):
        ncgeom_torch.all_reduce_stats(torch.eye(2))


def test_docs_training_example_runs_and_collapses() -> None:
    examples = PLUGINS.parent / "docs" / "examples"
    if str(examples) not in sys.path:
        sys.path.insert(0, str(examples))
    import torch_training

    tracker = torch_training.train(counts=(60, 30, 15), epochs=10, eval_every=5)
    steps = [step for step, _ in tracker.history]
    nc1 = [entry["nc1"] for _, entry in tracker.history]
    assert steps == [5, 10]
    assert nc1[1] < nc1[0]
    assert tracker.history[-1][1]["counts"] == [60, 30, 15]


# ---------------------------------------------------------------------------
# threads and label dtypes


def test_observe_from_threads_loses_no_sample():
    import threading

    tracker = NCTracker(3, gram=False)
    batches, size = 40, 25
    start = threading.Barrier(4)

    def work(seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        start.wait()
        for _ in range(batches):
            y = torch.randint(0, 3, (size,), generator=g)
            tracker.observe(torch.eye(3, 8)[y] + 0.01 * torch.randn(size, 8, generator=g), y)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert tracker.num_batches == 4 * batches
    assert int(tracker.stats.num_samples) == 4 * batches * size


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "int64"])
def test_observe_accepts_every_integer_label_dtype(dtype):
    y = torch.tensor([0, 1, 2, 1, 0, 2])
    h = torch.eye(3)[y] * 2.0
    tracker = NCTracker(3)
    tracker.observe(h, y.to(getattr(torch, dtype)))
    assert tracker.stats.counts.tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 3\); got max 7 at row 1"):
        tracker.observe(h[:2], torch.tensor([0, 7]).to(getattr(torch, dtype)))
    with pytest.raises(TypeError, match=r"`labels` must have an integer dtype; got torch.bool"):
        tracker.observe(h[:2], torch.tensor([True, False]))
    assert tracker.num_batches == 1  # the failed batches were not counted


def test_failed_merge_leaves_the_tracker_as_it_was(monkeypatch):
    from ncgeom_torch import tracker as tracker_module

    tracker = NCTracker(2)
    tracker.observe(torch.eye(2).repeat(3, 1), torch.tensor([0, 1] * 3))
    before = tracker.stats

    def timed_out(stats, group=None, step=0):
        raise RuntimeError("Timed out waiting for rank 1")

    monkeypatch.setattr(NCTracker, "_distributed", lambda self: True)
    monkeypatch.setattr(tracker_module, "all_reduce_stats", timed_out)
    with pytest.raises(RuntimeError, match=r"this rank's statistics are unchanged.*timeout"):
        tracker.report()
    assert tracker.stats is before and tracker.history == [] and tracker.num_batches == 1

    def disagree(stats, group=None, step=0):
        raise ValueError("cannot combine statistics across ranks: they disagree on dim")

    monkeypatch.setattr(tracker_module, "all_reduce_stats", disagree)
    with pytest.raises(ValueError, match="disagree on dim"):  # the same on every rank
        tracker.report()
    steps = []

    def succeed(stats, group=None, step=0):
        steps.append(step)
        return stats

    monkeypatch.setattr(tracker_module, "all_reduce_stats", succeed)
    assert tracker.report().num_samples == 6
    assert tracker.report().num_samples == 6
    assert len(tracker.history) == 2
    # Failed merges are not counted: every rank states the same count next time.
    assert steps == [0, 1]
