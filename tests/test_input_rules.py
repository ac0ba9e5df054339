"""The input rules of the core: finiteness, dtypes, containers, namespaces.

One rule each, applied where every entry point passes (`namespace`, the
shared checks of ``ncgeom._lib.validate``, the statistics engine), and
results compared with float64 NumPy formulas written here or in
``tests/reference.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from ncgeom import ClassStats, merge_stats, metrics, nc_report
from ncgeom._lib import validate
from ncgeom._lib.backend import namespace, resolve_namespace
from ncgeom.loss import collapsed_gradients, collapsed_objective, ufm_objective
from ncgeom.measure.stats import NC1_ROUNDING_LIMIT, warn_nc1_rounding

import reference as ref

K = 3


def _blobs(n=300, d=3, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % K
    x = 4 * np.eye(K, d)[y] + 0.1 * rng.normal(size=(n, d))
    return x.astype(dtype), y


def _with(array, index, value):
    out = np.array(array, dtype=np.float64)
    out[index] = value
    return out


# ----------------------------------------------------------------------------- finiteness
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_classifier_is_refused_on_every_path(bad):
    x, y = _blobs()
    w = _with(np.eye(K), (1, 2), bad)
    stats = ClassStats.from_features(x, y, K)
    where = rf"`classifier` must be finite; got {bad!r} at \[1, 2\] \(NaN or Inf in 1 of 9"
    with pytest.raises(ValueError, match=where):
        nc_report((x, y), w)
    with pytest.raises(ValueError, match=where):
        nc_report(stats, w)
    with pytest.raises(ValueError, match=where):
        metrics.self_duality_error(w, stats)
    with pytest.raises(ValueError, match=where):
        metrics.scaled_alignment_error(w, stats)
    with pytest.raises(ValueError, match=where):
        ufm_objective(w, x, y, 1e-3, 1e-3)


def test_a_non_finite_bias_is_refused_with_its_first_bad_entry():
    x, y = _blobs()
    bias = np.array([0.0, np.nan, np.inf])
    where = r"`bias` must be finite; got nan at \[1\] \(NaN or Inf in 2 of 3 entries\)"
    with pytest.raises(ValueError, match=where):
        nc_report((x, y), np.eye(K), bias)
    with pytest.raises(ValueError, match=where):
        collapsed_objective(np.eye(K), np.eye(K), [1, 2, 3], 1e-3, 1e-3, bias=bias)


def test_the_shared_checks_of_a_classifier_and_a_bias(backend):
    xp = backend.xp
    w = backend.asarray(_with(np.eye(K), (2, 0), np.inf))
    with pytest.raises(ValueError, match=r"`classifier` must be finite; got inf at \[2, 0\]"):
        validate.check_classifier(w, (K, K), xp.float64, xp)
    checked = validate.check_classifier(w, (K, K), xp.float64, xp, finite=False)
    assert checked.shape == (K, K)  # finite=False: the caller reads finiteness elsewhere
    bias = backend.asarray(np.array([0.0, 1.0, np.nan]))
    with pytest.raises(ValueError, match=r"`bias` must be finite; got nan at \[2\]"):
        validate.check_bias_vector(bias, K, xp)
    with pytest.raises(ValueError, match=r"`bias` must be finite; got nan at \[2\]"):
        validate.check_bias_shape(bias, K)


def test_the_batch_check_reads_the_finiteness_of_more_arrays_in_its_one_read(monkeypatch):
    x, y = _blobs()
    xp = namespace(features=x)
    reads = []
    original = validate.to_host

    def counting(value):
        reads.append(value.shape)
        return original(value)

    monkeypatch.setattr(validate, "to_host", counting)
    extra = {"classifier": np.eye(K), "bias": np.zeros(K), "unused": None}
    validate.check_batch(x, y, K, xp, also_finite=extra)
    assert len(reads) == 1  # labels' range, features and both arrays: one transfer
    extra["bias"] = np.array([0.0, -np.inf, 0.0])
    with pytest.raises(ValueError, match=r"`bias` must be finite; got -inf at \[1\]"):
        validate.check_batch(x, y, K, xp, check_finite=False, also_finite=extra)


def test_finiteness_of_several_arrays_in_one_read():
    xp = namespace(x=np.zeros(1))
    validate.check_finite_arrays(xp, classifier=np.eye(2), means=np.ones((2, 2)), bias=None)
    with pytest.raises(ValueError, match=r"`means` must be finite; got nan at \[0, 1\]"):
        validate.check_finite_arrays(
            xp, classifier=np.eye(2), means=_with(np.eye(2), (0, 1), np.nan)
        )


# ----------------------------------------------------------------------------- dtypes
@pytest.mark.skipif(
    np.finfo(np.longdouble).eps >= np.finfo(np.float64).eps,
    reason="longdouble is float64 on this platform",
)
def test_longdouble_features_are_accumulated_in_float64_with_a_note():
    rng = np.random.default_rng(0)
    y = np.arange(300) % K
    x = (1e10 + np.eye(K)[y] + 0.3 * rng.normal(size=(300, K))).astype(np.longdouble)
    with pytest.warns(UserWarning, match="beyond float64 is dropped") as caught:
        stats = ClassStats.from_features(x, y, K)
    assert len(caught) == 1 and caught[0].filename == __file__
    assert stats.dtype == np.float64
    # The formulas in longdouble itself, then compared at float64's resolution.
    means = np.stack([x[y == k].mean(axis=0) for k in range(K)])
    var = np.array([((x[y == k] - means[k]) ** 2).sum(axis=1).mean() for k in range(K)])
    np.testing.assert_allclose(stats.means, means.astype(np.float64), rtol=0, atol=1e-5)
    np.testing.assert_allclose(stats.class_variances, var.astype(np.float64), rtol=1e-4)
    with pytest.warns(UserWarning, match="beyond float64 is dropped"):
        assert ClassStats.empty(K, 4, dtype=np.longdouble).dtype == np.float64


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("float16", "float32"),
        ("bfloat16", "float32"),
        ("float32", "float32"),
        ("float64", "float64"),
    ],
)
def test_what_is_accumulated_in_what(given, stored):
    x, y = _blobs()
    features = torch.from_numpy(x).to(getattr(torch, given))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no note for these
        stats = ClassStats.from_features(features, torch.from_numpy(y), K)
    assert stats.dtype == getattr(torch, stored)
    want = ref.means(features.to(torch.float64).numpy(), y, K)
    np.testing.assert_allclose(stats.means.to(torch.float64).numpy(), want, rtol=0, atol=2e-6)


@pytest.mark.parametrize("dtype", [np.complex128, np.int64, np.uint8, np.bool_])
def test_complex_integer_and_boolean_features_are_refused_by_name(dtype):
    x, y = _blobs()
    x = x.astype(dtype)
    match = r"`features` must have a real floating dtype; got"
    with pytest.raises(TypeError, match=match):
        ClassStats.from_features(x, y, K)
    with pytest.raises(TypeError, match=match):
        ClassStats.empty(K, 3).update(x, y)
    with pytest.raises(TypeError, match=match):
        nc_report((x, y))


# ----------------------------------------------------------------------------- containers
def test_masked_arrays_are_refused_not_read_without_their_mask():
    x, y = _blobs(n=10)
    labels = np.ma.masked_array(np.array([0] * 7 + [1] + [2, 2]), mask=[0] * 9 + [1])
    with pytest.raises(TypeError, match=r"`labels` must not be a masked array"):
        ClassStats.from_features(x, labels, K)
    features = np.ma.masked_array(x, mask=np.zeros(x.shape, dtype=bool))
    features.data[3, 0], features.mask[3, 0] = np.nan, True
    with pytest.raises(TypeError, match=r"`features` must not be a masked array"):
        ClassStats.from_features(features, y, K)
    with pytest.raises(TypeError, match=r"`features` must not be a masked array"):
        nc_report((features, y))
    with pytest.raises(TypeError, match=r"`counts` must not be a masked array"):
        collapsed_objective(np.eye(K), np.eye(K), np.ma.masked_array([1, 2, 3]), 1e-3, 1e-3)
    with pytest.raises(TypeError, match=r"`class_weights` must not be a masked array"):
        collapsed_objective(
            np.eye(K),
            np.eye(K),
            [1, 2, 3],
            1e-3,
            1e-3,
            class_weights=np.ma.masked_array([1.0] * 3),
        )
    from ncgeom import ufm_relu_optimum

    with pytest.raises(TypeError, match=r"`counts` must not be a masked array"):
        ufm_relu_optimum(np.ma.masked_array([30, 20, 10], mask=[0, 0, 1]), 1e-3, 1e-3)


def test_matrix_features_are_refused_with_the_remedy():
    x, y = _blobs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        features = np.asmatrix(x)
    for call in (
        lambda: ClassStats.from_features(features, y, K),
        lambda: nc_report((features, y)),
        lambda: ufm_objective(np.eye(K), features, y, 1e-3, 1e-3),
    ):
        with pytest.raises(TypeError, match=r"`features` must be an array, not a numpy\.matrix"):
            call()


def test_sparse_and_meta_tensors_are_refused_by_name():
    x, y = _blobs()
    features, labels = torch.from_numpy(x), torch.from_numpy(y)
    with pytest.raises(TypeError, match=r"`features` must be a dense \(strided\) tensor"):
        ClassStats.from_features(features.to_sparse(), labels, K)
    with pytest.raises(TypeError, match=r"`features` must be a dense \(strided\) tensor"):
        nc_report((features.to_sparse_csr(), labels))
    meta = torch.zeros(len(y), dtype=torch.int64, device="meta")
    with pytest.raises(
        TypeError, match=r"`labels` must hold values; got a tensor on torch's meta"
    ):
        ClassStats.from_features(features, meta, K)
    with pytest.raises(
        TypeError, match=r"`labels` must hold values; got a tensor on torch's meta"
    ):
        ClassStats.empty(K, 3, xp=torch).update(features, meta)


def test_dask_arrays_go_to_stats_from_dask_and_need_known_chunks():
    da = pytest.importorskip("dask.array")
    from ncgeom.outofcore import stats_from_dask

    x, y = _blobs()
    dx, dy = da.from_array(x, chunks=(100, 3)), da.from_array(y, chunks=100)
    with pytest.raises(
        TypeError, match=r"`features` must be an in-memory array; got a Dask.*stats_from_dask"
    ):
        ClassStats.from_features(dx, dy, K)
    with pytest.raises(TypeError, match=r"`features` must be an in-memory array; got a Dask"):
        nc_report((dx, y))
    keep = dx[:, 0] > -100  # every row, but Dask no longer knows how many
    for features, labels, name in ((dx[keep], dy[keep], "features"), (dx, dy[keep], "labels")):
        hint = rf"`{name}` must have known chunk sizes.*call `{name}\.compute_chunk_sizes\(\)`"
        with pytest.raises(TypeError, match=hint):
            stats_from_dask(features, labels, K)
    known = dx[keep].compute_chunk_sizes()
    stats = stats_from_dask(known, dy[keep].compute_chunk_sizes(), K, scheduler="sync")
    np.testing.assert_allclose(stats.means, ref.means(x, y, K), rtol=1e-12)


def test_plain_subclasses_and_strided_tensors_pass_the_container_rule(tmp_path):
    x, y = _blobs()
    mapped = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=x.dtype, shape=x.shape)
    mapped[:] = x
    stats = ClassStats.from_features(mapped, y, K)
    np.testing.assert_allclose(stats.means, ref.means(x, y, K), rtol=1e-12)
    validate.check_container(torch.zeros(3)[::2], "features")  # a strided view


# ----------------------------------------------------------------------------- values
@pytest.mark.parametrize("exponent", [-1040, -1060])
def test_subnormal_float64_features_are_exact(exponent):
    # 2**-1040 is subnormal in float64: the features are exact as given, and
    # the statistics must describe them, not report that their squares overflow.
    x, y = _blobs(n=600)
    tiny = np.ldexp(0.4 * x, exponent)
    assert (np.abs(tiny).max() < np.finfo(np.float64).smallest_normal) == (exponent < -1022)
    back = np.ldexp(tiny, -exponent)  # the same values at ordinary size, exactly
    whole = ClassStats.from_features(tiny, y, K)
    streamed = ClassStats.empty(K, 3).update(tiny[:250], y[:250]).update(tiny[250:], y[250:])
    merged = merge_stats(
        *(ClassStats.from_features(tiny[p], y[p], K) for p in (slice(0, 250), slice(250, None)))
    )
    for stats in (whole, streamed, merged):
        # In units of 2**exponent: `means` themselves are subnormal again, rounded.
        unit = stats.unit_scale / 2.0**exponent
        np.testing.assert_allclose(stats.scaled_means * unit, ref.means(back, y, K), rtol=1e-12)
        scaled = stats.scaled_variances() * unit**2
        np.testing.assert_allclose(scaled, ref.variances(back, y, K), rtol=1e-9)
        assert float(metrics.nc1(stats)) == pytest.approx(ref.nc1(back, y, K), rel=1e-9)


def test_class_means_near_the_top_of_float32_get_a_finite_scale():
    # log2(1.6 * 2**127) rounds to 128: a scale of 2**128 is beyond float32.
    x = np.array([[1.6, 0.1], [0.2, 1.5], [1.2, 1.3]])
    big = np.ldexp(x, 127).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = ClassStats.from_features(big, np.arange(3), 3)
    assert np.isfinite(stats.unit_scale)
    unit = stats.unit_scale / np.float32(2.0**127)
    np.testing.assert_allclose(stats.scaled_means * unit, x, rtol=1e-7)
    np.testing.assert_array_equal(stats.class_variances, 0.0)


def test_zero_rows_are_refused_by_from_features_and_an_empty_update_is_no_change():
    empty_x, empty_y = np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
    with pytest.raises(
        ValueError, match=r"`features` must hold at least one sample; got shape \(0, 3\)"
    ):
        ClassStats.from_features(empty_x, empty_y, K)
    stats = ClassStats.empty(K, 3)
    assert stats.update(empty_x, empty_y) is stats


def test_stats_from_dask_skips_empty_blocks_and_refuses_no_rows():
    da = pytest.importorskip("dask.array")
    from ncgeom.outofcore import stats_from_dask

    x, y = _blobs()
    blocks = da.from_array(x, chunks=((0, 150, 0, 150), (3,)))
    stats = stats_from_dask(blocks, y, K, scheduler="sync")
    np.testing.assert_allclose(stats.means, ref.means(x, y, K), rtol=1e-12)
    np.testing.assert_allclose(
        stats.within_covariance(), ref.within_covariance(x, y, K), rtol=1e-10
    )
    with pytest.raises(
        ValueError, match=r"`features` must hold at least one sample; got shape \(0, 3\)"
    ):
        stats_from_dask(da.from_array(x[:0], chunks=(10, 3)), y[:0], K)


# ----------------------------------------------------------------------------- namespaces
def test_counts_none_is_a_type_error_naming_counts():
    with pytest.raises(
        TypeError, match=r"`counts` must be an array or a sequence of real numbers; got None"
    ):
        collapsed_gradients(np.eye(2), np.eye(2), None, 1e-2, 1e-2)
    with pytest.raises(
        TypeError, match=r"`counts` must be an array or a sequence of real numbers"
    ):
        collapsed_objective(np.eye(2), np.eye(2), ["a", "b"], 1e-2, 1e-2)


def test_every_xp_argument_goes_through_one_resolver():
    w, h, y = np.eye(2), np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([0, 1])
    # The same objective written here: mean cross-entropy plus the two decays.
    logits = h @ w.T
    ce = np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(2), y]
    want = ce.mean() + 0.5e-2 * (w**2).sum() + 0.5e-2 * (h**2).sum()
    for xp, lift in ((np, np.asarray), (torch, torch.from_numpy)):
        got = ufm_objective(lift(w), lift(h), lift(y), 1e-2, 1e-2, xp=xp)  # a raw module
        assert float(got) == pytest.approx(want, rel=1e-12)
    with pytest.raises(
        TypeError, match=r"`xp` must be the namespace of the arrays \(numpy\); got torch"
    ):
        ufm_objective(w, h, y, 1e-2, 1e-2, xp=torch)
    for bad in ("numpy", np.zeros(2), 3):
        with pytest.raises(TypeError, match=r"`xp` must be an array library module"):
            ufm_objective(w, h, y, 1e-2, 1e-2, xp=bad)
        with pytest.raises(TypeError, match=r"`xp` must be an array library module"):
            ClassStats.empty(2, 2, xp=bad)
    from ncgeom import solve_ufm, ufm_relu_optimum

    for call in (
        lambda: ufm_relu_optimum([3, 2], 1e-2, 1e-2, xp="numpy"),
        lambda: solve_ufm([3, 2], 1e-2, 1e-2, 2, xp="numpy"),
        lambda: resolve_namespace(pytest),  # a module that makes no arrays
    ):
        with pytest.raises(TypeError, match=r"`xp` must be an array library module"):
            call()
    assert ClassStats.empty(2, 2, xp=torch).counts.dtype == torch.int64


def test_without_jax_64_bit_mode_the_engine_and_report_do_not_warn_per_array():
    pytest.importorskip("jax")
    # x64 is a process-wide JAX flag (on in this test session): a fresh process.
    script = textwrap.dedent(
        """
        import json, warnings
        import jax, jax.numpy as jnp, numpy as np
        from ncgeom import ClassStats, merge_stats, nc_report
        assert not jax.config.read("jax_enable_x64")
        rng = np.random.default_rng(0)
        y = np.arange(300) % 3
        x = (np.eye(3)[y] * 4 + 0.1 * rng.normal(size=(300, 3))).astype(np.float32)
        xj, yj = jnp.asarray(x), jnp.asarray(y)
        out = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            a = ClassStats.from_features(xj, yj, 3)
            b = ClassStats.empty(3, 3, xp=jnp).update(xj, yj)
            merged = merge_stats(a, b)
            w = jnp.asarray(rng.normal(size=(3, 3)).astype(np.float32))
            report = nc_report((xj, yj), w)
            nc_report(merged, w)
        out["ordinary"] = [str(w.message) for w in caught]
        out["agreement"] = report.ncc_agreement
        out["counts"] = str(merged.counts.dtype)
        out["means"] = np.asarray(merged.means).tolist()
        # Collapsed, sorted classes: float32 class means would need float64 sums.
        n = 20000
        y = np.repeat(np.arange(3), n)
        centre = np.abs(rng.normal(size=16))
        x = np.eye(3, 16)[y] + centre + 1e-6 * rng.normal(size=(3 * n, 16))
        x = x.astype(np.float32)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ClassStats.from_features(jnp.asarray(x), jnp.asarray(y), 3)
        out["collapsed"] = [str(w.message) for w in caught]
        print(json.dumps(out))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["ordinary"] == []
    assert 0 <= out["agreement"] <= 1
    assert out["counts"] == "int32"
    x, y = _blobs(dtype=np.float32)
    np.testing.assert_allclose(out["means"], ref.means(x.astype(np.float64), y, K), rtol=1e-6)
    assert len(out["collapsed"]) == 1 and "jax_enable_x64" in out["collapsed"][0]


