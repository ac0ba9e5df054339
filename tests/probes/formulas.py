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
