"""`NCTracker(shard_classes=True)` in one process: the one shard holds every
class, and the report made from it equals the plain tracker's report.
(Two ranks run in the gloo spawn of tests/test_shards.py.)"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from ncgeom import NCReport  # noqa: E402
from ncgeom_torch import NCTracker  # noqa: E402

K, D = 6, 5


def batches(seed: int = 0, count: int = 5) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(K, D, generator=g, dtype=torch.float64)
    out = []
    for _ in range(count):
        y = torch.randint(0, K, (40,), generator=g)
        out.append((centres[y] + torch.randn(40, D, generator=g, dtype=torch.float64), y))
    return out


def layer() -> nn.Linear:
    torch.manual_seed(1)
    return nn.Linear(D, K).double()


def assert_same(got: NCReport, want: NCReport) -> None:
    a, b = got.to_dict(), want.to_dict()
    assert a["counts"] == b["counts"] and a["num_samples"] == b["num_samples"]
    for name in (*NCReport.METRICS, *NCReport.PER_CLASS):
        if name == "ncc_agreement" or b[name] is None:
            assert name == "ncc_agreement" or a[name] is None, name
            continue
        np.testing.assert_allclose(a[name], b[name], rtol=1e-10, atol=1e-13, err_msg=name)


def test_the_report_from_the_shard_equals_the_plain_tracker():
    plain, sharded = NCTracker(K), NCTracker(K, shard_classes=True)
    for h, y in batches():
        plain.observe(h, y)
        sharded.observe(h, y)
    head = layer()
    with pytest.warns(UserWarning, match="bias"):  # the theorem is bias-free
        want = plain.report(head, lambda_w=1e-2, lambda_h=1e-2, objective=2.0)
    with pytest.warns(UserWarning, match="bias"):
        got = sharded.report(head, lambda_w=1e-2, lambda_h=1e-2, objective=2.0)
    assert_same(got, want)
    assert got.gof_error is not None and got.margins_measured is not None
    assert "second pass" in dict(got.unavailable)["ncc_agreement"]
    assert sharded.history[0][1]["lambda_w"] == 1e-2
    shard = sharded.shard()
    assert shard.offset == 0 and tuple(shard.stats.counts.tolist()) == want.counts


def test_what_a_sharded_tracker_does_not_keep_is_refused():
    tracker = NCTracker(K, shard_classes=True)
    with pytest.raises(RuntimeError, match="no batch has been observed"):
        tracker.shard()
    tracker.observe(*batches(count=1)[0])
    with pytest.raises(RuntimeError, match=r"shard_classes=True\): read `shard\(\)`"):
        _ = tracker.stats
    with pytest.raises(RuntimeError, match="shard_classes=True"):
        tracker.combined_stats()
    with pytest.raises(ValueError, match="statistics per layer are not sharded"):
        tracker.observe({"a": torch.zeros(2, D)}, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="`layers` needs statistics per layer"):
        tracker.evaluate(nn.Linear(D, K), [], layers=["0"])
    with pytest.raises(RuntimeError, match="needs NCTracker"):
        NCTracker(K).shard()
    with pytest.raises(ValueError, match="`classifier` must have 6 rows"):
        tracker.report(torch.zeros(K + 1, D, dtype=torch.float64))
    tracker.reset()
    with pytest.raises(RuntimeError, match="no batch has been observed"):
        tracker.report()


def test_evaluate_measures_the_ncc_agreement_against_the_shard():
    model = nn.Sequential(nn.Linear(3, D), nn.ReLU(), nn.Linear(D, K)).double()
    g = torch.Generator().manual_seed(2)
    loader = [
        (
            torch.randn(30, 3, generator=g, dtype=torch.float64),
            torch.randint(0, K, (30,), generator=g),
        )
        for _ in range(3)
    ]
    plain = NCTracker(K).evaluate(model, loader, model[2])
    report = NCTracker(K, shard_classes=True).evaluate(model, loader, model[2])
    assert 0 < plain.ncc_agreement < 1
    assert report.ncc_agreement == plain.ncc_agreement
    assert report.nc1 == pytest.approx(plain.nc1, rel=1e-10)
