"""The metrics of class pairs (ncgeom.measure.pairs) against float64 NumPy
formulas written here from the definitions: full (K, K) matrices at small K,
row blocks at user sizes, the log domain where the kernel leaves the range.
"""

from __future__ import annotations

import math
import tracemalloc

import array_api_compat
import numpy as np
import pytest

from ncgeom import ClassStats
from ncgeom.measure import pairs
from ncgeom.measure.classes import DEGENERATE_METRICS, DEGENERATE_REASONS, populated

MEANS = pairs.MEANS_PAIR_METRICS
#: Metrics whose value is a log: compared with an absolute tolerance.
LOGS = ("log_energy", "riesz_log_energy", "riesz_log_variance")
#: Cosines: their values may be near 0, compared with an absolute tolerance.
COSINES = ("interference_mean", "interference_min", "interference_max", "equiangularity")
#: Tolerances by dtype: relative, and absolute for logs and cosines.
TOLERANCE = {"float64": (1e-10, 1e-12), "float32": (5e-6, 5e-7)}
EPS32 = float(np.finfo(np.float32).eps)


# ----------------------------------------------------------------------------- references
def _log_mean_exp(t: np.ndarray) -> float:
    top = np.max(t)
    return float(top + np.log(np.mean(np.exp(t - top))))


def _means_reference(
    means: np.ndarray,
    variances: np.ndarray,
    counts: np.ndarray,
    how: str = "samples",
    s: float | None = None,
    exponent: float = 1.0,
) -> dict[str, float]:
    """Every metric of pairs of class means, from the full (K, K) matrices."""
    mu = np.asarray(means, dtype=np.float64)
    v = np.asarray(variances, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)
    k, d = mu.shape
    centre = n @ mu / n.sum() if how == "samples" else mu.mean(axis=0)
    c = mu - centre
    u = c / np.linalg.norm(c, axis=1, keepdims=True)
    upper = np.triu_indices(k, 1)
    cos = (u @ u.T)[upper]
    dist = np.linalg.norm(u[:, None, :] - u[None, :, :], axis=-1)[upper]
    gap2 = np.sum((mu[:, None, :] - mu[None, :, :]) ** 2, axis=-1)[upper]
    gram, target = c @ c.T, np.eye(k) - np.ones((k, k)) / k
    unit = mu / np.linalg.norm(mu, axis=1, keepdims=True)
    s = d - 2 if s is None else s
    kernel = -s * np.log(dist)  # log of the Riesz kernel dist^-s
    log_mean = _log_mean_exp(kernel)
    # var = mean((x - mean)^2) = mean^2 mean((x / mean - 1)^2), in the log domain.
    with np.errstate(divide="ignore"):  # a variance of 0 (one pair) has the log -inf
        log_variance = 2 * log_mean + np.log(np.mean(np.expm1(kernel - log_mean) ** 2))
    return {
        "cdnv": float(np.mean((v[upper[0]] + v[upper[1]]) / (2 * gap2**exponent))),
        "etf_error": float(
            np.linalg.norm(gram / np.linalg.norm(gram) - target / np.linalg.norm(target))
        ),
        "equiangularity": float(np.mean(np.abs(cos + 1 / (k - 1)))),
        "orthogonality_error": float(np.mean(np.abs((unit @ unit.T)[upper]))),
        "equiangularity_std": float(np.std(cos)),
        "interference_mean": float(np.mean(cos)),
        "interference_min": float(np.min(cos)),
        "interference_max": float(np.max(cos)),
        "log_energy": float(np.mean(np.log(1 / dist))),
        "log_energy_variance": float(np.var(np.log(1 / dist))),
        "riesz_log_energy": log_mean,
        "riesz_log_variance": float(log_variance),
    }


def _class_numbers(x: np.ndarray, y: np.ndarray, k: int):
    """Class means, variances ((1/n_k) sum ||x_i - mu_k||^2) and counts, float64."""
    x = np.asarray(x, dtype=np.float64)
    counts = np.bincount(y, minlength=k)
    means = np.full((k, x.shape[1]), np.nan)
    variances = np.full(k, np.nan)
    for c in np.flatnonzero(counts):
        means[c] = x[y == c].mean(axis=0)
        variances[c] = np.mean(np.sum((x[y == c] - means[c]) ** 2, axis=1))
    return means, variances, counts


def _classifier_reference(w: np.ndarray) -> dict[str, float]:
    w = np.asarray(w, dtype=np.float64)
    k = len(w)
    unit = w / np.linalg.norm(w, axis=1, keepdims=True)
    cos = (unit @ unit.T)[np.triu_indices(k, 1)]
    gram, target = w @ w.T, np.eye(k) - np.ones((k, k)) / k
    return {
        "classifier_equiangularity": float(np.mean(np.abs(cos + 1 / (k - 1)))),
        "classifier_etf_error": float(
            np.linalg.norm(gram / np.linalg.norm(gram) - target / np.linalg.norm(target))
        ),
    }


