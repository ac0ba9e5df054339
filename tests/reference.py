"""Independent float64 NumPy formulas for every metric, written from the definitions."""

from __future__ import annotations

import itertools

import numpy as np


def means(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    return np.stack([x[y == c].mean(axis=0) for c in range(k)])


def global_mean(x: np.ndarray, y: np.ndarray, k: int, how: str = "samples") -> np.ndarray:
    return x.mean(axis=0) if how == "samples" else means(x, y, k).mean(axis=0)


def within_covariance(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    dev = x - means(x, y, k)[y]
    return dev.T @ dev / len(x)


def nc1(x: np.ndarray, y: np.ndarray, k: int, how: str = "samples") -> float:
    centred = means(x, y, k) - global_mean(x, y, k, how)
    between = centred.T @ centred / k
    rtol = max(x.shape[1], k) * np.finfo(np.float64).eps
    return float(np.trace(within_covariance(x, y, k) @ np.linalg.pinv(between, rtol=rtol)) / k)


def variances(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    mu = means(x, y, k)
    return np.array([np.mean(np.sum((x[y == c] - mu[c]) ** 2, axis=1)) for c in range(k)])


def cdnv(x: np.ndarray, y: np.ndarray, k: int) -> float:
    mu, v = means(x, y, k), variances(x, y, k)
    terms = [
        (v[a] + v[b]) / (2 * np.sum((mu[a] - mu[b]) ** 2))
        for a, b in itertools.combinations(range(k), 2)
    ]
    return float(np.mean(terms))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return 0.0 if na == 0 or nb == 0 else float(a @ b / (na * nb))


def _nf(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a)


def etf_error(x: np.ndarray, y: np.ndarray, k: int, how: str = "samples") -> float:
    centred = means(x, y, k) - global_mean(x, y, k, how)
    target = np.eye(k) - np.ones((k, k)) / k
    return float(np.linalg.norm(_nf(centred @ centred.T) - _nf(target)))


def equinorm(x: np.ndarray, y: np.ndarray, k: int, how: str = "samples") -> float:
    norms = np.linalg.norm(means(x, y, k) - global_mean(x, y, k, how), axis=1)
    return float(norms.std() / norms.mean())


def equiangularity(x: np.ndarray, y: np.ndarray, k: int, how: str = "samples") -> float:
    centred = means(x, y, k) - global_mean(x, y, k, how)
    pairs = itertools.combinations(range(k), 2)
    return float(np.mean([abs(_cos(centred[a], centred[b]) + 1 / (k - 1)) for a, b in pairs]))


def orthogonality_error(x: np.ndarray, y: np.ndarray, k: int) -> float:
    mu = means(x, y, k)
    return float(
        np.mean([abs(_cos(mu[a], mu[b])) for a, b in itertools.combinations(range(k), 2)])
    )


def self_duality_error(w: np.ndarray, x: np.ndarray, y: np.ndarray, k: int) -> float:
    centred = means(x, y, k) - x.mean(axis=0)
    return float(np.linalg.norm(_nf(w) - _nf(centred)))


def scaled_alignment_error(w: np.ndarray, x: np.ndarray, y: np.ndarray, k: int) -> float:
    mu = means(x, y, k)
    n = np.bincount(y, minlength=k)
    target = np.stack(
        [
            k * np.sqrt(n[c]) * mu[c] - sum(np.sqrt(n[j]) * mu[j] for j in range(k))
            for c in range(k)
        ]
    )
    return float(np.linalg.norm(_nf(w) - _nf(target)))


def ncc_agreement(x: np.ndarray, w: np.ndarray, mu: np.ndarray, b: np.ndarray | None) -> float:
    logits = x @ w.T + (0 if b is None else b)
    dist = np.linalg.norm(x[:, None, :] - mu[None, :, :], axis=2)
    return float(np.mean(logits.argmax(axis=1) == dist.argmin(axis=1)))


def within_variance(x: np.ndarray, y: np.ndarray, k: int) -> float:
    return float(np.mean(np.sum((x - means(x, y, k)[y]) ** 2, axis=1)))


# Published test vectors of the UFM+ optimum: counts, lambda_W, lambda_H,
# margins M_k, squared feature norms ||h_k||^2, optimal value f*.
PUBLISHED_VECTORS = [
    (
        [12, 8, 4, 2],
        5e-3,
        5e-3,
        [4.492087624236, 4.281776858612, 3.917883220817, 3.546291678291],
        [1.123021906059, 1.311021062007, 1.696493199144, 2.171651272723],
        0.218510355000095,
    ),
    (
        [30, 20, 3, 1],
        2e-2,
        2e-2,
        [2.678841704153, 2.428722710734, 0.938269638593, 0.0],
        [0.423562063809, 0.470320130561, 0.469134819296, 0.0],
        0.730155472976704,
    ),
    (
        [10, 10, 10],
        1e-2,
        1e-3,
        [4.377637743726] * 3,
        [3.574326250293] * 3,
        0.132029675716503,
    ),
]


def ufm_closed_form(counts, lambda_w: float, lambda_h: float):
    """Margins M_k, squared feature norms and the optimal value f* of the UFM+ optimum."""
    n = np.asarray(counts, dtype=np.float64)
    k = n.shape[0]
    total = n.sum()
    c = total * np.sqrt(lambda_w * lambda_h * (k - 1) / k) / np.sqrt(n)
    arg = (k - 1) * (1 / c - 1)
    margins = np.where(arg > 1, np.log(np.maximum(arg, 1.0)), 0.0)
    norms2 = np.sqrt((k - 1) / k * lambda_w / (lambda_h * n)) * margins
    value = np.sum(
        n / total * np.log1p((k - 1) * np.exp(-margins))
        + np.sqrt(lambda_w * lambda_h * n * (k - 1) / k) * margins
    )
    return margins, norms2, float(value)
