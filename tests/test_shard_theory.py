"""The comparisons with the UFM+ optimum from class shards (`shard_theory_metrics`).

The simulated world of tests/world.py plays 1 to 4 ranks on threads. Every
value is compared with ``nc_report(stats, W, theory=opt)`` of the whole table
and with dense float64 formulas written here (the K x K matrices formed whole),
near the optimum too, where the distances are tiny.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import numpy as np
import pytest
from world import run_on_threads, shard_on_threads

import ncgeom.measure.shard_theory as shard_theory_module
from ncgeom import ClassStats, nc_report
from ncgeom.measure.distributed import ClassShard, Collectives, reduce_scatter_class_stats
from ncgeom.measure.shard_theory import (
    SHARD_THEORY_METRICS,
    SHARD_THEORY_VECTORS,
    ShardTheory,
    shard_theory_metrics,
)
from ncgeom.theory import ufm_relu_optimum

SCALARS = SHARD_THEORY_METRICS
VECTORS = SHARD_THEORY_VECTORS
UNSEEN = "the theory needs every class to have samples"
ALONE = Collectives(0, 1, lambda a: [a], lambda a: a, lambda a: a)


# ----------------------------------------------------------------------------- data
def instance(
    k: int, d: int, noise: float, *, seed: int = 0, lambdas: float = 1e-2
) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """An optimum of K imbalanced classes (the rarest collapse), features at its
    class means plus noise, its classifier plus noise; every class has samples."""
    rng = np.random.default_rng(seed)
    counts = np.concatenate([[2, 1], rng.integers(30, 60, size=k - 2)])
    opt = ufm_relu_optimum(counts, lambdas, lambdas, dim=d)
    labels = np.repeat(np.arange(k), counts)
    features = np.asarray(opt.means())[labels]
    features = features + noise * rng.normal(size=features.shape)
    w = np.asarray(opt.classifier()) + noise * rng.normal(size=(k, d))
    return opt, features, labels, w


def split(labels: np.ndarray, world: int, seed: int) -> list[np.ndarray]:
    """Uneven rows per rank; every rank lacks some classes."""
    rng = np.random.default_rng(seed)
    owner = rng.choice(
        world, size=labels.size, p=np.arange(1, world + 1) / (world * (world + 1) / 2)
    )
    return [np.flatnonzero(owner == r) for r in range(world)]


def shards_of(
    features: np.ndarray, labels: np.ndarray, k: int, world: int, seed: int = 0
) -> list[ClassShard]:
    """The shards of `world` ranks, each with its own samples' statistics."""
    parts = split(labels, world, seed)
    stats = [ClassStats.from_features(features[rows], labels[rows], k) for rows in parts]
    return shard_on_threads(stats)


def on_threads(shards: list[ClassShard], opt: Any, w: np.ndarray | None) -> list[ShardTheory]:
    """`shard_theory_metrics` on every rank, each given its rows of `w`."""

    def work(rank: int, group: Collectives) -> Any:
        shard = shards[rank]
        rows = None if w is None else w[shard.offset : shard.offset + shard.stats.num_classes, ...]
        return shard_theory_metrics(shard, group, opt, classifier=rows)

    results = run_on_threads(len(shards), work)
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


def joined(results: list[ShardTheory], name: str) -> np.ndarray:
    """A per-class vector of all ranks, in class order."""
    return np.concatenate([np.asarray(r.vectors[name], dtype=np.float64) for r in results])


