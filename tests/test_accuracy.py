"""float32 statistics against float64 formulas on the same data, at the sizes users have.

Every path that makes statistics (the in-memory report, `from_features` on
NumPy and torch, `update` in any batch size and order, `merge` in any order
and tree, the distributed reduction, Dask) must give NC1 and CDNV within
1e-4 of a float64 formula written here, for collapsed features (spread
1e-5 of the mean norm), thousands of samples a class, adversarial orders and
any scale.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from world import reduce_on_threads

from ncgeom import ClassStats, merge_stats, metrics, nc_report

TOL = 1e-4


def collapsed(per_class, *, d=64, spread=1e-5, order="shuffled", scale=1.0, seed=0):
    """float32 features at non-negative unit-norm means plus noise of norm `spread`."""
    rng = np.random.default_rng(seed)
    counts = np.asarray(per_class)
    k = len(counts)
    means = np.abs(rng.normal(size=(k, d)))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    y = np.repeat(np.arange(k), counts)
    if order != "sorted":
        y = rng.permutation(y)
    x = means[y] + spread / np.sqrt(d) * rng.normal(size=(len(y), d))
    if order == "outlier":  # each class's first sample lies 1000 spreads away
        first = np.array([np.flatnonzero(y == c)[0] for c in range(k)])
        x[first] = means + 1000 * spread / np.sqrt(d) * rng.normal(size=(k, d))
    return (x * scale).astype(np.float32), y


def exact(x32, y, k):
    """NC1 and CDNV in float64 from their definitions."""
    x = x32.astype(np.float64)
    n = np.bincount(y, minlength=k)
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, y, x)
    mu = sums / n[:, None]
    centred = mu - x.mean(axis=0)
    dev = x - mu[y]
    within = dev.T @ dev / len(y)
    between = centred.T @ centred / k
    rtol = max(x.shape[1], k) * np.finfo(np.float64).eps
    nc1 = np.trace(within @ np.linalg.pinv(between, rtol=rtol)) / k
    var = np.bincount(y, weights=(dev**2).sum(axis=1), minlength=k) / n
    i, j = np.triu_indices(k, 1)
    cdnv = np.mean((var[i] + var[j]) / (2 * ((mu[i] - mu[j]) ** 2).sum(axis=1)))
    return float(nc1), float(cdnv)


def gram_conditioning(x32, y, k):
    """``||S_W||_2 sum_r w_r / sum_r w_r u_r^T S_W u_r``: how much a float32
    (d, d) within-class Gram, rounded entry by entry, can move NC1 (u_r, w_r:
    the between-class directions and their inverse eigenvalues). Near 1 for
    isotropic spread; large when one far sample dominates the scatter away from
    the between-class directions."""
    x = x32.astype(np.float64)
    mu = np.stack([x[y == c].mean(axis=0) for c in range(k)])
    centred = mu - x.mean(axis=0)
    dev = x - mu[y]
    scatter = dev.T @ dev
    if not scatter.any():  # no within-class spread: NC1 is exactly 0, nothing to round
        return 1.0
    lam, u = np.linalg.eigh(centred.T @ centred)
    keep = lam > max(x.shape[1], k) * np.finfo(np.float64).eps * lam.max()
    weights, basis = 1 / lam[keep], u[:, keep]
    along = np.einsum("ir,ij,jr->r", basis, scatter, basis)
    return float(np.linalg.norm(scatter, 2) * weights.sum() / (weights * along).sum())


def measured(source):
    if isinstance(source, ClassStats):
        return float(metrics.nc1(source)), float(metrics.cdnv(source))
    rep = nc_report(source)
    return rep.nc1, rep.cdnv


def streamed(x, y, k, batch, xp_from=np.asarray):
    stats = ClassStats.empty(k, x.shape[1], dtype=np.float32)
    for lo in range(0, len(y), batch):
        stats = stats.update(xp_from(x[lo : lo + batch]), xp_from(y[lo : lo + batch]))
    return stats


@pytest.mark.parametrize("order", ["shuffled", "sorted", "outlier"])
@pytest.mark.parametrize("per_class", [5_000, 20_000])
def test_every_path_keeps_nc1_and_cdnv_to_1e_4(order, per_class):
    k = 10
    x, y = collapsed([per_class] * k, order=order)
    want = exact(x, y, k)
    rng = np.random.default_rng(1)
    blocks = np.array_split(np.arange(len(y)), 7)
    parts = [ClassStats.from_features(x[b], y[b], k) for b in blocks]
    shuffled = [parts[i] for i in rng.permutation(len(parts))]
    tree = merge_stats(merge_stats(*shuffled[:3]), merge_stats(*shuffled[3:]))
    paths = {
        "report": (x, y),
        "from_features": ClassStats.from_features(x, y, k),
        "from_features_torch": ClassStats.from_features(
            torch.from_numpy(x), torch.from_numpy(y), k
        ),
        "update_4096": streamed(x, y, k, 4096),
        "update_777": streamed(x, y, k, 777),
        "merge_reversed": merge_stats(*parts[::-1]),
        "merge_tree": tree,
    }
    for name, source in paths.items():
        got = measured(source)
        assert got[0] > 0, name
        np.testing.assert_allclose(got, want, rtol=TOL, err_msg=name)


def test_merge_order_does_not_matter_when_a_class_starts_with_an_outlier():
    k = 4
    x, y = collapsed([3000] * k, order="outlier")
    want = exact(x, y, k)
    first = np.array([np.flatnonzero(y == c)[0] for c in range(k)])
    rest = np.setdiff1d(np.arange(len(y)), first)
    a = ClassStats.from_features(x[first], y[first], k)
    b = ClassStats.from_features(x[rest], y[rest], k)
    for merged in (a.merge(b), b.merge(a)):
        np.testing.assert_allclose(measured(merged), want, rtol=TOL)
        assert np.linalg.eigvalsh(merged.within_covariance()).min() > -1e-6 * want[0]


def test_imbalance_1_to_1000():
    counts = [20_000, 20_000, 200, 20]
    x, y = collapsed(counts)
    want = exact(x, y, len(counts))
    for source in ((x, y), ClassStats.from_features(x, y, 4), streamed(x, y, 4, 4096)):
        np.testing.assert_allclose(measured(source), want, rtol=TOL)


def test_distributed_reduction_recentres_on_the_global_means():
    k = 5
    x, y = collapsed([4000] * k, order="outlier")
    want = exact(x, y, k)
    # Rank 0 holds only the outliers; the others split the rest.
    first = np.array([np.flatnonzero(y == c)[0] for c in range(k)])
    rest = np.setdiff1d(np.arange(len(y)), first)
    halves = np.array_split(rest, 2)
    parts = [ClassStats.from_features(x[i], y[i], k) for i in (first, *halves)]
    stats = _reduce_in_lock_step(parts)
    np.testing.assert_allclose(measured(stats), want, rtol=TOL)
    np.testing.assert_array_equal(stats.counts, np.bincount(y, minlength=k))


def _reduce_in_lock_step(parts, steps=None):
    """Run `reduce_class_stats` for every rank of a simulated world; return rank 0's result.

    An error on any rank is raised (after every rank has finished).
    """
    per_rank = None if steps is None else [{"step": step} for step in steps]
    results = reduce_on_threads(parts, per_rank)
    errors = [r for r in results if isinstance(r, Exception)]
    if errors:
        assert len(errors) == len(parts)  # every rank learns of it, none waits
        raise errors[0]
    for other in results[1:]:
        np.testing.assert_array_equal(other.counts, results[0].counts)
    return results[0]


def test_ranks_out_of_step_are_refused_on_every_rank():
    x, y = collapsed([50] * 3)
    parts = [ClassStats.from_features(x[i::2], y[i::2], 3) for i in range(2)]
    with pytest.raises(ValueError, match=r"disagree on step \(rank 0: 4, rank 1: 3\)"):
        _reduce_in_lock_step(parts, steps=[4, 3])
    assert int(_reduce_in_lock_step(parts, steps=[4, 4]).counts.sum()) == 150


def test_dask_blocks_keep_nc1_to_1e_4():
    da = pytest.importorskip("dask.array")
    from ncgeom.outofcore import stats_from_dask

    k = 10
    x, y = collapsed([5000] * k, order="sorted")
    stats = stats_from_dask(da.from_array(x, chunks=(3001, 64)), y, k, scheduler="sync")
    np.testing.assert_allclose(measured(stats), exact(x, y, k), rtol=TOL)


@pytest.mark.parametrize("scale", [1e-20, 1e-10, 1e10, 1e20])
def test_scale_free_metrics_do_not_depend_on_the_features_size(scale):
    k = 6
    x, y = collapsed([2000] * k, spread=1e-3)
    xs, _ = collapsed([2000] * k, spread=1e-3, scale=scale)
    w = np.abs(np.random.default_rng(3).normal(size=(k, 64)))
    base = nc_report((x, y), w)
    names = [
        "nc1",
        "cdnv",
        "etf_error",
        "equinorm",
        "equiangularity",
        "orthogonality_error",
        "self_duality_error",
        "scaled_alignment_error",
    ]
    for source in ((xs, y), ClassStats.from_features(xs, y, k), streamed(xs, y, k, 2500)):
        got = nc_report(source, w * scale)
        for name in names:
            assert getattr(got, name) == pytest.approx(getattr(base, name), rel=TOL), name
        ratio = got.within_variance / (scale**2 * base.within_variance)
        assert ratio == pytest.approx(1, rel=TOL)
    assert nc_report((xs, y), w).ncc_agreement == base.ncc_agreement


def test_dead_features_are_never_perfect_collapse():
    x = np.zeros((300, 8), dtype=np.float32)
    y = np.arange(300) % 3
    with pytest.warns(UserWarning, match="every class mean is zero") as caught:
        rep = nc_report((x, y), np.ones((3, 8)))
    assert len([w for w in caught if "degenerate" in str(w.message)]) == 1
    assert caught[0].filename == __file__  # points at the caller's line
    why = dict(rep.unavailable)
    for name in ("nc1", "cdnv", "etf_error", "orthogonality_error", "equiangularity"):
        assert np.isnan(getattr(rep, name)), name
        assert "coincide" in why[name] or "zero" in why[name], name
    assert np.isnan(float(metrics.nc1(ClassStats.from_features(x, y, 3))))


def test_coincident_means_make_cdnv_undefined():
    rng = np.random.default_rng(0)
    means = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]])
    y = np.arange(900) % 3
    x = means[y] + 0.01 * rng.normal(size=(900, 3))
    x[y == 1] = x[y == 0][: (y == 1).sum()]  # class 1 repeats class 0's samples
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep = nc_report((x, y))
    assert np.isnan(rep.cdnv) and "coincide" in dict(rep.unavailable)["cdnv"]
    assert np.isfinite(rep.nc1)
    assert len(caught) == 1


def _scaled_alignment_reference(w, counts, means):
    """float64 ``|| W/||W|| - T/||T|| ||_F``, ``T_k = K sqrt(n_k) mu_k - sum_j sqrt(n_j) mu_j``."""
    scaled = np.sqrt(counts)[:, None] * means
    target = len(counts) * scaled - scaled.sum(axis=0)
    return np.linalg.norm(w / np.linalg.norm(w) - target / np.linalg.norm(target))


@pytest.mark.parametrize("second", [[1.0, 0.0], [1.0, 0.5]])
def test_scaled_alignment_undefined_only_when_the_scaled_means_coincide(backend, second):
    # Counts 1 and 4: sqrt(n) mu is (2, 0) for both classes when mu_1 = (1, 0),
    # although the means themselves differ.
    x = np.array([[2.0, 0.0], second, second, second, second])
    y = np.array([0, 1, 1, 1, 1])
    w = np.array([[1.0, 0.0], [0.0, 1.0]])
    source = ClassStats.from_features(backend.asarray(x), backend.asarray(y), 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep = nc_report(source, backend.asarray(w))
    if second == [1.0, 0.0]:
        assert np.isnan(rep.scaled_alignment_error)
        assert (
            "sqrt(n)-scaled class means coincide"
            in dict(rep.unavailable)["scaled_alignment_error"]
        )
        assert len(caught) == 1 and "scaled_alignment_error" in str(caught[0].message)
        assert np.isfinite(rep.self_duality_error)  # the means themselves differ
    else:
        want = _scaled_alignment_reference(w, np.array([1.0, 4.0]), np.array([[2.0, 0], second]))
        assert rep.scaled_alignment_error == pytest.approx(want, rel=1e-12)
        assert "scaled_alignment_error" not in dict(rep.unavailable)
        assert caught == []


def test_statistics_never_keep_an_autograd_graph():
    import gc
    import weakref

    w = torch.randn(16, 8, requires_grad=True)
    stats = ClassStats.empty(3, 8, dtype=torch.float32, xp=torch)
    alive = []
    for _ in range(50):
        hidden = torch.relu(torch.randn(32, 16) @ w)  # part of a training step's graph
        alive.append(weakref.ref(hidden))
        stats = stats.update(hidden, torch.arange(32) % 3)
        del hidden
    gc.collect()
    for array in (stats.shift, stats.sums, stats.sqnorms, stats.gram, stats.scale):
        assert not array.requires_grad and array.grad_fn is None
    assert sum(ref() is not None for ref in alive) == 0  # every batch's graph was freed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("order", ["shuffled", "outlier"])
def test_cuda_paths_keep_nc1_and_cdnv_to_1e_4(order):
    k = 10
    x, y = collapsed([20_000] * k, order=order)
    want = exact(x, y, k)
    xc, yc = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
    stats = ClassStats.empty(k, 64, xp=torch, device=xc.device, dtype=torch.float32)
    for lo in range(0, len(y), 8192):
        stats = stats.update(xc[lo : lo + 8192], yc[lo : lo + 8192])
    for source in ((xc, yc), ClassStats.from_features(xc, yc, k), stats):
        np.testing.assert_allclose(measured(source), want, rtol=TOL)


# An outlier that dominates the scatter is where the NC1 warning belongs; the
# tolerance below takes the same bound into account.
@pytest.mark.filterwarnings("ignore:NC1 from these float32")
@settings(max_examples=25, deadline=None, derandomize=True)  # reproducible in CI
@given(
    per_class=st.lists(st.integers(1, 3000), min_size=2, max_size=6),
    spread=st.sampled_from([1e-5, 1e-4, 1e-2]),
    order=st.sampled_from(["shuffled", "sorted", "outlier"]),
    log_scale=st.integers(-20, 20),
    batch=st.integers(50, 5000),
    seed=st.integers(0, 2**16),
)
@example(per_class=[50, 1], spread=1e-5, order="outlier", log_scale=0, batch=50, seed=1140)
@example(per_class=[2782, 2], spread=1e-5, order="outlier", log_scale=0, batch=50, seed=10)
def test_streamed_and_in_memory_agree_with_float64(
    per_class, spread, order, log_scale, batch, seed
):
    k = len(per_class)
    x, y = collapsed(per_class, d=16, spread=spread, order=order, scale=10.0**log_scale, seed=seed)
    want = exact(x, y, k)
    # NC1 from a float32 Gram: within 1e-4, or within the Gram's own rounding
    # where one outlier dominates the scatter (see docs/accuracy.md).
    nc1_tol = TOL + 4 * np.finfo(np.float32).eps * gram_conditioning(x, y, k)
    for source in ((x, y), ClassStats.from_features(x, y, k), streamed(x, y, k, batch)):
        got = measured(source)
        assert got[0] >= 0
        np.testing.assert_allclose(got[0], want[0], rtol=nc1_tol)
        np.testing.assert_allclose(got[1], want[1], rtol=TOL)


@pytest.mark.slow
@pytest.mark.parametrize("order", ["shuffled", "outlier"])
def test_100_000_samples_a_class(order):
    k = 10
    x, y = collapsed([100_000] * k, d=32, order=order)
    want = exact(x, y, k)
    for source in ((x, y), ClassStats.from_features(x, y, k), streamed(x, y, k, 8192)):
        np.testing.assert_allclose(measured(source), want, rtol=TOL)


def test_the_float64_means_run_only_where_float32_would_cost_precision(monkeypatch):
    import ncgeom.stats as engine

    calls = []
    original = engine._scaled_class_means

    def spy(*args, exact, **kwargs):
        calls.append(exact)
        return original(*args, exact=exact, **kwargs)

    monkeypatch.setattr(engine, "_scaled_class_means", spy)
    ordinary, y = collapsed([2000] * 5, spread=0.3)
    ClassStats.from_features(ordinary, y, 5)
    assert calls == [False]  # one pass for the means, in float32
    calls.clear()
    tight, y = collapsed([20_000] * 5, spread=1e-5, order="sorted")
    got = ClassStats.from_features(tight, y, 5)
    assert calls == [False, True]  # the bound failed: float64 means, and exact
    np.testing.assert_allclose(measured(got), exact(tight, y, 5), rtol=TOL)


def test_a_batch_far_larger_than_the_running_statistics_takes_its_own_scale():
    # Its squares would overflow in the running statistics' units: the engine
    # falls back to the batch's own means and scale, and merges exactly.
    k = 3
    x, y = collapsed([400] * k, d=8, spread=1e-2)
    mixed = x.copy()
    mixed[600:] *= np.float32(1e20)  # the second batch, 1e20 times the first
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        stats = ClassStats.empty(k, 8, dtype=np.float32).update(mixed[:600], y[:600])
        stats = stats.update(mixed[600:], y[600:])
        got = measured(stats)
    np.testing.assert_array_equal(stats.counts, np.bincount(y, minlength=k))
    np.testing.assert_allclose(got, exact(mixed, y, k), rtol=TOL)
