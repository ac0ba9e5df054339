"""Layer features and the second pass: `layer_features`, `SecondPass`.

Every value is checked against a float64 NumPy formula written here: NC1 as
``tr(Sigma_W pinv(Sigma_B)) / K`` with the full (d, d) matrices at small d,
and, at d = 200,000, the same quantity computed in the span of the centred
means (QR of the means), never forming a (d, d) array.
"""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest

from ncgeom import ClassStats, SecondPass, layer_features, metrics
from ncgeom.layers import REDUCE_MODES


# ----------------------------------------------------------------------------- formulas
def nc1_formula(x: np.ndarray, y: np.ndarray, global_mean: str = "samples") -> float:
    """``tr(Sigma_W pinv(Sigma_B)) / K`` over the classes with samples, float64, full Gram."""
    x = np.asarray(x, dtype=np.float64)
    classes = np.unique(y)
    means = np.stack([x[y == k].mean(axis=0) for k in classes])
    dev = x - means[np.searchsorted(classes, y)]
    within = dev.T @ dev / x.shape[0]
    centre = x.mean(axis=0) if global_mean == "samples" else means.mean(axis=0)
    centred = means - centre
    between = centred.T @ centred / len(classes)
    return float(np.trace(within @ np.linalg.pinv(between, rcond=1e-10)) / len(classes))


