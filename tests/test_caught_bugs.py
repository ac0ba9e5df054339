"""Reference tests for bugs the rest of the suite would let through.

Every expected value is computed here, in float64 NumPy, from the definitions
in ``docs/metrics.md``; none is taken from the code under test. Each test
names the bug it is there to catch.
"""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
from world import reduce_on_threads

from ncgeom import ClassStats, merge_stats, nc_report
from ncgeom.metrics import cdnv, etf_error, ncc_agreement

# ----------------------------------------------------------------------------- references


def _class_means(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.stack([x[y == c].mean(axis=0) for c in range(k)])


def _class_variances(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """``v_k = (1/n_k) sum_{i in k} ||x_i - mu_k||^2``."""
    x = np.asarray(x, dtype=np.float64)
    means = _class_means(x, y, k)
    return np.array([np.mean(np.sum((x[y == c] - means[c]) ** 2, axis=1)) for c in range(k)])


def _within_scatter(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    dev = x - _class_means(x, y, k)[y]
    return dev.T @ dev


def _nearest_centre_agreement(x, w, b, means) -> int:
    """Rows where ``argmax_k (W x + b)_k == argmin_k ||x - mu_k||``."""
    logits = x @ w.T + (0.0 if b is None else b)
    dist = np.sum((x[:, None, :] - means[None, :, :]) ** 2, axis=2)
    return int(np.sum(np.argmax(logits, axis=1) == np.argmin(dist, axis=1)))


def _etf_error(x: np.ndarray, y: np.ndarray, k: int, global_mean: str) -> float:
    """``|| nf(Mc Mc^T) - nf(I - J/K) ||_F``, Mc the means less the global mean."""
    means = _class_means(x, y, k)
    if global_mean == "samples":
        centre = np.asarray(x, dtype=np.float64).mean(axis=0)
    else:
        centre = means.mean(axis=0)
    centred = means - centre
    gram = centred @ centred.T
    target = np.eye(k) - np.ones((k, k)) / k
    diff = gram / np.linalg.norm(gram) - target / np.linalg.norm(target)
    return float(np.linalg.norm(diff))


def _cdnv(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """``mean_{k<l} (v_k + v_l) / (2 ||mu_k - mu_l||^2)``."""
    means, var = _class_means(x, y, k), _class_variances(x, y, k)
    terms = [
        (var[a] + var[b]) / (2 * np.sum((means[a] - means[b]) ** 2))
        for a in range(k)
        for b in range(a + 1, k)
    ]
    return float(np.mean(terms))


# ----------------------------------------------------------------------------- 1. NCC and bias


def _biased_problem(seed: int = 0):
    """Features of 4 classes, a classifier along the centred class means, and a
    bias large enough to change the classifier's argmax for many rows."""
    rng = np.random.default_rng(seed)
    k, d, n = 4, 6, 400
    centres = 3.0 * rng.normal(size=(k, d))
    y = np.arange(n) % k
    x = centres[y] + 2.0 * rng.normal(size=(n, d))
    means = _class_means(x, y, k)
    w = means - means.mean(axis=0)
    logits = x @ w.T
    bias = np.array([1.0, -0.6, 0.2, -0.4]) * np.std(logits)
    return x, y, w, bias, means


def test_bias_data_really_changes_the_argmax():
    # The tests below only catch an ignored or negated bias if the bias matters.
    x, _, w, bias, means = _biased_problem()
    plain = np.argmax(x @ w.T, axis=1)
    assert np.mean(np.argmax(x @ w.T + bias, axis=1) != plain) > 0.2
    assert np.mean(np.argmax(x @ w.T - bias, axis=1) != plain) > 0.1
    counts = {_nearest_centre_agreement(x, w, b, means) for b in (None, bias, -bias, 2 * bias)}
    assert len(counts) == 4  # every wrong use of the bias changes the count


@pytest.mark.parametrize("chunk_size", [None, 37])
def test_ncc_agreement_uses_the_bias(backend, chunk_size):
    # Bug: the bias ignored, negated or not rescaled with the classifier.
    x, _, w, bias, means = _biased_problem()
    want = _nearest_centre_agreement(x, w, bias, means)
    got = ncc_agreement(
        backend.asarray(x),
        backend.asarray(w),
        backend.asarray(means),
        backend.asarray(bias),
        chunk_size=chunk_size,
    )
    assert int(backend.to_numpy(got.matches)) == want
    assert int(backend.to_numpy(got.total)) == len(x)
    # A large classifier keeps the same argmax when its bias is scaled alike.
    scaled = ncc_agreement(
        backend.asarray(x),
        backend.asarray(1e3 * w),
        backend.asarray(means),
        backend.asarray(1e3 * bias),
        chunk_size=chunk_size,
    )
    assert int(backend.to_numpy(scaled.matches)) == want


@pytest.mark.parametrize("chunk_size", [None, 37])
def test_report_ncc_agreement_uses_the_bias(backend, chunk_size):
    # Bug: nc_report's in-memory pass drops or negates the bias in its logits.
    x, y, w, bias, means = _biased_problem()
    want = _nearest_centre_agreement(x, w, bias, means) / len(x)
    report = nc_report(
        (backend.asarray(x), backend.asarray(y)),
        classifier=backend.asarray(w),
        bias=backend.asarray(bias),
        chunk_size=chunk_size,
    )
    assert report.ncc_agreement == pytest.approx(want, abs=1e-12)
    unbiased = nc_report((backend.asarray(x), backend.asarray(y)), classifier=backend.asarray(w))
    assert unbiased.ncc_agreement == pytest.approx(
        _nearest_centre_agreement(x, w, None, means) / len(x), abs=1e-12
    )


# ----------------------------------------------------------------------------- 2. ETF, K > d


@pytest.mark.parametrize("global_mean", ["samples", "classes"])
@pytest.mark.parametrize(("k", "d"), [(12, 5), (5, 12)])
def test_etf_error_reference_on_both_sides_of_k_equals_d(backend, k, d, global_mean):
    # Bug: the (d, d) Gram shortcut taken when K > d, with a wrong norm or target.
    rng = np.random.default_rng(k * 100 + d)
    counts = rng.integers(3, 20, size=k)
    y = np.repeat(np.arange(k), counts)
    x = 4.0 * rng.normal(size=(k, d))[y] + rng.normal(size=(len(y), d))
    want = _etf_error(x, y, k, global_mean)
    stats = ClassStats.from_features(backend.asarray(x), backend.asarray(y), k)
    for block_rows in (None, 5):
        got = etf_error(stats, global_mean=global_mean, block_rows=block_rows)
        assert float(backend.to_numpy(got)) == pytest.approx(want, rel=1e-9)
    report = nc_report((backend.asarray(x), backend.asarray(y)), global_mean=global_mean)
    assert report.etf_error == pytest.approx(want, rel=1e-9)


def test_etf_error_is_zero_for_a_simplex_with_more_classes_than_dimensions():
    # K = 12 points cannot form a simplex ETF in d = 5: the error is positive
    # and equal to the reference, and a true ETF (d = K) gives 0.
    k = 12
    etf = np.eye(k) - 1 / k
    y = np.arange(k)
    stats = ClassStats.from_features(etf, y, k)
    assert float(etf_error(stats)) == pytest.approx(0.0, abs=1e-12)
    flat = etf[:, :5]
    assert float(etf_error(ClassStats.from_features(flat, y, k))) == pytest.approx(
        _etf_error(flat, y, k, "samples"), rel=1e-10
    )


# ----------------------------------------------------------------------------- 3. tracker graph


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tracker_statistics_hold_no_autograd_graph(dtype):
    # Bug: NCTracker.observe (or the update below it) keeps the features' graph.
    torch = pytest.importorskip("torch")
    from ncgeom_torch import NCTracker

    torch.manual_seed(0)
    weight = torch.randn(10, 6, requires_grad=True)
    tracker = NCTracker(num_classes=3, dtype=getattr(torch, dtype))
    batches = []
    for _ in range(4):
        features = torch.tanh(torch.randn(30, 10) @ weight)
        assert features.requires_grad
        labels = torch.arange(30) % 3
        tracker.observe(features, labels)
        batches.append(features.detach().double().numpy())
    for stats in (tracker.stats, tracker.combined_stats()):
        tensors = [
            getattr(stats, f.name)
            for f in dataclasses.fields(stats)
            if isinstance(getattr(stats, f.name), torch.Tensor)
        ]
        assert len(tensors) >= 5
        for tensor in tensors:
            assert not tensor.requires_grad and tensor.grad_fn is None
        for derived in (stats.means, stats.class_variances, stats.within_scatter()):
            assert not derived.requires_grad and derived.grad_fn is None
    # The statistics are still those of the observed values.
    x = np.concatenate(batches)
    y = np.arange(len(x)) % 30 % 3
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(tracker.stats.means.numpy(), _class_means(x, y, 3), rtol=tol)
    # The caller's tensor keeps its graph: observing did not detach it in place.
    assert features.requires_grad and features.grad_fn is not None


# ----------------------------------------------------------------------------- 4. CDNV far from 0


def _far_features(seed: int = 0):
    """float32 features whose class means have norm ~1000 and a small spread."""
    rng = np.random.default_rng(seed)
    k, d, n = 4, 8, 2000
    centres = rng.normal(size=(k, d))
    centres = 1000.0 * centres / np.linalg.norm(centres, axis=1, keepdims=True)
    centres += 0.8 * rng.normal(size=(k, d))  # pairs stay well apart
    y = rng.integers(0, k, size=n)
    x = centres[y] + 0.3 * rng.normal(size=(n, d))
    return x.astype(np.float32), y, k


def test_cdnv_far_from_the_origin_in_float32(backend):
    # Bug: class variances from uncentred moments (E||x||^2 - ||mu||^2), which
    # lose about 7e-2 of the CDNV here in float32; centred sums keep ~3e-4.
    x32, y, k = _far_features()
    want = _cdnv(x32.astype(np.float64), y, k)
    xb, yb = backend.asarray(x32), backend.asarray(y)
    stats = ClassStats.from_features(xb, yb, k)
    assert float(backend.to_numpy(cdnv(stats))) == pytest.approx(want, rel=1e-3)
    np.testing.assert_allclose(
        backend.to_numpy(stats.class_variances), _class_variances(x32, y, k), rtol=1e-3
    )
    streamed = ClassStats.empty(
        k, x32.shape[1], xp=backend.xp, device=backend.device, dtype=backend.xp.float32
    )
    for lo in range(0, len(y), 300):
        hi = min(lo + 300, len(y))
        streamed = streamed.update(xb[lo:hi, ...], yb[lo:hi])
    assert float(backend.to_numpy(cdnv(streamed))) == pytest.approx(want, rel=1e-3)
    assert nc_report((xb, yb)).cdnv == pytest.approx(want, rel=1e-3)


# ----------------------------------------------------------------------------- 5. verify


VERIFY_SMALL = [
    *("--configs", "2", "--max-classes", "3", "--max-count", "6"),
    *("--seed", "3", "--max-iter", "5000", "--restarts", "4"),
]


def test_verify_passes_a_small_run_that_truly_passes(capsys):
    # Bug: verify reports configurations as failed (or exits 1) when all pass.
    pytest.importorskip("ncgeom.theory.solve")
    from ncgeom.integrations.cli import main

    code = main(["verify", *VERIFY_SMALL])
    out = capsys.readouterr().out
    assert code == 0
    assert "all configurations within the limits" in out
    assert "outside the limits" not in out
    code = main(["verify", *VERIFY_SMALL, "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["failed"] == [] and len(data["configs"]) == 2


def test_verify_names_an_injected_failure(monkeypatch, capsys):
    # Bug: verify exits 0, or blames the wrong configuration, when one fails.
    pytest.importorskip("ncgeom.theory.solve")
    import ncgeom.theory.solve as solve
    from ncgeom.integrations.cli import main

    real = solve.solve_ufm
    seen: list[list[int]] = []

    def worse(counts, *args, **kwargs):
        solution = real(counts, *args, **kwargs)
        seen.append([int(c) for c in counts])
        if len(seen) == 2:  # configuration #1: 10 % above the optimum
            return dataclasses.replace(solution, objective=solution.objective * 1.1)
        return solution

    monkeypatch.setattr(solve, "solve_ufm", worse)
    code = main(["verify", *VERIFY_SMALL])
    out = capsys.readouterr().out
    assert code == 1
    assert "1 configuration(s) outside the limits" in out
    assert f"#1: counts={seen[1]}" in out
    assert "#0:" not in out
    assert "all configurations within the limits" not in out
    seen.clear()
    code = main(["verify", *VERIFY_SMALL, "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1 and data["failed"] == [1]
    assert data["configs"][1]["counts"] == seen[1]


# ----------------------------------------------------------------------------- 6. merges


def _spread_data(seed: int = 0):
    """Classes of different sizes with means far from 0 (non-zero sums)."""
    rng = np.random.default_rng(seed)
    k, d = 4, 3
    counts = np.array([40, 7, 23, 15])
    y = np.repeat(np.arange(k), counts)
    x = (np.array([5.0, -3.0, 8.0]) + 6.0 * rng.normal(size=(k, d)))[y]
    x = x + rng.normal(size=(len(y), d)) * np.array([1.0, 0.5, 2.0])
    return x, y, k


def _assert_matches_reference(backend, stats, x, y, k, rtol=1e-11):
    np.testing.assert_array_equal(backend.to_numpy(stats.counts), np.bincount(y, minlength=k))
    np.testing.assert_allclose(backend.to_numpy(stats.means), _class_means(x, y, k), rtol=rtol)
    np.testing.assert_allclose(
        backend.to_numpy(stats.global_mean), x.mean(axis=0), rtol=rtol, atol=1e-12
    )
    np.testing.assert_allclose(
        backend.to_numpy(stats.class_variances), _class_variances(x, y, k), rtol=1e-10
    )
    np.testing.assert_allclose(
        backend.to_numpy(stats.within_scatter()), _within_scatter(x, y, k), rtol=1e-10, atol=1e-9
    )
    np.testing.assert_allclose(
        backend.to_numpy(stats.within_covariance()),
        _within_scatter(x, y, k) / len(y),
        rtol=1e-10,
        atol=1e-11,
    )


def _assert_raw_about(backend, stats, x, y, shift):
    """The stored sums, squared norms and Gram about a shift chosen by the test."""
    dev = x - shift[y]
    k = shift.shape[0]
    sums = np.stack([dev[y == c].sum(axis=0) for c in range(k)])
    sq = np.array([np.sum(dev[y == c] ** 2) for c in range(k)])
    assert float(backend.to_numpy(stats.unit_scale)) == 1.0
    np.testing.assert_allclose(backend.to_numpy(stats.shift), shift, rtol=0, atol=0)
    np.testing.assert_allclose(backend.to_numpy(stats.sums), sums, rtol=1e-11, atol=1e-10)
    np.testing.assert_allclose(backend.to_numpy(stats.sqnorms), sq, rtol=1e-11)
    np.testing.assert_allclose(backend.to_numpy(stats.gram), dev.T @ dev, rtol=1e-11, atol=1e-9)


def test_from_features_and_rebase_match_the_reference(backend):
    x, y, k = _spread_data()
    stats = ClassStats.from_features(backend.asarray(x), backend.asarray(y), k)
    _assert_matches_reference(backend, stats, x, y, k)
    shift = np.arange(k * 3, dtype=np.float64).reshape(k, 3) - 4.0
    moved = stats.rebase(backend.asarray(shift))
    assert np.all(np.abs(backend.to_numpy(moved.sums)) > 1.0)  # really non-zero sums
    _assert_raw_about(backend, moved, x, y, shift)
    _assert_matches_reference(backend, moved, x, y, k)


def test_streamed_updates_in_shuffled_order_match_the_reference(backend):
    x, y, k = _spread_data()
    rng = np.random.default_rng(1)
    order = rng.permutation(len(y))
    xs, ys = x[order], y[order]
    stats = ClassStats.empty(k, 3, xp=backend.xp, device=backend.device)
    bounds = [0, 5, 9, 30, 31, 52, 70, len(y)]  # uneven batches, some without a class
    for lo, hi in itertools.pairwise(bounds):
        stats = stats.update(backend.asarray(xs[lo:hi]), backend.asarray(ys[lo:hi]))
    _assert_matches_reference(backend, stats, x, y, k)
    # The later batches hold every class: they are summed about the running
    # shifts, and the stored sums are the deviations from those shifts.
    raw = backend.to_numpy(stats.shift)
    _assert_raw_about(backend, stats, x, y, raw)
    # A second order gives the same statistics.
    again = ClassStats.empty(k, 3, xp=backend.xp, device=backend.device)
    for part in np.array_split(rng.permutation(len(y)), 6):
        again = again.update(backend.asarray(x[part]), backend.asarray(y[part]))
    _assert_matches_reference(backend, again, x, y, k)


def _blocks(backend, x, y, k, parts):
    """Statistics of each part, moved to shifts that are NOT the class means."""
    rng = np.random.default_rng(7)
    out = []
    for part in parts:
        stats = ClassStats.from_features(backend.asarray(x[part]), backend.asarray(y[part]), k)
        shift = np.round(8.0 * rng.normal(size=(k, 3)))
        out.append(stats.rebase(backend.asarray(shift)))
    return out


def test_merges_of_blocks_match_the_reference(backend):
    x, y, k = _spread_data()
    order = np.random.default_rng(2).permutation(len(y))
    parts = np.array_split(order, 5)
    parts[2] = parts[2][y[parts[2]] != 1]  # a block without class 1
    kept = np.sort(np.concatenate(parts))
    x, y = x[kept], y[kept]
    parts = [np.searchsorted(kept, p) for p in parts]
    blocks = _blocks(backend, x, y, k, parts)
    assert all(np.any(np.abs(backend.to_numpy(b.sums)) > 1.0) for b in blocks)
    left = blocks[0]
    for block in blocks[1:]:
        left = left.merge(block)
    _assert_matches_reference(backend, left, x, y, k)
    tree = (blocks[3].merge(blocks[1])).merge(blocks[4].merge(blocks[0].merge(blocks[2])))
    _assert_matches_reference(backend, tree, x, y, k)
    _assert_matches_reference(backend, merge_stats(*blocks[::-1]), x, y, k)
    empty = ClassStats.empty(k, 3, xp=backend.xp, device=backend.device)
    _assert_matches_reference(backend, empty.merge(merge_stats(*blocks)).merge(empty), x, y, k)


def _reduce_world(parts):
    """`reduce_class_stats` on a simulated world (one thread per rank)."""
    results = reduce_on_threads(parts)
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


def test_reduce_class_stats_over_three_ranks_matches_the_reference(backend):
    x, y, k = _spread_data()
    order = np.random.default_rng(3).permutation(len(y))
    parts = [order[:50], order[50:52], order[52:]]
    blocks = _blocks(backend, x, y, k, parts)
    results = _reduce_world(blocks)
    for stats in results:
        _assert_matches_reference(backend, stats, x, y, k)
    # Every rank holds the same numbers.
    for other in results[1:]:
        for name in ("shift", "sums", "sqnorms", "gram"):
            np.testing.assert_array_equal(
                backend.to_numpy(getattr(other, name)), backend.to_numpy(getattr(results[0], name))
            )
    # A rank that saw nothing contributes nothing.
    empty = ClassStats.empty(k, 3, xp=backend.xp, device=backend.device)
    for stats in _reduce_world([blocks[0], empty, blocks[2]]):
        keep = np.concatenate([parts[0], parts[2]])
        _assert_matches_reference(backend, stats, x[keep], y[keep], k)