# ----------------------------------------------------------------------------- data
def _data(seed: int = 0, n: int = 240, d: int = 7, k: int = 6, offset: float = 0.0):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    centres = 3 * rng.normal(size=(k, d)) + offset
    x = centres[y] + rng.normal(size=(n, d)) * rng.uniform(0.2, 1.5, size=(k, 1))[y]
    return x, y, k


def _stats(backend, x, y, k, dtype="float64"):
    x = np.asarray(x, dtype=dtype)
    return ClassStats.from_features(backend.asarray(x), backend.asarray(y), k)


def _float(backend, value) -> float:
    """A 0-d result on the backend's namespace and device, as a float."""
    like = backend.asarray(np.zeros(1))
    assert array_api_compat.array_namespace(value) is array_api_compat.array_namespace(like)
    assert str(array_api_compat.device(value)) == str(array_api_compat.device(like))
    assert value.shape == ()
    return float(backend.to_numpy(value))


def _close(got: float, want: float, name: str, dtype: str, scale: float = 1.0) -> None:
    rel, absolute = TOLERANCE[dtype]
    if name in LOGS or name in COSINES:
        assert got == pytest.approx(want, rel=rel, abs=absolute * scale), name
    else:
        assert got == pytest.approx(want, rel=rel * scale), name


def _reference_of(x, y, k, dtype="float64", **options):
    # The features as the statistics see them: rounded to `dtype` first.
    x = np.asarray(x, dtype=dtype).astype(np.float64)
    return _means_reference(*_class_numbers(x, y, k), **options)


# ----------------------------------------------------------------------------- values
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", [(6, 7), (12, 3)])
def test_every_means_metric_matches_the_reference(backend, dtype, shape):
    if backend.name == "jax" and shape != (6, 7):
        pytest.skip("JAX compiles every new shape: K > d runs on the other backends")
    k, d = shape
    x, y, _ = _data(d=d, k=k)
    stats = _stats(backend, x, y, k, dtype)
    values, flags = pairs.pair_metrics(populated(stats), MEANS)
    assert set(values) == set(MEANS)
    want = _reference_of(x, y, k, dtype)
    for name in MEANS:
        _close(_float(backend, values[name]), want[name], name, dtype)
    assert not any(bool(backend.to_numpy(flag)) for flag in flags.values())


@pytest.mark.parametrize("how", ["samples", "classes"])
def test_global_mean_centres_the_directions(how):
    x, y, k = _data(seed=3, offset=5.0)
    stats = ClassStats.from_features(x, y, k)
    values, _ = pairs.pair_metrics(populated(stats, how), MEANS)
    want = _reference_of(x, y, k, how=how)
    for name in MEANS:
        _close(float(values[name]), want[name], name, "float64")


def test_public_functions_match_the_reference(backend):
    x, y, k = _data(seed=1)
    stats = _stats(backend, x, y, k)
    want = _reference_of(x, y, k)
    for name in MEANS:
        _close(_float(backend, getattr(pairs, name)(stats)), want[name], name, "float64")
    for how in ("samples", "classes"):
        got = pairs.riesz_log_variance(stats, s=1.5, global_mean=how, block_rows=2)
        _close(
            _float(backend, got),
            _reference_of(x, y, k, how=how, s=1.5)["riesz_log_variance"],
            "riesz_log_variance",
            "float64",
        )
    for exponent in (0.5, 2.0):
        got = pairs.cdnv(stats, exponent=exponent)
        want_cdnv = _reference_of(x, y, k, exponent=exponent)["cdnv"]
        assert _float(backend, got) == pytest.approx(want_cdnv, rel=1e-10)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("k", [2, 3, 17])
def test_block_rows_give_the_same_values(dtype, k):
    x, y, _ = _data(seed=2, k=k, d=5, n=20 * k)
    stats = ClassStats.from_features(x.astype(dtype), y, k)
    view = populated(stats)
    want = _reference_of(x, y, k, dtype)
    runs = {rows: pairs.pair_metrics(view, MEANS, rows)[0] for rows in (None, 1, 2, 3, k)}
    for name in MEANS:
        for rows, values in runs.items():
            _close(float(values[name]), want[name], f"{name} with block_rows={rows}", dtype)
        if dtype == "float64":
            spread = {float(values[name]) for values in runs.values()}
            assert len(spread) == 1 or max(spread) - min(spread) <= 1e-13 * max(
                1.0, abs(want[name])
            ), name