def report_of(features: np.ndarray, labels: np.ndarray, k: int, w: Any, opt: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # collapsed classes, degenerate geometry
        return nc_report(ClassStats.from_features(features, labels, k), w, theory=opt)


def nf(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a)


def formulas(features: np.ndarray, labels: np.ndarray, w: np.ndarray, opt: Any) -> dict[str, Any]:
    """The comparisons by dense float64 formulas (the K x K matrices whole)."""
    k = opt.num_classes
    means = np.stack([features[labels == c].mean(axis=0) for c in range(k)])
    norms_opt = np.asarray(opt.feature_norms, dtype=np.float64)
    margins_opt = np.asarray(opt.margins, dtype=np.float64)
    counts = np.asarray(opt.counts, dtype=np.float64)
    unit_w = w / np.abs(w).max()  # the distances do not depend on W's size
    j = np.ones((k, k))
    centring = k * np.eye(k) - j
    gram_target = centring @ np.diag(np.sqrt(counts) * margins_opt) @ centring
    logits = means @ w.T  # row k: w_j . h_k
    other = np.where(np.eye(k, dtype=bool), -np.inf, logits).max(axis=1)
    return {
        "gof_error": np.linalg.norm(nf(means @ means.T) - nf(np.diag(norms_opt**2))),
        "classifier_gram_error": np.linalg.norm(nf(unit_w @ unit_w.T) - nf(gram_target)),
        "logit_structure_error": np.linalg.norm(
            nf(unit_w @ means.T) - nf((np.eye(k) - j / k) @ np.diag(margins_opt))
        ),
        "feature_norms_measured": np.linalg.norm(means, axis=1),
        "feature_norms_predicted": norms_opt,
        "margins_measured": np.diag(logits) - other,
        "margins_predicted": margins_opt,
    }


def assert_equal(
    results: list[ShardTheory], want: Any, rtol: float, *, vectors: bool = True
) -> None:
    """Every rank's values (and the joined vectors) equal `want` (a report or a dict)."""

    def get(name: str) -> Any:
        return want[name] if isinstance(want, dict) else getattr(want, name)

    for result in results:
        assert set(result.values) == set(SCALARS)
        assert set(result.vectors) == set(VECTORS)
        for name in SCALARS:
            assert result.values[name] == pytest.approx(get(name), rel=rtol), name
    if vectors:
        for name in VECTORS:
            np.testing.assert_allclose(
                joined(results, name), get(name), rtol=rtol, atol=0, err_msg=name
            )


# ----------------------------------------------------------------------------- equal to the report
@pytest.mark.parametrize(
    ("world", "k", "d"), [(1, 5, 5), (2, 6, 9), (3, 9, 9), (4, 10, 12), (4, 3, 3)]
)
def test_shards_equal_the_report_and_the_formulas(world: int, k: int, d: int) -> None:
    # (4, 3, 3): a rank owns no class; d > K: an optimum in more dimensions
    opt, features, labels, w = instance(k, d, noise=0.05, seed=world + k)
    shards = shards_of(features, labels, k, world, seed=world)
    results = on_threads(shards, opt, w)
    assert_equal(results, report_of(features, labels, k, w, opt), 1e-10)
    assert_equal(results, formulas(features, labels, w, opt), 1e-10)
    for result in results:
        assert result.unavailable == {}
        assert all(np.asarray(v).dtype == np.float64 for v in result.vectors.values())
        assert [np.asarray(v).shape for v in result.vectors.values()] == [
            (result.vectors["margins_measured"].shape[0],)
        ] * 4
    sizes = [shard.stats.num_classes for shard in shards]
    assert [r.vectors["margins_measured"].shape[0] for r in results] == sizes


@pytest.mark.parametrize("noise", [1e-5, 1e-6])
def test_near_the_optimum_the_tiny_distances_keep_their_precision(noise: float) -> None:
    k, d, world = 12, 12, 4
    opt, features, labels, w = instance(k, d, noise=noise, seed=3)
    results = on_threads(shards_of(features, labels, k, world, seed=2), opt, w)
    report = report_of(features, labels, k, w, opt)
    for name in SCALARS:  # distances of the size of the noise, not of rounding
        assert 1e-2 * noise < getattr(report, name) < 1e2 * noise, name
    assert_equal(results, report, 1e-10)
    # below a noise of ~1e-7 the rounding of the entries of A (here and in the
    # report alike) reaches 1e-10 of the distance
    assert_equal(results, formulas(features, labels, w, opt), 1e-9)


def test_at_the_optimum_itself_the_distances_vanish() -> None:
    opt, features, labels, w = instance(8, 8, noise=0.0, seed=1)
    results = on_threads(shards_of(features, labels, 8, 3, seed=1), opt, w)
    for result in results:
        for name in SCALARS:
            assert 0 <= result.values[name] < 1e-13, name
    np.testing.assert_allclose(
        joined(results, "margins_measured"), np.asarray(opt.margins), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(
        joined(results, "feature_norms_measured"), np.asarray(opt.feature_norms), atol=1e-12
    )


@pytest.mark.parametrize(("size", "w_size"), [(1e-20, 1e-200), (1e20, 1e200), (1e20, 1e-10)])
def test_feature_and_classifier_scales(size: float, w_size: float) -> None:
    # squares of 1e200 overflow float64: the rows are divided by powers of two first
    k, d, world = 7, 8, 3
    opt, features, labels, w = instance(k, d, noise=0.05, seed=5)
    x, w = features * size, w * w_size
    results = on_threads(shards_of(x, labels, k, world, seed=4), opt, w)
    assert_equal(results, report_of(x, labels, k, w, opt), 1e-10)
    want = formulas(features, labels, w / w_size, opt)
    want["feature_norms_measured"] = want["feature_norms_measured"] * size
    want["margins_measured"] = want["margins_measured"] * size * w_size
    assert_equal(results, want, 1e-10)


def test_the_tiles_of_a_block_give_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    k, d, world = 11, 9, 2  # K > d: the two rarest classes collapse
    opt, features, labels, w = instance(k, d, noise=0.05, seed=8)
    shards = shards_of(features, labels, k, world, seed=8)
    whole = on_threads(shards, opt, w)
    monkeypatch.setattr(shard_theory_module, "_TILE_ENTRIES", 7)  # tiles of one row
    tiled = on_threads(shards, opt, w)
    assert_equal(tiled, report_of(features, labels, k, w, opt), 1e-10)
    for a, b in zip(whole, tiled, strict=True):
        for name in SCALARS:
            assert a.values[name] == pytest.approx(b.values[name], rel=1e-12)


@pytest.mark.parametrize("world", range(1, 9))
def test_each_block_of_the_symmetric_matrices_is_formed_once_and_evenly(world: int) -> None:
    handles = shard_theory_module._handles
    for r, s in itertools.product(range(world), repeat=2):
        if r != s:
            assert handles(r, s, world) != handles(s, r, world), (r, s)
    loads = [sum(handles(r, s, world) for s in range(world)) for r in range(world)]
    assert max(loads) - min(loads) <= 1


# ----------------------------------------------------------------------------- unavailable
def test_without_a_classifier() -> None:
    k, world = 6, 3
    opt, features, labels, _ = instance(k, k, noise=0.05, seed=2)
    results = on_threads(shards_of(features, labels, k, world, seed=1), opt, None)
    report = report_of(features, labels, k, None, opt)
    why = dict(report.unavailable)
    for result in results:
        assert result.values["gof_error"] == pytest.approx(report.gof_error, rel=1e-10)
        for name in ("classifier_gram_error", "logit_structure_error"):
            assert np.isnan(result.values[name]) and getattr(report, name) is None
        for name in ("margins_measured", "margins_predicted"):
            assert np.isnan(np.asarray(result.vectors[name])).all()
            assert getattr(report, name) is None
        assert result.unavailable == {name: why[name] for name in result.unavailable}
        assert set(result.unavailable) == {
            "classifier_gram_error", "logit_structure_error",
            "margins_measured", "margins_predicted",
        }  # fmt: skip
        assert set(result.unavailable.values()) == {"no classifier given"}
    for name in ("feature_norms_measured", "feature_norms_predicted"):
        np.testing.assert_allclose(joined(results, name), getattr(report, name), rtol=1e-10)


@pytest.mark.filterwarnings("ignore:classes .* have no samples")
def test_a_class_without_samples_leaves_every_comparison_unavailable() -> None:
    k, world = 6, 3
    opt, features, labels, w = instance(k, k, noise=0.05, seed=4)
    keep = labels != 4  # class 4 has no samples on any rank
    features, labels = features[keep], labels[keep]
    report = report_of(features, labels, k, w, opt)
    why = dict(report.unavailable)
    for given in (w, None):
        results = on_threads(shards_of(features, labels, k, world, seed=3), opt, given)
        for result in results:
            assert result.unavailable == dict.fromkeys((*SCALARS, *VECTORS), UNSEEN)
            assert all(why[name] == UNSEEN for name in result.unavailable)
            assert all(np.isnan(v) for v in result.values.values())
            assert all(np.isnan(np.asarray(v)).all() for v in result.vectors.values())
        assert [r.vectors["margins_measured"].shape[0] for r in results] == [2, 2, 2]


@pytest.mark.filterwarnings("ignore:degenerate class geometry")
def test_zero_means_or_a_zero_classifier_give_nan_where_the_report_does() -> None:
    k, world = 5, 2
    opt, features, labels, w = instance(k, k, noise=0.05, seed=6)
    for x, weights in ((np.zeros_like(features), w), (features, np.zeros_like(w))):
        report = report_of(x, labels, k, weights, opt)
        results = on_threads(shards_of(x, labels, k, world, seed=6), opt, weights)
        for result in results:
            for name in SCALARS:
                want = getattr(report, name)
                if np.isnan(want):
                    assert np.isnan(result.values[name]), name
                else:
                    assert result.values[name] == pytest.approx(want, rel=1e-10), name
            assert result.unavailable == {}
        for name in VECTORS:
            np.testing.assert_allclose(joined(results, name), getattr(report, name), rtol=1e-10)
    assert np.isnan(report.classifier_gram_error) and np.isnan(report.logit_structure_error)


# ----------------------------------------------------------------------------- arguments
def test_arguments_are_checked() -> None:
    opt, features, labels, w = instance(4, 4, noise=0.05)
    shard = reduce_scatter_class_stats(ClassStats.from_features(features, labels, 4), ALONE)
    other = ufm_relu_optimum([3, 4, 5], 1e-2, 1e-2)
    with pytest.raises(ValueError, match=r"`optimum` describes 3 classes but the shards have 4"):
        shard_theory_metrics(shard, ALONE, other)
    with pytest.raises(TypeError, match=r"`optimum`"):
        shard_theory_metrics(shard, ALONE, [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(TypeError, match=r"`shard`"):
        shard_theory_metrics(shard.stats, ALONE, opt)
    with pytest.raises(ValueError, match=r"`classifier` must have shape \(4, 4\).*\(3, 4\)"):
        shard_theory_metrics(shard, ALONE, opt, classifier=w[:3])
    with pytest.raises(TypeError, match=r"`classifier` must have a real floating dtype"):
        shard_theory_metrics(shard, ALONE, opt, classifier=np.ones((4, 4), dtype=np.int64))


def test_ranks_that_disagree_or_a_nan_classifier_raise_on_every_rank() -> None:
    k, world = 6, 3
    opt, features, labels, w = instance(k, k, noise=0.05, seed=7)
    shards = shards_of(features, labels, k, world, seed=7)

    def run(rows_of: Any) -> list[Any]:
        def work(rank: int, group: Collectives) -> Any:
            return shard_theory_metrics(shards[rank], group, opt, classifier=rows_of(rank))

        return run_on_threads(world, work)

    bad = w.copy()
    bad[3, 1] = np.nan
    for result in run(lambda r: bad[2 * r : 2 * r + 2]):
        assert isinstance(result, ValueError)
        assert str(result) == "`classifier` must be finite; got NaN or Inf in 1 entries on rank 1"
    for result in run(lambda r: None if r == 2 else w[2 * r : 2 * r + 2]):
        assert isinstance(result, ValueError)
        assert "given on every rank or on none; got it on ranks [0, 1] of 3" in str(result)


# ----------------------------------------------------------------------------- backends, float32
def test_on_every_backend(backend: Any) -> None:
    # the shards are reduced in NumPy and moved: reduce_scatter_class_stats has
    # its own backend tests; JAX compiles each new shape, so it plays one rank
    k, d = 5, 5
    world = 1 if backend.name == "jax" else 2
    opt, features, labels, w = instance(k, d, noise=0.05, seed=9)
    shards = [moved(shard, backend) for shard in shards_of(features, labels, k, world, seed=9)]
    results = on_threads(shards, opt, backend.asarray(w))
    for result in results:
        for vector in result.vectors.values():
            assert type(vector) is type(shards[0].stats.shift)
    results = [
        ShardTheory(
            r.values, {n: backend.to_numpy(v) for n, v in r.vectors.items()}, r.unavailable
        )
        for r in results
    ]
    assert_equal(results, report_of(features, labels, k, w, opt), 1e-10)


def moved(shard: ClassShard, backend: Any) -> ClassShard:
    """The same shard with its statistics on `backend`."""
    s = shard.stats
    fields = (s.counts, s.shift, s.sums, s.sqnorms, None, s.unit_scale)
    stats = ClassStats(*(None if f is None else backend.asarray(np.asarray(f)) for f in fields))
    return ClassShard(stats, shard.offset, shard.num_classes, None, shard.num_samples)


def test_float32_statistics_follow_the_float32_report() -> None:
    k, d, world = 40, 48, 3
    opt, features, labels, w = instance(k, d, noise=0.05, seed=10, lambdas=1e-3)
    x32, w32 = features.astype(np.float32), w.astype(np.float32)
    parts = split(labels, world, seed=10)
    stats = [ClassStats.from_features(x32[r], labels[r], k) for r in parts]
    results = on_threads(shard_on_threads(stats), opt, w32)
    report = report_of(x32, labels, k, w32, opt)
    assert report.dtype == "float32"
    assert_equal(results, report, 2e-4, vectors=False)
    for name in VECTORS:
        np.testing.assert_allclose(
            joined(results, name), getattr(report, name), rtol=2e-4, atol=1e-5
        )


# ----------------------------------------------------------------------------- method
def test_the_norms_estimate_is_corrected_by_the_tiles_own_sum() -> None:
    # || A / ||A|| - T / ||T|| || from tiles differenced against a norm 0.1% off
    rng = np.random.default_rng(0)
    a = np.eye(6) + 1e-4 * rng.normal(size=(6, 6))
    t = np.eye(6)
    want = np.linalg.norm(nf(a) - nf(t))
    b = np.linalg.norm(t)
    for a0 in (np.linalg.norm(a) * (1 + 1e-3), np.linalg.norm(a) * (1 - 1e-3)):
        tiles = [
            shard_theory_module._tile_sums(a[i : i + 2], t[i : i + 2], a0, b, np)
            for i in (0, 2, 4)
        ]
        got = shard_theory_module._distance(sum(tiles), np.float64(a0), np)
        assert float(got) == pytest.approx(want, rel=1e-9)


def test_host_reads_do_not_depend_on_the_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from host_sync import HostSyncAudit

    k, d = 9, 9
    opt, features, labels, w = instance(k, d, noise=0.05, seed=11)
    shard = reduce_scatter_class_stats(
        ClassStats.from_features(torch.asarray(features), torch.asarray(labels), k), ALONE
    )
    device_opt = ufm_relu_optimum(torch.asarray(np.asarray(opt.counts)), 1e-2, 1e-2, dim=d)
    w = torch.asarray(w)
    records = []
    for tile in (1 << 22, 5):
        monkeypatch.setattr(shard_theory_module, "_TILE_ENTRIES", tile)
        with HostSyncAudit() as audit:
            shard_theory_metrics(shard, ALONE, device_opt, classifier=w)
        records.append(audit.kinds())
    # the agreement of the ranks, then the three distances
    assert records[0] == records[1] == [("read", "cpu")] * 2


def test_no_array_of_k_by_k_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from torch.overrides import TorchFunctionMode

    class Largest(TorchFunctionMode):
        """The most entries of any tensor a torch call returns."""

        most = 0

        def __torch_function__(
            self, func: Any, types: Any, args: tuple = (), kwargs: Any = None
        ) -> Any:
            out = func(*args, **(kwargs or {}))
            for item in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(item, torch.Tensor):
                    self.most = max(self.most, item.numel())
            return out

    k, d = 64, 4  # K x K = 4096 entries; the rank's own rows K x 2d = 512
    rng = np.random.default_rng(12)
    labels = np.repeat(np.arange(k), 3)
    features = rng.normal(size=(k, d))[labels] + 0.1 * rng.normal(size=(3 * k, d))
    opt = ufm_relu_optimum(np.full(k, 3), 1e-3, 1e-3)
    shard = reduce_scatter_class_stats(
        ClassStats.from_features(torch.asarray(features), torch.asarray(labels), k), ALONE
    )
    w = torch.asarray(rng.normal(size=(k, d)))
    monkeypatch.setattr(shard_theory_module, "_TILE_ENTRIES", 128)
    with Largest() as mode:
        result = shard_theory_metrics(shard, ALONE, opt, classifier=w)
    assert mode.most <= 2 * k * d < k * k  # the exchanged rows; tiles of 128
    report = report_of(features, labels, k, w.numpy(), opt)
    assert_equal([result], report, 1e-10)
