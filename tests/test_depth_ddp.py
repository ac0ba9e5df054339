"""Collapse through depth across 2 processes (torch.distributed, gloo): equal to one process.

One spawn of two ranks evaluates a small conv net through DistributedDataParallel
with ``layers=`` (a pooled, a flattened and a 2-D layer) and observes the same
layers batch by batch; rank 1 never sees the last class, so the ranks' shifts
differ. The per-layer statistics and the second passes (`SecondPass`, which
gives the NCC accuracy and the flattened layer's NC1) are summed across ranks:
every value must equal that of one process on all the data.
"""

from __future__ import annotations

from typing import Any

import pytest
from gloo import spawn_ranks

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
from torch import nn  # noqa: E402

from ncgeom.depth import DEPTH_METRICS  # noqa: E402

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend"
)

WORLD = 2
K, N = 4, 120
LAYERS = ["1", "3", "5"]
REDUCE = {"1": "pool", "3": "flatten", "5": "pool"}


def dataset() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    y = torch.randint(0, K, (N,), generator=g)
    y[:K] = torch.arange(K)
    x = torch.randn(N, 2, 5, 5, generator=g, dtype=torch.float64) + y[:, None, None, None]
    return x, y


def rank_rows(rank: int, y: torch.Tensor) -> torch.Tensor:
    """Rows of `rank`: all of the last class on rank 0, the rest alternating."""
    index = torch.arange(y.shape[0])
    odd = (index % 2 == 1) & (y != K - 1)
    return index[odd] if rank == 1 else index[~odd]


def make_model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 2, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, K, bias=False),
    ).double()


def run(model: nn.Module, rows: torch.Tensor) -> dict[str, Any]:
    """The depth reports of `evaluate` and of `observe` + `report` on `rows`."""
    from ncgeom_torch import FeatureTap, NCTracker, unwrap_model

    x, y = dataset()
    loader = [(x[part], y[part]) for part in torch.split(rows, 17)]
    evaluated = NCTracker(K, reduce=REDUCE).evaluate(model, loader, layers=LAYERS, step=1)
    tracker = NCTracker(K, reduce=REDUCE)
    with torch.no_grad(), FeatureTap(model, layers=LAYERS) as tap:
        for inputs, labels in loader:
            model(inputs)
            tracker.observe(tap.outputs, labels)
    observed = tracker.report(unwrap_model(model)[6])
    return {"evaluate": evaluated.to_dict(), "observe": observed.to_dict()}


def _work(rank: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    _, y = dataset()
    rows = rank_rows(rank, y)
    results = run(nn.parallel.DistributedDataParallel(make_model()), rows)
    results["local_samples"] = len(rows)
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return spawn_ranks(_work, tmp_path_factory.mktemp("depth_ddp"), WORLD)


@pytest.fixture(scope="module")
def single() -> dict[str, Any]:
    _, y = dataset()
    return run(make_model(), torch.arange(y.shape[0]))


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["layers"] == want["layers"] == LAYERS
    assert got["reduce"] == want["reduce"] == REDUCE
    for layer in LAYERS:
        for metric in DEPTH_METRICS:
            expected = want["values"][layer][metric]
            value = got["values"][layer][metric]
            if expected is None:
                assert value is None, (layer, metric)
            else:
                assert value == pytest.approx(expected, rel=1e-10, abs=1e-12), (layer, metric)
    last_got, last_want = got["reports"]["5"], want["reports"]["5"]
    for metric in ("ncc_agreement", "self_duality_error", "classifier_etf_error"):
        if last_want[metric] is None:  # statistics alone give no NCC agreement
            assert last_got[metric] is None, metric
        else:
            assert last_got[metric] == pytest.approx(last_want[metric], rel=1e-10), metric


def test_ranks_hold_different_data(ranks: list[dict[str, Any]]) -> None:
    _, y = dataset()
    sizes = [len(rank_rows(r, y)) for r in range(WORLD)]
    assert [r["local_samples"] for r in ranks] == sizes
    assert sum(sizes) == N
    assert int((y[rank_rows(1, y)] == K - 1).sum()) == 0


def test_evaluate_through_ddp_equals_one_process(
    ranks: list[dict[str, Any]], single: dict[str, Any]
) -> None:
    want = single["evaluate"]
    # the second pass ran: NCC per layer, and NC1 of the flattened layer (no Gram)
    assert all(want["values"][layer]["ncc_accuracy"] is not None for layer in LAYERS)
    assert want["values"]["3"]["nc1"] is not None
    for result in ranks:
        assert_same(result["evaluate"], want)


def test_observed_layers_combine_like_one_process(
    ranks: list[dict[str, Any]], single: dict[str, Any]
) -> None:
    assert single["observe"]["reports"]["5"]["ncc_agreement"] is None
    assert single["observe"]["values"]["3"]["nc1"] is None  # flattened: needs the second pass
    for result in ranks:
        assert_same(result["observe"], single["observe"])
    assert ranks[0]["observe"] == ranks[1]["observe"]
