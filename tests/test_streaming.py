"""Updates by the rows of the batch's classes: `ClassStats.update` and `StreamingClassStats`.

Every expected value is a float64 NumPy formula written here, on the same
(rounded) feature values.
"""

from __future__ import annotations

import numpy as np
import pytest

import ncgeom.stats as stats_module
from ncgeom import ClassStats, StreamingClassStats


def _reference(x: np.ndarray, y: np.ndarray, k: int) -> dict[str, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    counts = np.bincount(y, minlength=k)
    means = np.full((k, x.shape[1]), np.nan)
    variances = np.full(k, np.nan)
    within = np.zeros((x.shape[1], x.shape[1]))
    for c in np.flatnonzero(counts):
        rows = x[y == c]
        means[c] = rows.mean(axis=0)
        deviations = rows - means[c]
        variances[c] = (deviations**2).sum() / len(rows)
        within += deviations.T @ deviations
    return {"counts": counts, "means": means, "variances": variances, "within": within / len(y)}


def _token_stream(k: int, d: int, n: int, seed: int, scale: float = 1.0):
    """Zipf-distributed classes around far-apart centres: most batches hold few classes."""
    rng = np.random.default_rng(seed)
    y = np.minimum(rng.zipf(1.3, size=n) - 1, k - 1)
    centres = 10 * rng.normal(size=(k, d))
    x = (centres[y] + rng.normal(size=(n, d))) * scale
    return x, y


def _stream(make, x, y, batch):
    stats = make()
    for start in range(0, y.shape[0], batch):
        out = stats.update(x[start : start + batch, ...], y[start : start + batch])
        stats = out if isinstance(out, ClassStats) else stats
    return stats.stats() if isinstance(stats, StreamingClassStats) else stats


def _check(stats: ClassStats, ref: dict[str, np.ndarray], rtol: float, to_numpy=np.asarray):
    counts = to_numpy(stats.counts)
    np.testing.assert_array_equal(counts, ref["counts"])
    seen = counts > 0
    means = to_numpy(stats.means)[seen]
    size = np.abs(ref["means"][seen]).max(axis=1, keepdims=True)
    error = np.abs(means - ref["means"][seen])
    np.testing.assert_array_less(error, np.broadcast_to(rtol * size + 1e-300, error.shape))
    variances = to_numpy(stats.class_variances)[seen]
    np.testing.assert_allclose(variances, ref["variances"][seen], rtol=rtol, atol=0)
    within = to_numpy(stats.within_covariance())
    largest = np.abs(ref["within"]).max()
    np.testing.assert_array_less(np.abs(within - ref["within"]), rtol * largest)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["ClassStats", "StreamingClassStats"])
def test_batches_of_few_classes_give_the_float64_statistics(kind, dtype):
    k, d = 2000, 8
    x, y = _token_stream(k, d, 6000, seed=1)
    x = x.astype(dtype)
    ref = _reference(x, y, k)
    make = {
        "ClassStats": lambda: ClassStats.empty(k, d, dtype=dtype),
        "StreamingClassStats": lambda: StreamingClassStats(k, d, dtype=dtype),
    }[kind]
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for batch in (7, 64, 512):
        _check(_stream(make, x, y, batch), ref, rtol)
    order = np.random.default_rng(2).permutation(len(y))
    _check(_stream(make, x[order], y[order], 64), ref, rtol)


def test_the_rows_path_matches_the_whole_table_path(monkeypatch):
    k, d = 300, 6
    x, y = _token_stream(k, d, 3000, seed=3)
    rows = _stream(lambda: ClassStats.empty(k, d), x, y, 32)
    monkeypatch.setattr(stats_module, "PRESENT_CLASS_FRACTION", -1.0)
    whole = _stream(lambda: ClassStats.empty(k, d), x, y, 32)
    seen = np.asarray(whole.counts) > 0
    np.testing.assert_array_equal(rows.counts, whole.counts)
    np.testing.assert_allclose(rows.means[seen], whole.means[seen], rtol=1e-14)
    np.testing.assert_allclose(rows.class_variances[seen], whole.class_variances[seen], rtol=1e-12)
    np.testing.assert_allclose(rows.within_covariance(), whole.within_covariance(), rtol=1e-11)


@pytest.mark.parametrize(
    ("scale", "dtype"),
    [(s, np.float64) for s in (1e-20, 1e-5, 1.0, 1e5, 1e20)]
    # float32 holds the squared deviations (the variances) from about 1e-19 to 1e19
    + [(s, np.float32) for s in (1e-9, 1.0, 1e9)],
)
def test_units_follow_the_features_from_1e_minus_20_to_1e20(scale, dtype):
    k, d = 500, 4
    x, y = _token_stream(k, d, 2000, seed=4, scale=scale)
    x = x.astype(dtype)
    ref = _reference(x, y, k)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    _check(_stream(lambda: StreamingClassStats(k, d, dtype=dtype), x, y, 16), ref, rtol)
    _check(_stream(lambda: ClassStats.empty(k, d, dtype=dtype), x, y, 16), ref, rtol)


