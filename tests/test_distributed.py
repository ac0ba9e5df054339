"""NCTracker across 2 processes (torch.distributed, gloo): equal to one process on all data.

One spawn of two ranks runs every scenario and writes its results to files;
the tests below read them. Rank r holds a different part of the data, rank 1
never sees class 3 (so the ranks' shifts differ), and a DDP-wrapped model is
evaluated with `NCTracker.evaluate`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from gloo import spawn_ranks

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
from torch import nn  # noqa: E402

from ncgeom import ClassStats, nc_report, reduce_class_stats  # noqa: E402
from ncgeom.report import NCReport  # noqa: E402

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend"
)

WORLD = 2
K, D_IN, D = 4, 5, 6


def dataset() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    y = torch.randint(0, K, (160,), generator=g)
    y[:K] = torch.arange(K)
    x = torch.randn(160, D_IN, generator=g, dtype=torch.float64) + 2 * y[:, None].double()
    return x, y


def rank_rows(rank: int, y: torch.Tensor) -> torch.Tensor:
    """Rows of `rank`: all of class 3 on rank 0, the rest alternating."""
    index = torch.arange(y.shape[0])
    odd = (index % 2 == 1) & (y != K - 1)
    return index[odd] if rank == 1 else index[~odd]


def make_model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Linear(D_IN, 16), nn.ReLU(), nn.Linear(16, D), nn.ReLU(), nn.Linear(D, K, bias=False)
    ).double()


def features_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model[:4](x)


def _work(rank: int) -> dict[str, Any]:
    from ncgeom_torch import NCTracker

    results: dict[str, Any] = {}
    x, y = dataset()
    rows = rank_rows(rank, y)
    model = make_model()
    h = features_of(model, x)

    # observe() in uneven batches on each rank
    tracker = NCTracker(K)
    for part in torch.split(rows, 23):
        tracker.observe(h[part], y[part])
    results["observe"] = tracker.report(model[4]).to_dict()
    results["local_samples"] = int(tracker.stats.num_samples)

    # evaluate() through DistributedDataParallel
    ddp = nn.parallel.DistributedDataParallel(make_model())
    loader = [(x[part], y[part]) for part in torch.split(rows, 17)]
    results["evaluate"] = NCTracker(K).evaluate(ddp, loader, "4", step=1).to_dict()

    # a rank that observed nothing still takes part
    idle = NCTracker(K)
    if rank == 0:
        idle.observe(h, y)
    results["idle"] = idle.report().to_dict()

    # nothing observed anywhere
    try:
        NCTracker(K).report()
    except RuntimeError as error:
        results["empty_error"] = str(error)

    # mismatched number of classes
    mismatched = NCTracker(K + rank)
    mismatched.observe(h[rows], y[rows])
    try:
        mismatched.report()
    except ValueError as error:
        results["mismatch_error"] = str(error)

    # a rank whose earlier merge failed after the others' succeeded is out
    # of step (its count of merges lags): refused on every rank
    lagging = NCTracker(K)
    lagging.observe(h[rows], y[rows])
    lagging._merges = 2 - rank
    try:
        lagging.report()
    except ValueError as error:
        results["step_error"] = str(error)

    # collectives that break the contract, with the real gloo transport: an
    # all-reduce that averages (a "mean" reduction), and one that works in
    # place and returns None, as torch.distributed.all_reduce does
    local = ClassStats.from_features(h[rows], y[rows], K)

    def gather(x: torch.Tensor) -> list[torch.Tensor]:
        out = [torch.empty_like(x) for _ in range(WORLD)]
        dist.all_gather(out, x.contiguous())
        return out

    def average(x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        dist.all_reduce(x)
        return x / WORLD

    def in_place(x: torch.Tensor) -> None:
        dist.all_reduce(x)

    for name, reduce in (("average", average), ("in_place", in_place)):
        try:
            reduce_class_stats(
                local, rank=rank, world_size=WORLD, all_gather=gather, all_reduce=reduce
            )
        except (TypeError, ValueError) as error:
            results[f"{name}_error"] = f"{type(error).__name__}: {error}"

    # the same statistics are still usable after the failed report
    results["after_error"] = tracker.report().to_dict()
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return spawn_ranks(_work, tmp_path_factory.mktemp("distributed"), WORLD)


@pytest.fixture(scope="module")
def single() -> dict[str, NCReport]:
    """The reports of one process on all the data, from the NumPy float64 core."""
    x, y = dataset()
    model = make_model()
    h = features_of(model, x).numpy()
    weight = model[4].weight.detach().numpy()
    stats = ClassStats.from_features(h, y.numpy(), K)
    with_classifier = nc_report(stats, weight)
    # evaluate() adds the NCC agreement over all ranks' samples (its second pass)
    ncc = nc_report((h, y.numpy()), weight, num_classes=K).ncc_agreement
    evaluated = dataclasses.replace(with_classifier, ncc_agreement=ncc)
    return {"with_classifier": with_classifier, "plain": nc_report(stats), "evaluated": evaluated}


def assert_report(got: dict[str, Any], want: NCReport) -> None:
    assert got["counts"] == list(want.counts)
    assert got["num_samples"] == want.num_samples
    for metric in NCReport.METRICS:
        expected = getattr(want, metric)
        if expected is None:
            assert got[metric] is None, metric
        else:
            assert got[metric] == pytest.approx(expected, rel=1e-10, abs=1e-12), metric


def test_ranks_hold_different_data(ranks: list[dict[str, Any]]) -> None:
    _, y = dataset()
    sizes = [len(rank_rows(r, y)) for r in range(WORLD)]
    assert [r["local_samples"] for r in ranks] == sizes
    assert sum(sizes) == y.shape[0]
    assert int((y[rank_rows(1, y)] == K - 1).sum()) == 0


def test_distributed_report_equals_single_process(
    ranks: list[dict[str, Any]], single: dict[str, NCReport]
) -> None:
    for result in ranks:
        assert_report(result["observe"], single["with_classifier"])
        assert_report(result["after_error"], single["plain"])
    assert ranks[0]["observe"] == ranks[1]["observe"]


def test_distributed_evaluate_through_ddp(
    ranks: list[dict[str, Any]], single: dict[str, NCReport]
) -> None:
    for result in ranks:
        assert_report(result["evaluate"], single["evaluated"])


def test_rank_without_batches_takes_part(
    ranks: list[dict[str, Any]], single: dict[str, NCReport]
) -> None:
    for result in ranks:
        assert_report(result["idle"], single["plain"])
        assert "no batch has been observed yet" in result["empty_error"]
        assert "(on any rank)" in result["empty_error"]


def test_a_rank_out_of_step_is_refused_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    for rank, result in enumerate(ranks):
        assert "disagree on step (rank 0: 2, rank 1: 1)" in result["step_error"], rank


def test_mismatched_num_classes_raises_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    for rank, result in enumerate(ranks):
        message = result["mismatch_error"]
        assert "disagree on num_classes (rank 0: 4, rank 1: 5)" in message
        assert f"this is rank {rank}" in message


def test_a_broken_collective_raises_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        assert result["average_error"].startswith(
            "ValueError: `all_reduce` (call 1 of 2) and `all_gather` disagree on the counts: "
            "class "
        )
        assert result["in_place_error"].startswith(
            "TypeError: `all_reduce` returned None; expected one torch array of shape ("
        )
