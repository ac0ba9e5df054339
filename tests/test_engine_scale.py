"""The statistics engine at the sizes users have: many classes, many rows a class,
batches in any order.

Class means made from float32 features must be exact to their last bit (within
one unit in the last place of the float64 mean of the same data) and class
variances within 1e-5 of a float64 formula written here, on every path the
engine takes: the compiled in-place class sums on NumPy, the public fallback
without them, the first batch of a stream (no merge), running means borrowed
by later batches, and merges of batches that bring new classes. Sizes above
about two seconds on two CPU cores are marked slow.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import ncgeom._lib.backend as backend_module
from ncgeom import ClassStats
from ncgeom._lib.backend import adds_in_place, resolve_namespace, segment_sum

XP = resolve_namespace(np)


# ----------------------------------------------------------------------------- references
def reference(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts, class means and class variances (1/n_k) in float64, row by row."""
    x64 = np.asarray(x, dtype=np.float64)
    counts = np.bincount(y, minlength=k)
    sums = np.zeros((k, x64.shape[1]))
    np.add.at(sums, y, x64)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts[:, None]
        dev = x64 - means[y]
        variances = np.bincount(y, weights=np.sum(dev * dev, axis=1), minlength=k) / counts
    return counts, means, variances


def assert_last_bit(got: np.ndarray, want: np.ndarray) -> None:
    """float32 `got` within one unit in the last place of the float64 `want`."""
    unit = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    off = np.abs(np.asarray(got, dtype=np.float64) - want)
    worst = np.unravel_index(np.argmax(off / unit), off.shape)
    assert np.all(off <= unit), (
        f"{np.sum(off > unit)} entries off by more than one unit in the last place; "
        f"worst at {worst}: {got[worst]!r} for {want[worst]!r}"
    )


def check_stats(stats: ClassStats, x: np.ndarray, y: np.ndarray, k: int, to_numpy=np.asarray):
    counts, means, variances = reference(x, y, k)
    np.testing.assert_array_equal(to_numpy(stats.counts), counts)
    present = counts > 0
    got = to_numpy(stats.means)
    assert got.dtype == np.float32
    assert np.all(np.isnan(got[~present]))
    assert_last_bit(got[present], means[present])
    np.testing.assert_allclose(
        to_numpy(stats.class_variances)[present], variances[present], rtol=1e-5, atol=0
    )


def collapsed(counts, d: int, *, spread: float = 1e-3, order: str = "shuffled", seed: int = 0):
    """float32 rows at class means of entries about 1 (+-0.5) plus noise of size
    `spread`: the means need more than float32 sums to be exact."""
    rng = np.random.default_rng(seed)
    counts = np.asarray(counts)
    k = len(counts)
    centres = 1 + 0.5 * rng.uniform(-1, 1, size=(k, d))
    y = np.repeat(np.arange(k), counts)
    if order == "shuffled":
        y = rng.permutation(y)
    elif order == "reversed":
        y = y[::-1].copy()
    x = centres[y] + spread * rng.normal(size=(len(y), d))
    return x.astype(np.float32), y