@pytest.mark.parametrize("elements", [2**8, 2**24])
def test_the_device_blocks_give_the_reference_values(monkeypatch, elements):
    # On an accelerator the pass multiplies blocks of DEVICE_PAIR_BLOCK_ELEMENTS
    # entries; here the host takes that branch, with blocks of several sizes.
    k = 300
    x, y, _ = _data(seed=6, k=k, d=8, n=3 * k)
    stats = ClassStats.from_features(x, y, k)
    monkeypatch.setattr(pairs, "on_host", lambda xp, device=None: False)
    monkeypatch.setattr(pairs, "DEVICE_PAIR_BLOCK_ELEMENTS", elements)
    assert pairs.pair_block_rows(k, None, elements) == max(128, elements // k)
    values, _ = pairs.pair_metrics(populated(stats), MEANS)
    want = _reference_of(x, y, k)
    for name in MEANS:
        _close(float(values[name]), want[name], f"{name} in blocks of {elements}", "float64")


def test_each_metric_alone_equals_the_shared_pass():
    x, y, k = _data(seed=4, k=9)
    view = populated(ClassStats.from_features(x, y, k))
    together, _ = pairs.pair_metrics(view, MEANS, 4)
    for name in MEANS:
        alone, _ = pairs.pair_metrics(view, (name,), 4)
        assert set(alone) == {name}
        assert float(alone[name]) == pytest.approx(float(together[name]), rel=1e-13, abs=1e-15)


# ----------------------------------------------------------------------------- conventions
def test_riesz_defaults_to_s_equal_d_minus_2():
    x, y, k = _data(seed=5, d=6)
    stats = ClassStats.from_features(x, y, k)
    want = _reference_of(x, y, k, s=4)
    for name in ("riesz_log_energy", "riesz_log_variance"):
        default = float(getattr(pairs, name)(stats))
        assert default == pytest.approx(float(getattr(pairs, name)(stats, s=4)), rel=1e-14)
        assert default == pytest.approx(want[name], rel=1e-10)
        assert default != pytest.approx(_reference_of(x, y, k, s=3)[name], rel=1e-3)


@pytest.mark.parametrize("s", [-1.0, -0.5, 0.25, 3.0])
def test_riesz_takes_any_real_s(s):
    x, y, k = _data(seed=6, d=4, k=8)
    stats = ClassStats.from_features(x, y, k)
    want = _reference_of(x, y, k, s=s)
    for name in ("riesz_log_energy", "riesz_log_variance"):
        assert float(getattr(pairs, name)(stats, s=s)) == pytest.approx(want[name], rel=1e-10)


def test_riesz_with_s_zero_is_the_constant_kernel():
    x, y, k = _data(seed=7, d=2)  # d - 2 = 0
    stats = ClassStats.from_features(x, y, k)
    assert float(pairs.riesz_log_energy(stats)) == 0.0
    assert float(pairs.riesz_log_variance(stats)) == -math.inf


def test_the_public_riesz_energy_is_the_log_of_the_kernel_mean():
    # rhubarbwu/neural-collapse's energy is sign(s) * mean dist^-s: here exp of ours.
    x, y, k = _data(seed=8, d=5)
    stats = ClassStats.from_features(x, y, k)
    mu, _, counts = _class_numbers(x, y, k)
    c = mu - counts @ mu / counts.sum()
    u = c / np.linalg.norm(c, axis=1, keepdims=True)
    dist = [np.linalg.norm(u[a] - u[b]) for a in range(k) for b in range(a + 1, k)]
    energy = np.mean(np.power(dist, -3.0))
    assert math.exp(float(pairs.riesz_log_energy(stats))) == pytest.approx(energy, rel=1e-10)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("scale", [1e-20, 1e-5, 1e5, 1e20])
def test_feature_scale(dtype, scale):
    # Scale-free metrics do not move; CDNV with a distance exponent carries
    # length^(2 - 2 exponent), right in float64 although float32 cannot hold it.
    x, y, k = _data(seed=9)
    stats = ClassStats.from_features((x * scale).astype(dtype), y, k)
    base = _reference_of(x, y, k, dtype)
    view = populated(stats)
    values, _ = pairs.pair_metrics(view, MEANS)
    for name in MEANS:
        _close(float(values[name]), base[name], name, dtype, scale=7)
    for exponent in (0.5, 2.0, 3.0):
        got = pairs.cdnv(stats, exponent=exponent)
        assert got.dtype == np.float64
        want = _reference_of(x, y, k, dtype, exponent=exponent)["cdnv"]
        assert float(got) == pytest.approx(
            want * scale ** (2 - 2 * exponent), rel=30 * (TOLERANCE[dtype][0])
        )
    assert pairs.cdnv(stats).dtype == stats.dtype  # exponent 1: scale-free


# ----------------------------------------------------------------------------- float32
def _clustered_means(k: int, d: int, clusters: int, seed: int = 0) -> np.ndarray:
    """Unit directions in clusters: pairs inside a cluster at distance about
    0.95, pairs across clusters at about 1.41."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    own = rng.normal(size=(k, d))
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    rows = 0.74 * centres[np.arange(k) % clusters] + 0.67 * own
    return rows - rows.mean(axis=0)


def _upper_blocks(u: np.ndarray, rows: int):
    """(rows of the block, the block's pairs k < l as a mask, its cosines)."""
    k = len(u)
    for lo in range(0, k, rows):
        index = np.arange(lo, min(lo + rows, k))[:, None]
        yield index, np.arange(k)[None, :] > index, u[index[:, 0]] @ u.T


def _blocked_reference(
    means: np.ndarray, s: float, variances: np.ndarray | None = None, rows: int = 256
) -> dict[str, float]:
    """Every metric of pairs of class means centred at the mean of the class
    means, float64, in row blocks and three passes (memory bounded): sums,
    then squared deviations from the means of the first pass, the Riesz
    kernel in the log domain."""
    mu = np.asarray(means, dtype=np.float64)
    c = mu - mu.mean(axis=0)
    norms = np.linalg.norm(c, axis=1)
    u, sq = c / norms[:, None], norms * norms
    unit = mu / np.linalg.norm(mu, axis=1, keepdims=True)
    k = len(u)
    pairs_count = k * (k - 1) / 2
    total = dict.fromkeys(("cos", "abs", "orth", "cdnv", "log", "gram_sq", "gram_target"), 0.0)
    low, high, top = math.inf, -math.inf, -math.inf
    for index, upper, cos in _upper_blocks(u, rows):
        gram = cos * norms[index] * norms[None, :]
        target = np.where(index == np.arange(k)[None, :], 1 - 1 / k, -1 / k)
        total["gram_sq"] += float(np.sum(gram * gram))
        total["gram_target"] += float(np.sum(gram * target))
        pair_cos = cos[upper]
        log_d2 = np.log(np.maximum(2 - 2 * pair_cos, 0))
        total["cos"] += float(np.sum(pair_cos))
        total["abs"] += float(np.sum(np.abs(pair_cos + 1 / (k - 1))))
        total["orth"] += float(np.sum(np.abs(unit[index[:, 0]] @ unit.T)[upper]))
        total["log"] += float(np.sum(log_d2))
        low, high = min(low, float(pair_cos.min())), max(high, float(pair_cos.max()))
        top = max(top, float(np.max(-s / 2 * log_d2)))
        if variances is not None:
            gap2 = (sq[index] + sq[None, :] - 2 * gram)[upper]
            spread = (variances[index] + variances[None, :])[upper]
            total["cdnv"] += float(np.sum(spread / (2 * gap2)))
    mean_cos, mean_log = total["cos"] / pairs_count, total["log"] / pairs_count
    spread_cos = spread_log = kernel_sum = 0.0
    for _, upper, cos in _upper_blocks(u, rows):
        pair_cos = cos[upper]
        log_d2 = np.log(np.maximum(2 - 2 * pair_cos, 0))
        spread_cos += float(np.sum((pair_cos - mean_cos) ** 2))
        spread_log += float(np.sum((log_d2 - mean_log) ** 2))
        kernel_sum += float(np.sum(np.exp(-s / 2 * log_d2 - top)))
    log_mean = top + math.log(kernel_sum / pairs_count)
    # var = mean^2 mean((x / mean - 1)^2), in the log domain.
    kernel_spread = 0.0
    for _, upper, cos in _upper_blocks(u, rows):
        log_d2 = np.log(np.maximum(2 - 2 * cos[upper], 0))
        kernel_spread += float(np.sum(np.expm1(-s / 2 * log_d2 - log_mean) ** 2))
    # ||G/|G| - T/|T|||^2 = 2 - 2 <G, T> / (|G| |T|), |T|^2 = K - 1.
    etf = 2 - 2 * total["gram_target"] / math.sqrt(total["gram_sq"] * (k - 1))
    want = {
        "etf_error": math.sqrt(etf),
        "equiangularity": total["abs"] / pairs_count,
        "orthogonality_error": total["orth"] / pairs_count,
        "interference_mean": mean_cos,
        "interference_min": low,
        "interference_max": high,
        "equiangularity_std": math.sqrt(spread_cos / pairs_count),
        "log_energy": -mean_log / 2,
        "log_energy_variance": spread_log / pairs_count / 4,
        "riesz_log_energy": log_mean,
        "riesz_log_variance": 2 * log_mean + math.log(kernel_spread / pairs_count),
    }
    if variances is not None:
        want["cdnv"] = total["cdnv"] / pairs_count
    return want


def _stats_of_means(means: np.ndarray, dtype: str) -> ClassStats:
    """Statistics whose class means are `means` (one sample a class, samples'
    centre = the classes' centre)."""
    means = np.asarray(means, dtype=dtype)
    return ClassStats.from_features(means, np.arange(len(means)), len(means))


def test_riesz_at_d_4096_in_float32_where_the_kernel_leaves_the_range():
    k, d = 384, 4096
    means = _clustered_means(k, d, clusters=24)
    stats = _stats_of_means(means, "float32")
    s = d - 2
    # The kernel itself, as a direct float32 code forms it: Inf and 0.
    unit = (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)
    dist = np.linalg.norm(unit[0] - unit[1:], axis=1)
    with np.errstate(over="ignore"):
        naive = dist ** np.float32(-s)
    assert np.isinf(naive).any() and (naive == 0).any()
    values, flags = pairs.pair_metrics(populated(stats), MEANS)
    rounded = np.asarray(stats.means, dtype=np.float64)
    want = _blocked_reference(rounded, s)
    for name, value in want.items():
        got = float(values[name])
        assert np.isfinite(got), name
        # float32 cosines carry about eps: the logs move by s/2 eps / d2 at most.
        limit = 4 * s * EPS32 if "riesz" in name else 1e-5
        assert got == pytest.approx(value, rel=1e-4, abs=limit), name
    assert not bool(flags["same_direction"])


def _near_etf(k: int, d: int, size: float, seed: int = 0) -> np.ndarray:
    """A simplex ETF of k vertices in d dimensions, moved by `size` (relative)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(d, k)))
    etf = (np.eye(k) - 1 / k) @ basis.T * 10
    return etf + size * 10 * rng.normal(size=(k, d)) / math.sqrt(d)


@pytest.mark.parametrize("size", [1e-3, 1e-5])
def test_variances_near_a_simplex_etf_in_float32(size):
    # The pairwise cosines are -1/(K-1) up to `size`: E[x^2] - E[x]^2 would
    # cancel every digit of the variance in float32.
    k, d = 64, 80
    stats = _stats_of_means(_near_etf(k, d, size), "float32")
    rounded = np.asarray(stats.means, dtype=np.float64)
    values, _ = pairs.pair_metrics(populated(stats), MEANS)
    want = _means_reference(rounded, np.zeros(k), np.ones(k), s=d - 2)
    eps = EPS32
    # The cosines themselves carry rounding eps: a std of `size` keeps about
    # eps / size of its digits.
    for name in ("equiangularity_std", "log_energy_variance", "etf_error", "equiangularity"):
        got = float(values[name])
        assert got == pytest.approx(want[name], rel=200 * eps / size), name
    riesz = float(values["riesz_log_variance"])
    assert riesz == pytest.approx(want["riesz_log_variance"], abs=200 * d * eps / size)
    # The naive formula on the same float32 cosines loses the answer.
    unit = (rounded / np.linalg.norm(rounded, axis=1, keepdims=True)).astype(np.float32)
    cos = (unit @ unit.T)[np.triu_indices(k, 1)]
    naive = float(np.mean(cos * cos) - np.mean(cos) ** 2)
    assert abs(naive - want["equiangularity_std"] ** 2) > 10 * abs(
        float(values["equiangularity_std"]) ** 2 - want["equiangularity_std"] ** 2
    )


def _benchmark_stats(k: int, d: int, dtype: str, seed: int = 0):
    """Statistics of 4 samples a class, as the benchmarks build them, and the
    class means and variances of those samples in float64."""
    rng = np.random.default_rng(seed)
    labels = np.arange(4 * k) % k
    x = (3 * rng.normal(size=(k, d))[labels] + rng.normal(size=(4 * k, d))).astype(dtype)
    stats = ClassStats.from_features(x, labels, k, gram=False)
    wide = x.astype(np.float64).reshape(4, k, d)  # sample i of class c is row i * k + c
    means = wide.mean(axis=0)
    return stats, means, np.mean(np.sum((wide - means) ** 2, axis=-1), axis=0)


@pytest.mark.parametrize(
    "k, d",
    [
        (4096, 256),
        pytest.param(16_384, 256, marks=pytest.mark.slow),
        pytest.param(32_768, 256, marks=pytest.mark.slow),
        pytest.param(4096, 4096, marks=pytest.mark.slow),
    ],
)
def test_float32_at_user_sizes(k, d):
    stats, means, variances = _benchmark_stats(k, d, "float32")
    values, flags = pairs.pair_metrics(populated(stats, "classes"), MEANS)
    want = _blocked_reference(means, d - 2, variances)
    assert set(want) == set(MEANS)
    for name, value in want.items():
        # The means are rounded to float32 (eps); the Riesz kernel multiplies
        # the relative error of the distances by s/2.
        limit = 4 * (d - 2) * EPS32 if "riesz" in name else 2e-6
        assert float(values[name]) == pytest.approx(value, rel=1e-4, abs=limit), name
    assert not any(bool(flag) for flag in flags.values())


def test_pair_memory_stays_about_one_block():
    k = 4096
    stats, _, _ = _benchmark_stats(k, 6, "float64")
    view = populated(stats)
    tracemalloc.start()
    pairs.pair_metrics(view, MEANS)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # A dense K x K float64 matrix is 128 MiB; the pass holds two products of
    # one block (the centred and the uncentred cosines) and a few tiles.
    assert peak < 4 * 8 * pairs.PAIR_BLOCK_ELEMENTS


# ----------------------------------------------------------------------------- degenerate
def _stats_from_means(means, counts=None):
    means = np.asarray(means, dtype=np.float64)
    counts = np.ones(len(means), dtype=int) if counts is None else np.asarray(counts)
    x = np.repeat(means, counts, axis=0)
    return ClassStats.from_features(x, np.repeat(np.arange(len(means)), counts), len(means))


@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_a_zero_centred_mean_leaves_the_direction_metrics_undefined(offset):
    # Class 1 is the mean of the others: its centred mean is zero, or rounding
    # far from the origin, and has no direction.
    means = np.array([[-1.0, 0.5], [0.0, 0.0], [1.0, -0.5], [0.3, 2.0], [-0.3, -2.0]]) + offset
    stats = _stats_from_means(means)
    _, flags = pairs.pair_metrics(populated(stats), MEANS)
    assert bool(flags["zero_direction"])
    for name in MEANS:
        got = float(getattr(pairs, name)(stats))
        if "zero_direction" in DEGENERATE_METRICS[name]:
            assert math.isnan(got), name
        else:
            assert math.isfinite(got), name


def test_coincident_directions_leave_the_kernels_undefined():
    # Centred means (1, 0) and (2, 0) point the same way; the means differ.
    means = [[1.0, 0.0], [2.0, 0.0], [-1.5, 1.0], [-1.5, -1.0]]
    stats = _stats_from_means(means)
    view = populated(stats, "classes")
    _, flags = pairs.pair_metrics(view, MEANS, s=1.0)
    assert bool(flags["same_direction"]) and bool(flags["riesz_singular"])
    assert not bool(flags["coincident"]) and not bool(flags["zero_direction"])
    for name in ("log_energy", "log_energy_variance"):
        assert math.isnan(float(getattr(pairs, name)(stats, global_mean="classes"))), name
    for name in ("riesz_log_energy", "riesz_log_variance"):
        got = getattr(pairs, name)(stats, s=1.0, global_mean="classes")
        assert math.isnan(float(got)), name
    assert float(pairs.interference_max(stats, global_mean="classes")) == pytest.approx(1.0)
    assert math.isfinite(float(pairs.cdnv(stats)))
    # With s <= 0 the kernel is finite at distance 0: defined.
    assert not bool(pairs.pair_metrics(view, MEANS, s=-1.0)[1]["riesz_singular"])
    with np.errstate(divide="ignore", invalid="ignore"):  # log(1/0): the log kernel, unused
        want = _means_reference(np.array(means), np.zeros(4), np.ones(4), "classes", s=-1.0)
    for name in ("riesz_log_energy", "riesz_log_variance"):
        got = getattr(pairs, name)(stats, s=-1.0, global_mean="classes")
        assert float(got) == pytest.approx(want[name], rel=1e-12), name


def test_coincident_means_leave_cdnv_undefined():
    stats = _stats_from_means([[1.0, 0.0], [1.0, 0.0], [0.0, 3.0]], counts=[2, 3, 4])
    _, flags = pairs.pair_metrics(populated(stats), ("cdnv",))
    assert bool(flags["coincident"])
    assert math.isnan(float(pairs.cdnv(stats)))


def test_every_flag_of_the_pair_metrics_has_a_reason():
    names = (*MEANS, *pairs.CLASSIFIER_PAIR_METRICS)
    for name in names:
        assert name in DEGENERATE_METRICS, name
        for flag in DEGENERATE_METRICS[name]:
            assert flag in DEGENERATE_REASONS, (name, flag)
    view = populated(_stats_from_means(np.eye(3)))
    _, flags = pairs.pair_metrics(view, MEANS)
    _, classifier_flags = pairs.classifier_pair_metrics(np.eye(3), pairs.CLASSIFIER_PAIR_METRICS)
    assert set(flags) | set(classifier_flags) <= set(DEGENERATE_REASONS)


# ----------------------------------------------------------------------------- classifier
def test_classifier_metrics_match_the_reference(backend):
    rng = np.random.default_rng(10)
    w = rng.normal(size=(6, 4))
    want = _classifier_reference(w)
    wb = backend.asarray(w)
    # JAX compiles every new tile shape: one block size there.
    for name in pairs.CLASSIFIER_PAIR_METRICS:
        for rows in (None,) if backend.name == "jax" else (None, 1, 4):
            got = getattr(pairs, name)(wb, block_rows=rows)
            assert _float(backend, got) == pytest.approx(want[name], rel=1e-10), name


def test_classifier_metrics_take_the_rows_of_the_classes_with_samples(backend):
    if backend.name == "jax":
        pytest.skip("JAX compiles every new shape: the rows are taken as on the other backends")
    x, y, _ = _data(seed=11, k=5)
    y = np.where(y == 2, 3, y)  # class 2 has no samples
    k = 5
    stats = ClassStats.from_features(backend.asarray(x), backend.asarray(y), k)
    w = np.random.default_rng(12).normal(size=(k, 7))
    want = _classifier_reference(w[[0, 1, 3, 4]])
    for name in pairs.CLASSIFIER_PAIR_METRICS:
        with pytest.warns(UserWarning, match="no samples"):
            got = getattr(pairs, name)(backend.asarray(w), stats)
        assert _float(backend, got) == pytest.approx(want[name], rel=1e-10), name


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_classifier_metrics_are_scale_free(dtype, scale):
    w = np.random.default_rng(13).normal(size=(9, 5))
    want = _classifier_reference(w)
    with np.errstate(over="ignore", under="ignore"):
        scaled = (w * scale).astype(dtype)
    for name in pairs.CLASSIFIER_PAIR_METRICS:
        got = float(getattr(pairs, name)(scaled))
        assert got == pytest.approx(want[name], rel=100 * float(np.finfo(dtype).eps)), name


def test_classifier_at_a_simplex_etf_and_with_zero_rows():
    etf = 3 * (np.eye(5) - 1 / 5)
    assert abs(float(pairs.classifier_equiangularity(etf))) < 1e-12
    assert abs(float(pairs.classifier_etf_error(etf))) < 1e-7
    one_zero = np.vstack([etf[:4], np.zeros((1, 5))])
    assert math.isnan(float(pairs.classifier_equiangularity(one_zero)))
    with np.errstate(invalid="ignore"):  # the zero row has no cosine; its Gram is defined
        want = _classifier_reference(one_zero)["classifier_etf_error"]
    assert float(pairs.classifier_etf_error(one_zero)) == pytest.approx(want, rel=1e-12)
    for name in pairs.CLASSIFIER_PAIR_METRICS:
        assert math.isnan(float(getattr(pairs, name)(np.zeros((4, 3))))), name


# ----------------------------------------------------------------------------- grid
def test_interference_grid_matches_the_reference(backend):
    x, y, _ = _data(seed=14, k=5)
    y = np.where(y == 1, 0, y)  # class 1 has no samples
    k = 5
    stats = ClassStats.from_features(backend.asarray(x), backend.asarray(y), k)
    mu, _, counts = _class_numbers(x, y, k)
    kept = [0, 2, 3, 4]
    c = mu[kept] - counts[kept] @ mu[kept] / counts.sum()
    u = c / np.linalg.norm(c, axis=1, keepdims=True)
    with pytest.warns(UserWarning, match="no samples"):
        grid = backend.to_numpy(pairs.interference_grid(stats))
    with pytest.warns(UserWarning, match="no samples"):
        inner = backend.to_numpy(pairs.interference_grid(stats, cosine=False))
    assert grid.shape == inner.shape == (k, k)
    assert np.isnan(grid[1]).all() and np.isnan(grid[:, 1]).all() and np.isnan(inner[1]).all()
    np.testing.assert_allclose(grid[np.ix_(kept, kept)], u @ u.T, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(inner[np.ix_(kept, kept)], c @ c.T, rtol=1e-10)


def test_interference_grid_in_feature_units_at_any_scale():
    x, y, k = _data(seed=15, k=4)
    scale = 1e20
    stats = ClassStats.from_features((x * scale).astype(np.float32), y, k)
    mu, _, counts = _class_numbers(x.astype(np.float32), y, k)
    c = mu - counts @ mu / counts.sum()
    inner = np.asarray(pairs.interference_grid(stats, cosine=False))
    assert inner.dtype == np.float64
    np.testing.assert_allclose(inner, (c @ c.T) * scale**2, rtol=1e-5)


def test_interference_grid_is_refused_above_its_size():
    stats = ClassStats.from_features(np.eye(4), np.arange(4), 4)
    with pytest.raises(ValueError, match=r"`max_entries` must be at least K\^2 = 16"):
        pairs.interference_grid(stats, max_entries=15)
    assert pairs.interference_grid(stats, max_entries=16).shape == (4, 4)
    for bad, error in ((0, ValueError), (2.5, TypeError), ("16", TypeError)):
        with pytest.raises(error, match="`max_entries`"):
            pairs.interference_grid(stats, max_entries=bad)


# ----------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda st: pairs.riesz_log_energy(st, s=math.nan), ValueError, "`s` must be finite"),
        (lambda st: pairs.riesz_log_energy(st, s=math.inf), ValueError, "`s` must be finite"),
        (lambda st: pairs.riesz_log_variance(st, s="2"), TypeError, "`s` must be a real"),
        (lambda st: pairs.cdnv(st, exponent=0.0), ValueError, "`exponent` must be > 0"),
        (lambda st: pairs.cdnv(st, exponent=-1.0), ValueError, "`exponent` must be > 0"),
        (lambda st: pairs.cdnv(st, exponent=math.nan), ValueError, "`exponent` must be finite"),
        (lambda st: pairs.log_energy(st, block_rows=0), ValueError, "`block_rows`"),
        (
            lambda st: pairs.pair_metrics(populated(st), ("cdnv", "energy")),
            ValueError,
            "`names` must be among",
        ),
        (lambda st: pairs.pair_metrics(populated(st), "cdnv"), TypeError, "`names`"),
    ],
)
def test_bad_arguments_are_refused(call, error, match):
    stats = ClassStats.from_features(np.eye(3), np.arange(3), 3)
    with pytest.raises(error, match=match):
        call(stats)


def test_the_pass_never_reads_the_host():
    torch = pytest.importorskip("torch")
    from host_sync import HostSyncAudit

    x, y, k = _data(seed=16, k=40, n=400)
    stats = ClassStats.from_features(torch.asarray(x), torch.asarray(y), k)
    view = populated(stats)
    w = torch.asarray(np.random.default_rng(17).normal(size=(k, 7)))
    for rows in (None, 7):
        with HostSyncAudit() as audit:
            pairs.pair_metrics(view, MEANS, rows)
            pairs.pair_metrics(view, ("cdnv",), rows, exponent=2.0)
            pairs.classifier_pair_metrics(w, pairs.CLASSIFIER_PAIR_METRICS, rows)
        assert audit.syncs == []


# ----------------------------------------------------------------------------- sampled pairs
def test_sampled_intervals_cover_the_exact_means():
    rng = np.random.default_rng(18)
    k, d = 300, 8
    y = np.concatenate([np.arange(k), rng.integers(0, k, 3 * k)])
    x = 2 * rng.normal(size=(k, d))[y] + rng.normal(size=(len(y), d))
    view = populated(ClassStats.from_features(x, y, k))
    names = pairs.SAMPLED_PAIR_METRICS
    # s = 1: terms with a tail light enough for the central limit theorem.
    exact, _ = pairs.pair_metrics(view, names, s=1.0)
    seeds = 200
    covered = dict.fromkeys(names, 0)
    for seed in range(seeds):
        estimate, half = pairs.sampled_pair_metrics(view, names, 2000, seed=seed, s=1.0)
        for name in names:
            covered[name] += abs(float(estimate[name]) - float(exact[name])) <= float(half[name])
    for name in names:
        if name == "interference_mean":  # exact
            assert covered[name] == seeds
        else:
            assert 0.88 <= covered[name] / seeds <= 0.99, (name, covered[name])


def test_sampled_pairs_on_every_backend(backend):
    x, y, k = _data(seed=19, k=30, n=300)
    names = pairs.SAMPLED_PAIR_METRICS
    view = populated(ClassStats.from_features(x, y, k))
    want, want_half = pairs.sampled_pair_metrics(view, names, 500, seed=3)
    stats = _stats(backend, x, y, k)
    got, half = pairs.sampled_pair_metrics(populated(stats), names, 500, seed=3)
    for name in names:  # the same seed draws the same pairs
        assert _float(backend, got[name]) == pytest.approx(float(want[name]), rel=1e-10)
        assert _float(backend, half[name]) == pytest.approx(float(want_half[name]), rel=1e-8)
    again = pairs.sampled_pair_metrics(populated(stats), names, 500, seed=3)[0]
    assert _float(backend, again["cdnv"]) == _float(backend, got["cdnv"])
    wide = pairs.sampled_pair_metrics(populated(stats), names, 500, seed=3, confidence=0.99)[1]
    assert _float(backend, wide["cdnv"]) > _float(backend, half["cdnv"])


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"num_pairs": 1}, ValueError, "`num_pairs` must be an integer >= 2"),
        ({"num_pairs": 2.0}, TypeError, "`num_pairs`"),
        ({"confidence": 1.0}, ValueError, r"`confidence` must be in \(0, 1\)"),
        ({"confidence": 0.0}, ValueError, "`confidence`"),
        ({"seed": -1}, ValueError, "`seed`"),
        ({"names": ("etf_error",)}, ValueError, "`names` must be among"),
    ],
)
def test_sampled_pairs_refuse_bad_arguments(options, error, match):
    view = populated(ClassStats.from_features(np.eye(3), np.arange(3), 3))
    arguments = {"names": ("cdnv",), "num_pairs": 10} | options
    names, num_pairs = arguments.pop("names"), arguments.pop("num_pairs")
    with pytest.raises(error, match=match):
        pairs.sampled_pair_metrics(view, names, num_pairs, **arguments)


def test_chunk_rows_is_the_deprecated_name_of_block_rows():
    x, y, k = _data(seed=20, k=9)
    stats = ClassStats.from_features(x, y, k)
    with pytest.warns(DeprecationWarning, match="`chunk_rows` is deprecated"):
        old = pairs.cdnv(stats, chunk_rows=2)
    assert float(old) == pytest.approx(float(pairs.cdnv(stats, block_rows=2)), rel=1e-14)
    both = pytest.raises(TypeError, match="pass `block_rows` only")
    with pytest.warns(DeprecationWarning), both:
        pairs.etf_error(stats, block_rows=2, chunk_rows=2)