def ncc_formula(x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows whose nearest class mean (classes with samples) is their label."""
    x = np.asarray(x, dtype=np.float64)
    classes = np.unique(y)
    means = np.stack([x[y == k].mean(axis=0) for k in classes])
    distance = ((x[:, None, :] - means[None, :, :]) ** 2).sum(axis=2)
    return float(np.mean(classes[np.argmin(distance, axis=1)] == y))


def _data(num: int = 120, dim: int = 6, classes: int = 4, seed: int = 0, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    y = np.arange(num) % classes
    rng.shuffle(y)
    centres = 2.0 * rng.normal(size=(classes, dim))
    x = centres[y] + spread * rng.normal(size=(num, dim))
    return x, y


def _second(stats: ClassStats, x, y, *, parts: int = 3, **kwargs) -> SecondPass:
    passes = SecondPass(stats, scatter=True, **kwargs)
    bounds = np.linspace(0, x.shape[0], parts + 1).astype(int)
    for lo, hi in itertools.pairwise(bounds):
        passes.update(x[lo:hi, ...], y[lo:hi])
    return passes


# ----------------------------------------------------------------------------- layer_features
def test_pool_takes_the_mean_over_the_spatial_axes(backend):
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(5, 3, 4, 2))  # (N, C, H, W)
    y = np.arange(5) % 2
    x, labels = layer_features(backend.asarray(maps), backend.asarray(y))
    np.testing.assert_allclose(backend.to_numpy(x), maps.mean(axis=(2, 3)), rtol=1e-14)
    assert backend.to_numpy(labels).tolist() == y.tolist()
    nhwc = np.transpose(maps, (0, 2, 3, 1))
    x, _ = layer_features(backend.asarray(nhwc), backend.asarray(y), layout="channels_last")
    np.testing.assert_allclose(backend.to_numpy(x), maps.mean(axis=(2, 3)), rtol=1e-14)


def test_pool_of_sequences_and_flatten_in_the_arrays_order(backend):
    rng = np.random.default_rng(2)
    seq = rng.normal(size=(4, 3, 7))  # (N, C, L)
    y = np.array([0, 1, 1, 0])
    x, _ = layer_features(backend.asarray(seq), backend.asarray(y))
    np.testing.assert_allclose(backend.to_numpy(x), seq.mean(axis=2), rtol=1e-14)
    maps = rng.normal(size=(4, 2, 3, 5))
    flat, _ = layer_features(backend.asarray(maps), backend.asarray(y), reduce="flatten")
    assert tuple(flat.shape) == (4, 30)
    np.testing.assert_array_equal(backend.to_numpy(flat)[2], maps[2].ravel())
    # Two-dimensional features are returned as they are, in every mode.
    plain = backend.asarray(rng.normal(size=(4, 3)))
    for mode in REDUCE_MODES:
        assert layer_features(plain, backend.asarray(y), reduce=mode)[0] is plain


def test_tokens_are_samples_with_repeated_or_given_labels():
    tokens = np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4)  # (N, T, d)
    x, y = layer_features(tokens, np.array([5, 7]), reduce="tokens", layout="channels_last")
    np.testing.assert_array_equal(x, tokens.reshape(6, 4))
    assert y.tolist() == [5, 5, 5, 7, 7, 7]
    per_token = np.array([[0, 1, 2], [3, 4, 5]])
    _, y = layer_features(tokens, per_token, reduce="tokens", layout="channels_last")
    assert y.tolist() == [0, 1, 2, 3, 4, 5]
    # Channels first (N, C, L): each position of a 1-D feature map is a sample.
    x, y = layer_features(np.transpose(tokens, (0, 2, 1)), np.array([5, 7]), reduce="tokens")
    np.testing.assert_array_equal(x, tokens.reshape(6, 4))
    pooled, _ = layer_features(tokens, np.array([5, 7]), layout="channels_last")
    np.testing.assert_allclose(pooled, tokens.mean(axis=1))


@pytest.mark.parametrize(
    ("features", "labels", "kwargs", "match"),
    [
        (
            np.zeros((2, 3, 4)),
            np.zeros(2, int),
            {"reduce": "mean"},
            r"`reduce` must be one of .*'mean'",
        ),
        (
            np.zeros((2, 3, 4)),
            np.zeros(2, int),
            {"layout": "nchw"},
            r"`layout` must be one of .*'nchw'",
        ),
        (np.zeros(3), np.zeros(3, int), {}, r"`features` must have a batch axis .*\(3,\)"),
        (np.zeros((2, 3, 4)), np.zeros(3, int), {}, r"`labels` must have shape \(2,\).*\(3,\)"),
        (
            np.zeros((2, 3, 4)),
            np.zeros((2, 4), int),
            {"reduce": "tokens", "layout": "channels_last"},
            r"`labels` must have shape \(2,\) or \(2, 3\).*\(2, 4\)",
        ),
        (
            np.zeros((2, 3, 4, 5)),
            np.zeros(2, int),
            {"reduce": "tokens"},
            r"`features` must be 3-D.*\(2, 3, 4, 5\)",
        ),
    ],
)
def test_layer_features_errors_name_the_argument(features, labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        layer_features(features, labels, **kwargs)


# ----------------------------------------------------------------------------- SecondPass: NC1
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_nc1_equals_the_full_gram_formula_on_every_backend(backend, dtype):
    if backend.name == "jax" and dtype == "float32":
        pytest.skip("JAX compiles every new shape: its float64 case covers this path")
    x, y = _data()
    x = x.astype(dtype)
    xb, yb = backend.asarray(x), backend.asarray(y)
    stats = ClassStats.from_features(xb, yb, 4, gram=False)
    passes = _second(stats, xb, yb)
    value = passes.nc1()
    assert tuple(value.shape) == ()
    assert str(value.dtype).endswith(dtype)
    rtol = 1e-10 if dtype == "float64" else 2e-5
    assert float(backend.to_numpy(value)) == pytest.approx(nc1_formula(x, y), rel=rtol)
    if backend.name != "jax":  # JAX compiles each new operation: one centring is enough
        assert float(backend.to_numpy(passes.nc1(global_mean="classes"))) == pytest.approx(
            nc1_formula(x, y, "classes"), rel=rtol
        )


def test_nc1_equals_the_metric_with_a_gram_to_1e_10():
    x, y = _data(num=300, dim=9, classes=5, seed=3)
    y[y == 2] = 4  # an empty class: left out of both
    with pytest.warns(UserWarning, match="no samples"):
        stats = ClassStats.from_features(x, y, 5)
        reference = float(metrics.nc1(stats))
    passes = _second(stats, x, y, parts=7)
    assert float(passes.nc1()) == pytest.approx(reference, rel=1e-10)
    assert float(passes.nc1()) == pytest.approx(nc1_formula(x, y), rel=1e-10)


@pytest.mark.parametrize("scale", [1e-20, 1e-10, 1e10, 1e20])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_nc1_stays_right_at_every_feature_scale(scale, dtype):
    x, y = _data(seed=4)
    reference = nc1_formula(x, y)
    scaled = (x * scale).astype(dtype)
    stats = ClassStats.from_features(scaled, y, 4, gram=False)
    passes = _second(stats, scaled, y)
    rtol = 1e-10 if dtype == "float64" else 2e-5
    assert float(passes.nc1()) == pytest.approx(reference, rel=rtol)
    assert float(passes.ncc_accuracy()) == ncc_formula(x, y)


def test_nc1_is_right_for_collapsed_float32_features_far_from_the_origin():
    # Within spread 1e-3, means 1e3 from the origin, float32: the stored means are
    # off by their rounding (~3e-5), which alone would move NC1 by ~5e-4
    # relative; the class sums of the projected deviations take it out.
    x, y = _data(num=400, dim=5, classes=3, seed=5, spread=1e-3)
    x = (x + 1e3).astype(np.float32)
    stats = ClassStats.from_features(x, y, 3, gram=False)
    assert float(_second(stats, x, y).nc1()) == pytest.approx(nc1_formula(x, y), rel=1e-5)


def test_merged_ranks_give_the_single_process_values():
    x, y = _data(num=200, seed=6)
    stats = ClassStats.from_features(x, y, 4, gram=False)
    one = _second(stats, x, y)
    a = _second(stats, x[:70], y[:70], parts=1)
    b = _second(stats, x[70:], y[70:], parts=2)
    summed = a.with_arrays(tuple(p + q for p, q in zip(a.arrays, b.arrays, strict=True)))
    assert float(summed.nc1()) == pytest.approx(float(one.nc1()), rel=1e-12)
    assert float(summed.ncc_accuracy()) == float(one.ncc_accuracy())
    assert float(a.ncc_accuracy()) == np.mean(_nearest(x[:70], x, y) == y[:70])
    with pytest.raises(ValueError, match=r"`arrays` must have the shapes"):
        a.with_arrays(a.arrays[:2])


def _nearest(rows: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    classes = np.unique(y)
    means = np.stack([x[y == k].mean(axis=0) for k in classes])
    return classes[np.argmin(((rows[:, None] - means[None]) ** 2).sum(axis=2), axis=1)]


def test_a_second_pass_over_other_samples_gives_nan():
    x, y = _data(seed=7)
    stats = ClassStats.from_features(x, y, 4, gram=False)
    passes = _second(stats, x[:-5], y[:-5])
    assert not bool(passes.same_samples)
    assert np.isnan(float(passes.nc1()))
    assert bool(_second(stats, x, y).same_samples)


def test_coincident_means_give_nan_like_the_metric():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(40, 3)), np.arange(40) % 2
    x[y == 1] = x[y == 0]  # every class the same samples: the means coincide
    stats = ClassStats.from_features(x, y, 2, gram=False)
    assert np.isnan(float(_second(stats, x, y).nc1()))


def test_nc1_needs_the_scatter_and_ncc_its_counts():
    x, y = _data()
    stats = ClassStats.from_features(x, y, 4, gram=False)
    with pytest.raises(ValueError, match=r"scatter=True"):
        SecondPass(stats).update(x, y).nc1()
    with pytest.raises(ValueError, match=r"ncc=True"):
        SecondPass(stats, scatter=True, ncc=False).update(x, y).ncc_accuracy()
    with pytest.raises(ValueError, match=r"`features` must have 6 columns"):
        SecondPass(stats).update(x[:, :5], y)
    with pytest.raises(TypeError, match=r"`stats` must"):
        SecondPass(x)


# ----------------------------------------------------------------------------- SecondPass: NCC
def test_ncc_accuracy_against_the_labels_with_ties_to_the_lowest_class(backend):
    if backend.name == "jax":
        pytest.skip("JAX compiles every new shape: the NC1 case runs the NCC path on JAX")
    # Two classes at +-1 on the first axis; the rows at 0 are equally far from
    # both: they go to class 0, right for the one labelled 0.
    x = np.array([[-1.0, 0], [-1.0, 0], [1.0, 0], [1.0, 0], [0.0, 0], [0.0, 0], [0.9, 0]])
    y = np.array([0, 0, 1, 1, 0, 1, 0])
    means = np.array([x[y == 0].mean(axis=0), x[y == 1].mean(axis=0)])
    # Class means -0.475 and 0.725: the rows at 0 are nearer class 0.
    expected = np.mean(np.argmin(np.abs(x[:, :1] - means[:, 0]), axis=1) == y)
    stats = ClassStats.from_features(backend.asarray(x), backend.asarray(y), 2, gram=False)
    passes = SecondPass(stats).update(backend.asarray(x), backend.asarray(y))
    assert float(backend.to_numpy(passes.ncc_accuracy())) == pytest.approx(expected, rel=1e-15)
    tie = np.array([[-1.0], [1.0], [0.0], [0.0]])
    labels = np.array([0, 1, 1, 0])
    stats = ClassStats.from_features(tie, labels, 2, gram=False)
    assert float(SecondPass(stats).update(tie, labels).ncc_accuracy()) == 0.75


def test_update_reads_nothing_from_the_device(monkeypatch):
    torch = pytest.importorskip("torch")
    from host_sync import HostSyncAudit

    import ncgeom.stats

    monkeypatch.setattr(ncgeom.stats, "on_host", lambda xp, device=None: False)
    x, y = _data(num=512, dim=8)
    xt, yt = torch.asarray(x), torch.asarray(y)
    stats = ClassStats.from_features(xt, yt, 4, gram=False)
    passes = SecondPass(stats, scatter=True)
    with HostSyncAudit() as audit:
        for rows in range(0, 512, 64):
            passes.update(xt[rows : rows + 64], yt[rows : rows + 64], chunk_size=16)
        passes.nc1()
        passes.ncc_accuracy()
    assert audit.syncs == []
    assert float(passes.nc1()) == pytest.approx(nc1_formula(x, y), rel=1e-10)


# ----------------------------------------------------------------------------- memory
@pytest.mark.slow
def test_flattened_features_at_d_200k_need_no_d_by_d_array():
    """d = 200,000, K = 100, 2,000 float32 samples in batches: NC1 exact, and the
    peak traced allocation is O(K d), far below one (d, d) float64 array."""
    num_classes, dim, batch, batches = 100, 200_000, 250, 8
    rng = np.random.default_rng(9)
    centres = rng.normal(size=(num_classes, dim)).astype(np.float32)
    labels = [np.sort(rng.permutation(np.arange(batch) % num_classes)) for _ in range(batches)]
    seeds = rng.integers(0, 2**31, size=batches)

    def batch_of(i: int) -> np.ndarray:
        noise = np.random.default_rng(seeds[i]).standard_normal((batch, dim), dtype=np.float32)
        noise *= np.float32(0.5)
        noise += centres[labels[i]]
        return noise

    sums = np.zeros((num_classes, dim))
    tracemalloc.start()
    try:
        stats = ClassStats.empty(num_classes, dim, gram=False, dtype=np.float32)
        for i in range(batches):
            x = batch_of(i)
            stats = stats.update(x, labels[i])
            starts = np.flatnonzero(np.diff(labels[i], prepend=-1))
            sums[labels[i][starts]] += np.add.reduceat(x, starts, axis=0, dtype=np.float64)
            del x
        _, first_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        passes = SecondPass(stats, scatter=True)
        for i in range(batches):
            passes.update(batch_of(i), labels[i])
        value = float(passes.nc1())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The reference, in float64 and in the span: Q (d, K) from a QR of the centred means.
    y = np.concatenate(labels)
    counts = np.bincount(y, minlength=num_classes)
    means = sums / counts[:, None]
    centred = means - (counts @ means) / counts.sum()
    basis, _ = np.linalg.qr(centred.T)
    within = np.zeros((num_classes, num_classes))
    for i in range(batches):
        along = (batch_of(i).astype(np.float64) - means[labels[i]]) @ basis
        within += along.T @ along
    between = (centred @ basis).T @ (centred @ basis) / num_classes
    reference = np.trace(within / y.size @ np.linalg.pinv(between, rcond=1e-10)) / num_classes
    assert value == pytest.approx(reference, rel=1e-4)
    # The second pass holds a few (K, d) arrays and a batch (one (K, d) float64
    # array is 160 MB); a single (d, d) float64 array would be 320 GB.
    assert peak < 8 * num_classes * dim * 8
    assert max(peak, first_peak) < dim * dim * 8 / 100