# ----------------------------------------------------------------------------- class sums
def _sums64(values: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((k, *values.shape[1:]))
    np.add.at(out, labels, values.astype(np.float64))
    return out


@pytest.mark.parametrize("k", [1, 7, 50_000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("width", [None, 5])
def test_segment_sum_adds_in_place_at_any_number_of_segments(k, dtype, width):
    rng = np.random.default_rng(k)
    shape = (3000,) if width is None else (3000, width)
    values = rng.normal(size=shape).astype(dtype)
    labels = rng.integers(0, k, size=3000)
    start = rng.normal(size=(k, *shape[1:])).astype(dtype)
    into = start.copy()
    out = segment_sum(values[:1700], labels[:1700], k, XP, into=into)
    out = segment_sum(values[1700:], labels[1700:], k, XP, into=out)
    assert out is into  # added in place: no table of the K segments per call
    assert out.dtype == dtype
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, start + _sums64(values, labels, k), rtol=rtol, atol=rtol)
    fresh = segment_sum(values, labels, k, XP)
    np.testing.assert_allclose(fresh, _sums64(values, labels, k), rtol=rtol, atol=rtol)


def test_numpy_adds_in_place_with_scipy():
    pytest.importorskip("scipy")
    assert adds_in_place(XP)


def test_segment_sum_without_the_compiled_kernel(monkeypatch):
    # The public fallback (a table per call, or np.add.at without SciPy) gives
    # the same sums, also into a strided array the kernel cannot write to.
    monkeypatch.setattr(backend_module, "_scatter_kernel", lambda: None)
    assert not adds_in_place(XP)
    rng = np.random.default_rng(1)
    values = rng.normal(size=(400, 3))
    labels = rng.integers(0, 9, size=400)
    wide = np.zeros((9, 6))
    out = segment_sum(values, labels, 9, XP, into=wide[:, ::2])
    np.testing.assert_allclose(out, _sums64(values, labels, 9), rtol=1e-12)
    np.testing.assert_allclose(wide[:, ::2], _sums64(values, labels, 9), rtol=1e-12)
    np.testing.assert_allclose(
        segment_sum(values[:, 0], labels, 9, XP), _sums64(values[:, 0], labels, 9), rtol=1e-12
    )
    stats = ClassStats.from_features(*collapsed([300, 200, 100], 4), 3)
    check_stats(stats, *collapsed([300, 200, 100], 4), 3)


def test_the_kernel_writes_only_into_a_strided_array_by_the_fallback():
    rng = np.random.default_rng(2)
    values = rng.normal(size=(50, 2)).astype(np.float32)
    labels = rng.integers(0, 4, size=50)
    wide = np.zeros((4, 4), dtype=np.float32)
    out = segment_sum(values, labels, 4, XP, into=wide[:, :2])
    np.testing.assert_allclose(wide[:, :2], _sums64(values, labels, 4), rtol=1e-5)
    np.testing.assert_array_equal(wide[:, 2:], 0)
    np.testing.assert_allclose(out, _sums64(values, labels, 4), rtol=1e-5)


@pytest.mark.parametrize("bad", [-1, 5])
def test_labels_out_of_range_are_refused_before_any_write(bad):
    into = np.zeros((5, 2))
    labels = np.array([0, bad, 1])
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 5\); got values from"):
        segment_sum(np.ones((3, 2)), labels, 5, XP, into=into)
    np.testing.assert_array_equal(into, 0)


def test_segment_sum_on_every_backend(backend):
    rng = np.random.default_rng(3)
    values = rng.normal(size=(600, 3))
    labels = rng.integers(0, 250, size=600)
    xp = backend.xp
    into = backend.asarray(np.ones((250, 3)))
    total = segment_sum(backend.asarray(values[:350]), backend.asarray(labels[:350]), 250, xp)
    into = segment_sum(
        backend.asarray(values[350:]), backend.asarray(labels[350:]), 250, xp, into=into
    )
    want = _sums64(values, labels, 250)
    np.testing.assert_allclose(
        backend.to_numpy(into) - 1 + backend.to_numpy(total), want, rtol=1e-12, atol=1e-12
    )
    rows = segment_sum(backend.asarray(values[:, 1]), backend.asarray(labels), 250, xp)
    np.testing.assert_allclose(backend.to_numpy(rows), want[:, 1], rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- the engine
@pytest.mark.parametrize(
    "per_class", [1000, 20_000, pytest.param(100_000, marks=pytest.mark.slow)]
)
@pytest.mark.parametrize("order", ["shuffled", "sorted"])
def test_means_of_many_rows_a_class_are_exact(per_class, order):
    k = 6
    x, y = collapsed([per_class] * k, 16, spread=1e-4, order=order)
    naive = np.zeros((k, 16), dtype=np.float32)
    for row, label in zip(x, y, strict=True):  # float32 sums, as a plain scatter makes them
        naive[label] += row
    if per_class >= 20_000:  # the plain float32 means are off by many units here
        with pytest.raises(AssertionError):
            assert_last_bit(naive / np.float32(per_class), reference(x, y, k)[1])
    check_stats(ClassStats.from_features(x, y, k, gram=False), x, y, k)
    stream = ClassStats.empty(k, 16, gram=False, dtype=np.float32)
    for lo in range(0, len(y), 7919):
        stream = stream.update(x[lo : lo + 7919], y[lo : lo + 7919])
    check_stats(stream, x, y, k)


@pytest.mark.parametrize(
    "k",
    [
        4096,
        pytest.param(32_768, marks=pytest.mark.slow),
        pytest.param(131_072, marks=pytest.mark.slow),
    ],
)
def test_many_classes_of_few_rows(k):
    rng = np.random.default_rng(k)
    counts = rng.integers(0, 9, size=k)  # some classes without samples
    x, y = collapsed(counts, 8, spread=1e-2)
    check_stats(ClassStats.from_features(x, y, k, gram=False), x, y, k)
    check_stats(ClassStats.from_features(x, y, k, gram=False, chunk_size=1000), x, y, k)
    first = ClassStats.empty(k, 8, gram=False, dtype=np.float32).update(x, y)
    check_stats(first, x, y, k)


@pytest.mark.parametrize("order", ["shuffled", "sorted", "reversed"])
@pytest.mark.parametrize("k", [2048, pytest.param(131_072, marks=pytest.mark.slow)])
def test_streamed_batches_in_any_order(k, order):
    # Sorted batches bring new classes (merges); shuffled ones, once every class
    # has samples, are summed about the running means.
    rng = np.random.default_rng(4)
    counts = rng.integers(1, 40, size=k) if k < 10_000 else rng.integers(1, 5, size=k)
    x, y = collapsed(counts, 8, spread=1e-3, order=order)
    batch = max(1000, len(y) // 12)
    stats = ClassStats.empty(k, 8, dtype=np.float32)
    for lo in range(0, len(y), batch):
        stats = stats.update(x[lo : lo + batch], y[lo : lo + batch])
    check_stats(stats, x, y, k)
    # With the Gram: the pooled scatter of the same data, within 1e-5 of its size.
    _, means, _ = reference(x, y, k)
    dev = x.astype(np.float64) - means[y]
    want = dev.T @ dev
    np.testing.assert_allclose(stats.within_scatter(), want, atol=1e-5 * np.abs(want).max())


def test_the_first_batch_of_a_stream_is_its_own_statistics(backend):
    x, y = collapsed([400, 1, 250, 0, 90], 6, spread=1e-3)
    xb, yb = backend.asarray(x), backend.asarray(y)
    xp = backend.xp
    first = ClassStats.empty(5, 6, xp=xp, device=backend.device, dtype=xp.float32).update(xb, yb)
    whole = ClassStats.from_features(xb, yb, 5)
    check_stats(first, x, y, 5, backend.to_numpy)
    for name in ("counts", "shift", "sums", "sqnorms", "gram", "scale"):
        np.testing.assert_array_equal(
            backend.to_numpy(getattr(first, name)), backend.to_numpy(getattr(whole, name)), name
        )


def test_many_classes_on_every_backend(backend):
    rng = np.random.default_rng(5)
    counts = rng.integers(0, 5, size=3000)
    x, y = collapsed(counts, 4, spread=1e-2)
    stats = ClassStats.from_features(backend.asarray(x), backend.asarray(y), 3000, gram=False)
    check_stats(stats, x, y, 3000, backend.to_numpy)


def _peak_extra(call) -> int:
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    return peak - base


@pytest.mark.parametrize("k", [100, 32_768])
def test_memory_is_the_statistics_and_a_few_chunks(k):
    # The extra memory of both passes does not grow with the number of rows:
    # the (K, d) statistics, the class sums and chunk-sized temporaries.
    d = 16
    rng = np.random.default_rng(6)
    x = rng.normal(size=(400_000, d)).astype(np.float32)
    y = rng.integers(0, k, size=400_000)
    stats_bytes = k * d * 4
    for rows in (100_000, 400_000):
        for make in (
            lambda rows=rows: ClassStats.from_features(x[:rows], y[:rows], k, gram=False),
            lambda rows=rows: ClassStats.empty(k, d, gram=False, dtype=np.float32).update(
                x[:rows], y[:rows]
            ),
        ):
            peak = _peak_extra(make)
            assert peak < 3 * stats_bytes + 8 * 2**20, (rows, peak / 2**20)
