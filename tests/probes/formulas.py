"""Float64 NumPy formulas the probes compare with, and the checks built on them.

Each formula is the textbook definition, written here independently of the
library: class means and variances, the within-class covariance, NC1, the
UFM+ objective, the nearest-class-centre agreement, margins, the normalised
Frobenius distance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Check = Callable[[Any], None]


# --------------------------------------------------------------------------- reading results


def host(value: Any) -> np.ndarray:
    """A float64 (or integer) NumPy copy of an array of any library."""
    if hasattr(value, "detach"):  # torch
        value = value.detach().cpu()
        if value.dtype.is_floating_point:
            value = value.double()
        return value.numpy()
    array = np.asarray(value)
    return array.astype(np.float64) if array.dtype.kind == "f" else array


def close(name: str, got: Any, want: Any, rtol: float) -> None:
    """`got` equals `want` within `rtol` of the largest entry of `want`."""
    got_np = np.asarray(host(got) if not isinstance(got, tuple) else got, dtype=np.float64)
    want_np = np.asarray(want, dtype=np.float64)
    if got_np.shape != want_np.shape:
        raise AssertionError(f"{name}: shape {got_np.shape}, expected {want_np.shape}")
    atol = rtol * float(np.max(np.abs(want_np), initial=0.0))
    if not np.allclose(got_np, want_np, rtol=rtol, atol=atol, equal_nan=False):
        raise AssertionError(
            f"{name}: got {_fmt(got_np)}, expected {_fmt(want_np)} (rtol {rtol:g})"
        )


def _fmt(a: np.ndarray) -> str:
    return np.array2string(a.reshape(-1)[:6], precision=6, separator=", ")


# --------------------------------------------------------------------------- formulas


def counts(y: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(np.asarray(y, dtype=np.int64), minlength=k)


def class_means(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.stack([x[y == j].mean(axis=0) for j in range(k)])


def class_variances(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    means = class_means(x, y, k)
    return np.array([np.mean(np.sum((x[y == j] - means[j]) ** 2, axis=1)) for j in range(k)])


def deviations(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x - class_means(x, y, k)[y]


def within_variance(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """(1/N) sum_i ||x_i - mu_{y_i}||^2."""
    dev = deviations(x, y, k)
    return float(np.mean(np.sum(dev * dev, axis=1)))


def within_covariance(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    dev = deviations(x, y, k)
    return dev.T @ dev / dev.shape[0]


def nc1(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """tr(Sigma_W Sigma_B^+) / K, Sigma_B centred at the mean of all samples.

    Computed on ``x - x[0]`` (NC1 does not change under a translation): the
    class means of features far from the origin then keep their spread.
    """
    x = np.asarray(x, dtype=np.float64)
    x = x - x[0]
    means = class_means(x, y, k)
    centred = means - x.mean(axis=0)
    sigma_b = centred.T @ centred / k
    return float(np.trace(within_covariance(x, y, k) @ np.linalg.pinv(sigma_b, rcond=1e-10)) / k)


def logits(w: np.ndarray, h: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    z = np.asarray(h, dtype=np.float64) @ np.asarray(w, dtype=np.float64).T
    return z if bias is None else z + np.asarray(bias, dtype=np.float64)


def cross_entropy(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    top = np.max(z, axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.sum(np.exp(z - top), axis=1))
    return lse - z[np.arange(z.shape[0]), y]


def objective(w, h, y, lambda_w, lambda_h, bias=None) -> float:
    """(1/N) sum_i CE(W h_i + b, y_i) + (lw/2)||W||^2 + (lh/2) sum_i ||h_i||^2."""
    w, h = np.asarray(w, dtype=np.float64), np.asarray(h, dtype=np.float64)
    ce = cross_entropy(logits(w, h, bias), np.asarray(y, dtype=np.int64))
    return float(ce.mean() + 0.5 * lambda_w * np.sum(w * w) + 0.5 * lambda_h * np.sum(h * h))


def collapsed_objective(w, means, n, lambda_w, lambda_h) -> float:
    """sum_k (n_k/N) CE(W h_k, k) + (lw/2)||W||^2 + (lh/2) sum_k n_k ||h_k||^2."""
    w, means = np.asarray(w, dtype=np.float64), np.asarray(means, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    ce = cross_entropy(logits(w, means), np.arange(means.shape[0]))
    return float(
        np.sum(n * ce) / n.sum()
        + 0.5 * lambda_w * np.sum(w * w)
        + 0.5 * lambda_h * np.sum(n * np.sum(means * means, axis=1))
    )


def ncc_agreement(x, w, means, bias=None) -> float:
    """Fraction of rows whose nearest class mean is the classifier's argmax."""
    x, means = np.asarray(x, dtype=np.float64), np.asarray(means, dtype=np.float64)
    nearest = np.argmin(((x[:, None, :] - means[None, :, :]) ** 2).sum(axis=2), axis=1)
    return float(np.mean(nearest == np.argmax(logits(w, x, bias), axis=1)))