def test_a_batch_far_larger_than_the_running_scale_rescales_every_row():
    # float32 squares overflow above about 1.8e19: the second part's classes
    # force a new power-of-two scale, which every row takes, the rows of the
    # classes seen before (50-99 get samples at both sizes) and after (300-399).
    k, d = 400, 3
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(k, d)) * 4
    parts = [(0, 100, 1.0), (50, 150, 1e25), (300, 400, 1.0)]
    xs, ys = [], []
    for low, high, size in parts:
        labels = rng.integers(low, high, size=300)
        xs.append((centres[labels] + rng.normal(size=(300, d))) * size)
        ys.append(labels)
    x, y = np.concatenate(xs).astype(np.float32), np.concatenate(ys)
    ref = _reference(x, y, k)
    counts = ref["counts"]
    for make in (
        lambda: StreamingClassStats(k, d, dtype=np.float32),
        lambda: ClassStats.empty(k, d, dtype=np.float32),
    ):
        stats = _stream(make, x, y, 50)
        assert float(stats.unit_scale) > 1e10
        np.testing.assert_array_equal(stats.counts, counts)
        for block in (slice(0, 50), slice(50, 150), slice(300, 400)):
            seen = counts[block] > 0
            got, want = stats.means[block][seen], ref["means"][block][seen]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
        # the variances of the large classes (1e48 to 1e50) exceed float32: in float64
        variances = np.asarray(stats.scaled_variances(), np.float64) * float(stats.unit_scale) ** 2
        seen = counts[100:150] > 0
        np.testing.assert_allclose(
            variances[100:150][seen], ref["variances"][100:150][seen], rtol=1e-4
        )


def test_updates_leave_other_rows_and_earlier_snapshots_alone():
    k, d = 1000, 5
    x, y = _token_stream(k, d, 4000, seed=6)
    start = ClassStats.from_features(x[:3000], y[:3000], k)
    frozen = {name: np.array(getattr(start, name)) for name in ("counts", "shift", "sums")}
    running = StreamingClassStats.from_stats(start)
    snapshot = running.stats()
    batch_x, batch_y = x[3000:3050], y[3000:3050]
    running.update(batch_x, batch_y)
    after = running.stats()
    untouched = np.setdiff1d(np.arange(k), batch_y)
    for name, before in frozen.items():
        np.testing.assert_array_equal(getattr(start, name), before)  # the input is copied
        np.testing.assert_array_equal(getattr(snapshot, name), before)  # snapshots are copies
        np.testing.assert_array_equal(getattr(after, name)[untouched], before[untouched])
    functional = start.update(batch_x, batch_y)
    for name in ("counts", "shift", "sums", "sqnorms", "gram"):
        np.testing.assert_array_equal(getattr(after, name), getattr(functional, name))


def test_torch_tensors_are_written_in_place_too():
    torch = pytest.importorskip("torch")
    k, d = 800, 4
    x, y = _token_stream(k, d, 3000, seed=7)
    ref = _reference(x, y, k)
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    stats = _stream(lambda: StreamingClassStats(k, d, xp=torch, dtype=torch.float32), xt, yt, 40)
    assert isinstance(stats.sums, torch.Tensor)
    _check(stats, ref, 1e-5, to_numpy=lambda t: t.double().numpy())


def test_libraries_without_row_writes_take_the_whole_table_path():
    xp = pytest.importorskip("array_api_strict")
    k, d = 50, 3
    x, y = _token_stream(k, d, 400, seed=8)
    ref = _reference(x, y, k)
    stats = _stream(lambda: StreamingClassStats(k, d, xp=xp), xp.asarray(x), xp.asarray(y), 10)
    _check(stats, ref, 1e-12, to_numpy=lambda a: np.asarray(a))


def test_bad_batches_are_refused_before_anything_changes():
    running = StreamingClassStats(10, 3)
    running.update(np.ones((4, 3)), np.array([0, 1, 2, 3]))
    before = running.stats()
    with pytest.raises(ValueError, match=r"`labels`.*10"):
        running.update(np.ones((2, 3)), np.array([1, 10]))
    with pytest.raises(ValueError, match=r"`features` must have 3 columns.*got 2"):
        running.update(np.ones((2, 2)), np.array([1, 2]))
    with pytest.raises(ValueError, match=r"`features`.*(NaN|finite)"):
        running.update(np.array([[np.nan, 0.0, 0.0]]), np.array([1]))
    with pytest.raises(TypeError, match=r"`stats`"):
        StreamingClassStats.from_stats("not stats")
    after = running.stats()
    np.testing.assert_array_equal(after.counts, before.counts)
    np.testing.assert_array_equal(after.sums, before.sums)
    assert running.update(np.ones((0, 3)), np.array([], dtype=int)) is running
    assert (running.num_classes, running.dim) == (10, 3)
    assert "StreamingClassStats(" in repr(running)


@pytest.mark.slow
def test_vocabulary_sized_k_in_float32():
    # K = 131,072 token classes, Zipf counts, batches of 512 tokens in float32.
    k, d = 131_072, 16
    x, y = _token_stream(k, d, 200_000, seed=9)
    x = x.astype(np.float32)
    ref = _reference(x, y, k)
    _check(_stream(lambda: StreamingClassStats(k, d, dtype=np.float32), x, y, 512), ref, 1e-5)