# ----------------------------------------------------------------------------- float32 Gram
def _outside(per_class, spread, *, k=10, d=64, seed=0):
    """float32 features at one-hot means, spread `spread`, and one sample 250
    away on every coordinate, with its class mean kept: the far sample lies
    outside the between-class directions."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(k), per_class))
    x = np.eye(k, d)[y] + spread / np.sqrt(d) * rng.normal(size=(len(y), d))
    same = np.flatnonzero(y == y[0])
    x[same] -= 250.0 / len(same)
    x[0] += 250.0
    return x.astype(np.float32), y


def _ordinary(per_class, spread, *, k=10, d=64, seed=0):
    """float32 collapsed features: non-negative unit-norm means plus noise of norm `spread`."""
    rng = np.random.default_rng(seed)
    means = np.abs(rng.normal(size=(k, d)))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    y = rng.permutation(np.repeat(np.arange(k), per_class))
    return (means[y] + spread / np.sqrt(d) * rng.normal(size=(len(y), d))).astype(np.float32), y


def _nc1_and_rounding(stats):
    """NC1 from the statistics the way `metrics.nc1` makes it, with the bound."""
    view = metrics.populated(stats)
    basis, weights = metrics.between_basis(view.centred, view.xp)
    along, rounding = stats.scatter_along(basis, weights)
    return float(np.sum(weights * along) / int(stats.num_samples)), float(rounding)


def _paths(x, y, k):
    streamed = ClassStats.empty(k, x.shape[1], dtype=np.float32)
    for lo in range(0, len(y), 4096):
        streamed = streamed.update(x[lo : lo + 4096], y[lo : lo + 4096])
    blocks = np.array_split(np.arange(len(y)), 7)
    return {
        "from_features": ClassStats.from_features(x, y, k),
        "update": streamed,
        "merge": merge_stats(*(ClassStats.from_features(x[b], y[b], k) for b in blocks)),
    }


def _gram_bound(x32, y, k):
    """``eps32 ||S_W||_F sum_r w_r / sum_r w_r u_r^T S_W u_r`` in float64 (docs/accuracy.md)."""
    x = x32.astype(np.float64)
    mu = ref.means(x, y, k)
    centred = mu - x.mean(axis=0)
    dev = x - mu[y]
    scatter = dev.T @ dev
    lam, u = np.linalg.eigh(centred.T @ centred)
    keep = lam > max(x.shape[1], k) * np.finfo(np.float64).eps * lam.max()
    w, basis = 1 / lam[keep], u[:, keep]
    along = np.einsum("ir,ij,jr->r", basis, scatter, basis)
    return np.finfo(np.float32).eps * np.linalg.norm(scatter) * w.sum() / (w * along).sum()


@pytest.mark.parametrize(("per_class", "spread"), [(1000, 0.01), (5000, 0.1), (20000, 0.1)])
def test_the_gram_bound_covers_the_error_and_warns_with_the_remedy(per_class, spread):
    x, y = _outside(per_class, spread)
    want = ref.nc1(x.astype(np.float64), y, 10)
    bound = _gram_bound(x, y, 10)
    for name, stats in _paths(x, y, 10).items():
        nc1, rounding = _nc1_and_rounding(stats)
        error = abs(nc1 / want - 1)
        assert error > NC1_ROUNDING_LIMIT, name  # the case is a real one: float32 is off
        assert error <= rounding, name  # ... and the bound says by how much at most
        assert bound / 2 <= rounding <= 2 * bound, name  # from the float32 Gram itself
        with pytest.warns(
            UserWarning, match=r"NC1 from these float32 statistics may be off by up to"
        ) as caught:
            assert warn_nc1_rounding(rounding, stats.dtype)
        assert "dtype=np.float64" in str(caught[0].message)
        assert caught[0].filename == __file__
    # Accumulated in float64, the same float32 batches are exact.
    exact = ClassStats.empty(10, x.shape[1], dtype=np.float64)
    for lo in range(0, len(y), 4096):
        exact = exact.update(x[lo : lo + 4096], y[lo : lo + 4096])
    nc1, rounding = _nc1_and_rounding(exact)
    assert nc1 == pytest.approx(want, rel=1e-9)
    assert not warn_nc1_rounding(rounding, exact.dtype)


@pytest.mark.parametrize(
    ("per_class", "k", "d", "spread"),
    [(1000, 10, 64, 1e-4), (10_000, 10, 64, 1e-5), (1000, 10, 512, 1e-3), (100_000, 3, 32, 1e-5)],
)
def test_the_gram_warning_stays_quiet_on_ordinary_collapsed_data(per_class, k, d, spread):
    x, y = _ordinary(per_class, spread, k=k, d=d)
    want = ref.nc1(x.astype(np.float64), y, k)
    for name, stats in _paths(x, y, k).items():
        nc1, rounding = _nc1_and_rounding(stats)
        assert nc1 == pytest.approx(want, rel=1e-4), name
        assert rounding < NC1_ROUNDING_LIMIT / 10, name
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert not warn_nc1_rounding(rounding, stats.dtype)


def test_the_gram_bound_of_degenerate_scatter():
    x, y = np.repeat(np.eye(K), 4, axis=0), np.repeat(np.arange(K), 4)
    stats = ClassStats.from_features(x, y, K)  # no within-class spread: nothing to round
    assert _nc1_and_rounding(stats) == (0.0, 0.0)
    spread = x + np.where(np.arange(12) % 2 == 0, 1.0, -1.0)[:, None] * np.ones(K) / 3
    _, rounding = _nc1_and_rounding(ClassStats.from_features(spread, y, K))
    assert rounding > 1  # all the scatter lies off the between-class directions
    with pytest.warns(UserWarning, match=r"may be off by (up to|entirely)"):
        warn_nc1_rounding(rounding, np.float32)
    with pytest.warns(UserWarning, match=r"may be off by entirely"):
        warn_nc1_rounding(np.inf, np.float32)


def test_nc1_and_the_report_warn_when_the_float32_gram_cannot_resolve_it():
    x, y = _outside(1000, 0.01)
    want = ref.nc1(x.astype(np.float64), y, 10)
    stats = ClassStats.from_features(x, y, 10)
    with pytest.warns(UserWarning, match="NC1 from these float32 statistics may be off by up to"):
        metrics.nc1(stats)
    with pytest.warns(UserWarning, match="NC1 from these float32 statistics may be off by up to"):
        nc_report(stats)
    # The in-memory report keeps no Gram, but projects float32 deviations: off
    # by 4e-4 here, which its estimate covers (docs/accuracy.md).
    with pytest.warns(UserWarning, match="NC1 from these float32 features may be off by up to"):
        assert nc_report((x, y)).nc1 == pytest.approx(want, rel=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet, qy = _ordinary(1000, 1e-4)
        assert nc_report((quiet, qy)).nc1 == pytest.approx(
            ref.nc1(quiet.astype(float), qy, 10), rel=1e-5
        )
        quiet_stats = ClassStats.from_features(quiet, qy, 10)
        metrics.nc1(quiet_stats)
        nc_report(quiet_stats)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_nc1_warning_when_the_scatter_is_only_rounding(dtype):
    # Features exactly at their class means: the scatter left is rounding, with a
    # large relative error and an absolute one far below the dtype's eps.
    y = np.repeat(np.arange(3), [30, 20, 10])
    for scale in (1e-20, 1.0, 3.7, 2.0**20, 1e20):
        x = (np.eye(3, 5)[y] * np.array([0.9, 1.0, 1.1])[y, None] * scale).astype(dtype)
        stats = ClassStats.from_features(x, y, 3)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert nc_report((x, y)).nc1 < 1e-30
            assert float(metrics.nc1(stats)) < 1e-30
            nc_report(stats)