def margins(w: np.ndarray, means: np.ndarray) -> np.ndarray:
    """z_kk - max_{j != k} z_kj for z = means @ W.T."""
    z = logits(w, means)
    k = z.shape[0]
    other = np.where(np.eye(k, dtype=bool), -np.inf, z).max(axis=1)
    return np.diag(z) - other


def nf_distance(a: np.ndarray, b: np.ndarray) -> float:
    """|| A / ||A||_F - B / ||B||_F ||_F."""
    return float(np.linalg.norm(a / np.linalg.norm(a) - b / np.linalg.norm(b)))


# --------------------------------------------------------------------------- checks


def stats_check(x: np.ndarray, y: np.ndarray, k: int, rtol: float) -> Check:
    """A `ClassStats` of the float64 values `x` with labels `y`."""
    want_counts = counts(y, k)
    want_means = class_means(x, y, k)
    want_variances = class_variances(x, y, k)
    want_covariance = within_covariance(x, y, k)

    def check(stats: Any) -> None:
        got = host(stats.counts)
        if got.tolist() != want_counts.tolist():
            raise AssertionError(f"counts: got {got.tolist()}, expected {want_counts.tolist()}")
        close("means", stats.means, want_means, rtol)
        close("class_variances", stats.class_variances, want_variances, rtol)
        if stats.gram is not None:
            close("within_covariance", stats.within_covariance(), want_covariance, rtol)
        for name in ("shift", "sums"):
            if getattr(getattr(stats, name), "requires_grad", False):
                raise AssertionError(f"stats.{name} keeps an autograd graph")

    return check


def report_check(x: np.ndarray, y: np.ndarray, k: int, rtol: float) -> Check:
    """An `NCReport` of the float64 values `x` with labels `y`."""
    want_counts = counts(y, k).tolist()
    want_within = within_variance(x, y, k)
    want_nc1 = nc1(x, y, k)

    def check(report: Any) -> None:
        if list(report.counts) != want_counts:
            raise AssertionError(f"counts: got {list(report.counts)}, expected {want_counts}")
        close("within_variance", report.within_variance, want_within, rtol)
        close("nc1", report.nc1, want_nc1, max(rtol, 1e-9))

    return check


def scalar_check(name: str, want: float, rtol: float) -> Check:
    def check(value: Any) -> None:
        close(name, value, want, rtol)

    return check


def agreement_check(want: float) -> Check:
    def check(agreement: Any) -> None:
        matches, total = float(host(agreement.matches)), float(host(agreement.total))
        close("ncc_agreement", matches / total, want, 1e-12)

    return check


def all_of(*checks: Check) -> Check:
    def check(value: Any) -> None:
        for one in checks:
            one(value)

    return check


def field_checks(pairs: Sequence[tuple[str, Any, float]]) -> Check:
    """Attributes of a result (a tuple of floats or an array) against formulas."""

    def check(result: Any) -> None:
        problems = []
        for name, want, rtol in pairs:
            try:
                got = getattr(result, name)
                if got is None:
                    why = dict(getattr(result, "unavailable", ()))
                    raise AssertionError(f"{name}: got None ({why.get(name, 'no reason')})")
                close(name, got, want, rtol)
            except AssertionError as error:
                problems.append(str(error))
        if problems:
            raise AssertionError("; ".join(problems))

    return check


