"""NCTracker: the verdict, the NCC agreement and the objective of `evaluate`."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from ncgeom import nc_report  # noqa: E402
from ncgeom.theory import ufm_relu_optimum  # noqa: E402
from ncgeom_torch import NCTracker  # noqa: E402


def setup(k: int = 3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(90, 6, generator=g, dtype=torch.float64)
    y = torch.arange(90) % k
    x = x + 3 * torch.eye(k, 6, dtype=torch.float64)[y]
    model = nn.Sequential(nn.Linear(6, 8, bias=False), nn.ReLU(), nn.Linear(8, k, bias=False))
    return model.double(), x, y


def test_evaluate_measures_the_objective_of_the_ufm_plus_formula():
    model, x, y = setup()
    lw, lh = 1e-2, 1e-3
    report = NCTracker(3).evaluate(model, [(x[:50], y[:50]), (x[50:], y[50:])], model[2],
                                   lambda_w=lw, lambda_h=lh)  # fmt: skip
    with torch.no_grad():
        h = model[1](model[0](x))
        logits = model[2](h)
        ce = torch.nn.functional.cross_entropy(logits, y, reduction="mean")
        want = float(ce + lw / 2 * (model[2].weight ** 2).sum() + lh / 2 * (h**2).sum())
    assert report.objective == pytest.approx(want, rel=1e-12)
    verdict = report.to_dict()["verdict"]
    optimum = float(ufm_relu_optimum(np.bincount(y.numpy()), lw, lh).objective)
    assert verdict["optimum"] == pytest.approx(optimum, rel=1e-12)
    assert verdict["gap"] == pytest.approx(want - optimum, rel=1e-9)
    assert "gap" in str(report) and "ncc_agreement (NC4)" in str(report)
    expected = nc_report((h.numpy(), y.numpy()), model[2].weight.detach().numpy()).ncc_agreement
    assert report.ncc_agreement == pytest.approx(expected)


def test_ncc_missing_values_say_why():
    model, x, y = setup()
    tracker = NCTracker(3)
    one_shot = iter([(x, y)])
    report = tracker.evaluate(model, one_shot, model[2])
    assert report.ncc_agreement is None
    assert "one-shot iterator" in dict(report.unavailable)["ncc_agreement"]
    skipped = tracker.evaluate(model, [(x, y)], model[2], ncc=False)
    assert "ncc=False" in dict(skipped.unavailable)["ncc_agreement"]
    tracker.observe(model[1](model[0](x)).detach(), y)
    observed = tracker.report(model[2])
    assert "second pass" in dict(observed.unavailable)["ncc_agreement"]
    assert "second pass" in str(observed)
    assert math.isfinite(tracker.history[-1][1]["nc1"])