# ------------------------------------------------------------- pair and variant metrics
#
# Each takes float64 class means (K, d) of the classes counted, and where it
# needs them counts, variances or the classifier rows of the same classes.


def centred_means(
    means: np.ndarray, counts: np.ndarray, global_mean: str = "samples"
) -> np.ndarray:
    """mu_k - mu_G, mu_G weighted by the counts ("samples") or not ("classes")."""
    means = np.asarray(means, dtype=np.float64)
    weights = np.asarray(counts, dtype=np.float64) if global_mean == "samples" else None
    return means - np.average(means, axis=0, weights=weights)


def _directions(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def pair_cosines(rows: np.ndarray) -> np.ndarray:
    """cos(r_k, r_l) over the pairs k < l."""
    u = _directions(rows)
    upper = np.triu_indices(u.shape[0], 1)
    return (u @ u.T)[upper]


def pair_direction_distances(rows: np.ndarray) -> np.ndarray:
    """||u_k - u_l|| over the pairs k < l, u the rows over their norms."""
    u = _directions(rows)
    first, second = np.triu_indices(u.shape[0], 1)
    return np.linalg.norm(u[first] - u[second], axis=1)


def log_energy(centred: np.ndarray) -> float:
    """mean over pairs of log(1 / ||u_k - u_l||)."""
    return float(np.mean(-np.log(pair_direction_distances(centred))))


def log_energy_variance(centred: np.ndarray) -> float:
    """Population variance over pairs of log(1 / ||u_k - u_l||)."""
    return float(np.var(-np.log(pair_direction_distances(centred))))


def riesz_log_energy(centred: np.ndarray, s: float) -> float:
    """log(mean over pairs of ||u_k - u_l||^-s)."""
    return float(np.log(np.mean(pair_direction_distances(centred) ** -s)))


def riesz_log_variance(centred: np.ndarray, s: float) -> float:
    """log(population variance over pairs of ||u_k - u_l||^-s)."""
    return float(np.log(np.var(pair_direction_distances(centred) ** -s)))


def cdnv(means: np.ndarray, variances: np.ndarray, exponent: float = 1.0) -> float:
    """mean over pairs of (v_k + v_l) / (2 (||mu_k - mu_l||^2)^exponent)."""
    means, v = np.asarray(means, dtype=np.float64), np.asarray(variances, dtype=np.float64)
    first, second = np.triu_indices(means.shape[0], 1)
    sq = np.sum((means[first] - means[second]) ** 2, axis=1)
    return float(np.mean((v[first] + v[second]) / (2 * sq**exponent)))


def nc1_trace_ratio(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """tr(Sigma_W) / tr(Sigma_B), Sigma_B = (1/K) sum_k c_k c_k^T (mu_G of the samples)."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x[0]
    centred = class_means(x, y, k) - x.mean(axis=0)
    return within_variance(x, y, k) / float(np.mean(np.sum(centred * centred, axis=1)))


def log_equinorm(centred: np.ndarray) -> float:
    """Population std of log ||c_k||."""
    return float(np.std(np.log(np.linalg.norm(centred, axis=1))))


def classifier_equinorm(w: np.ndarray) -> float:
    """std / mean (ddof 0) of the row norms."""
    norms = np.linalg.norm(np.asarray(w, dtype=np.float64), axis=1)
    return float(np.std(norms) / np.mean(norms))


def classifier_equiangularity(w: np.ndarray) -> float:
    """mean over pairs of |cos(w_k, w_l) + 1/(K-1)|."""
    k = np.shape(w)[0]
    return float(np.mean(np.abs(pair_cosines(w) + 1.0 / (k - 1))))


def classifier_etf_error(w: np.ndarray) -> float:
    """|| W W^T / ||W W^T|| - (I - J/K) / ||I - J/K|| ||_F."""
    w = np.asarray(w, dtype=np.float64)
    k = w.shape[0]
    return nf_distance(w @ w.T, np.eye(k) - 1.0 / k)


def duality_scores(w: np.ndarray, centred: np.ndarray) -> np.ndarray:
    """s_k = w_k . c_k."""
    return np.sum(np.asarray(w, dtype=np.float64) * centred, axis=1)


def uniform_duality(w: np.ndarray, centred: np.ndarray) -> float:
    """std(s) / |mean(s)| (ddof 0)."""
    scores = duality_scores(w, centred)
    return float(np.std(scores) / abs(np.mean(scores)))


def uniform_duality_variance(w: np.ndarray, centred: np.ndarray) -> float:
    """Sample variance (ddof 1) of s_k."""
    return float(np.var(duality_scores(w, centred), ddof=1))


def distance_norms(w: np.ndarray, centred: np.ndarray) -> np.ndarray:
    """|| w_k / ||w_k|| - c_k / ||c_k|| || per class."""
    return np.linalg.norm(_directions(w) - _directions(centred), axis=1)


def bias_collapse(w: np.ndarray, bias: np.ndarray | None, global_mean: np.ndarray) -> float:
    """|| W mu_G + b ||_2."""
    logits = np.asarray(w, dtype=np.float64) @ np.asarray(global_mean, dtype=np.float64)
    return float(np.linalg.norm(logits if bias is None else logits + bias))


def ood_deviation(means: np.ndarray, ood_mean: np.ndarray) -> float:
    """mean_k |cos(mu_k, mu_OOD)| on uncentred means."""
    ood = np.asarray(ood_mean, dtype=np.float64)
    cosines = _directions(means) @ (ood / np.linalg.norm(ood))
    return float(np.mean(np.abs(cosines)))


def interference_grid(centred: np.ndarray, cosine: bool = True) -> np.ndarray:
    """The (K, K) grid of cos(c_k, c_l), or of c_k . c_l."""
    if cosine:
        u = _directions(centred)
        return u @ u.T
    return centred @ centred.T


def nearest_frame(rows: np.ndarray, lengths: np.ndarray) -> dict[str, Any]:
    """The rows s diag(l) Q (Q with orthonormal rows, s >= 0) nearest to `rows`.

    Orthogonal Procrustes: with B = diag(l) A = U S V^T, Q = U V^T and
    s = trace(S) / sum l^2. Returns target, scale (the factor s of the
    lengths), distance ||A - target||_F and distance / ||A||_F.
    """
    a = np.asarray(rows, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.float64)
    u, sv, vt = np.linalg.svd(lengths[:, None] * a, full_matrices=False)
    scale = float(np.sum(sv) / np.sum(lengths**2))
    target = scale * lengths[:, None] * (u @ vt)
    return _fit(a, target, scale)


def nearest_simplex_etf(rows: np.ndarray) -> dict[str, Any]:
    """The simplex ETF s E Q nearest to `rows` (E = sqrt(K/(K-1)) (I - J/K)).

    E is sqrt(K/(K-1)) times the projector P off the all-ones direction, so
    the target is t P Q' with Q' orthonormal on that span: the K - 1 leading
    singular triplets of P A = U S V^T give Q' = U V^T and t = trace(S)/(K-1);
    each target row then has length s = trace(S) / sqrt(K (K-1)).
    """
    a = np.asarray(rows, dtype=np.float64)
    k = a.shape[0]
    u, sv, vt = np.linalg.svd(a - a.mean(axis=0), full_matrices=False)
    u, sv, vt = u[:, : k - 1], sv[: k - 1], vt[: k - 1]
    target = (np.sum(sv) / (k - 1)) * (u @ vt)
    return _fit(a, target, float(np.sum(sv) / np.sqrt(k * (k - 1))))


def _fit(a: np.ndarray, target: np.ndarray, scale: float) -> dict[str, Any]:
    distance = float(np.linalg.norm(a - target))
    return {
        "target": target,
        "scale": scale,
        "distance": distance,
        "relative_distance": distance / float(np.linalg.norm(a)),
    }
