"""The small data set every probe starts from, and its copies on each backend."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import array_api_compat.torch as torch_xp
import numpy as np
import torch

from ncgeom import ClassStats

#: Classes, feature dimension and samples of the base data set.
K, D, N = 3, 4, 24
LAMBDA_W = LAMBDA_H = 1e-3

_rng = np.random.default_rng(20240618)
#: Labels: every class populated, unequal counts (10, 8, 6), shuffled.
LABELS = _rng.permutation(np.repeat(np.arange(K), [10, 8, 6]))
CENTRES = 3.0 * _rng.normal(size=(K, D))
#: Features (N, D), float64: class centres plus unit noise.
FEATURES = CENTRES[LABELS] + _rng.normal(size=(N, D))
CLASSIFIER = _rng.normal(size=(K, D))
BIAS = 0.1 * _rng.normal(size=K)
MEANS = np.stack([FEATURES[LABELS == k].mean(axis=0) for k in range(K)])
COUNTS = np.bincount(LABELS, minlength=K)


def base() -> tuple[np.ndarray, np.ndarray]:
    """Fresh copies of the base features and labels (probes may mutate them)."""
    return FEATURES.copy(), LABELS.copy()


def with_value(x: np.ndarray, value: float, where: tuple[int, ...] = (5, 1)) -> np.ndarray:
    """A copy of `x` with one entry set to `value` (NaN, Inf, ...)."""
    out = np.array(x, dtype=np.float64 if x.dtype.kind != "f" else x.dtype, copy=True)
    out[where] = value
    return out


def tt(x: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A CPU torch copy of NumPy data."""
    out = torch.as_tensor(np.asarray(x).copy())
    return out if dtype is None else out.to(dtype)


def torch_stats(x: np.ndarray = FEATURES, y: np.ndarray = LABELS) -> ClassStats:
    return ClassStats.from_features(tt(x), tt(y), K)


def numpy_stats(x: np.ndarray = FEATURES, y: np.ndarray = LABELS, **kwargs: Any) -> ClassStats:
    return ClassStats.from_features(x, y, K, **kwargs)


def namespace_of(x: Any) -> tuple[ModuleType | None, Any]:
    """The namespace and device `ClassStats.empty` needs to receive batch `x`
    (NumPy's for anything but a torch tensor; the CPU for a meta tensor)."""
    if isinstance(x, torch.Tensor):
        device = x.device if x.device.type != "meta" else torch.device("cpu")
        return torch_xp, device
    return None, None


def like_features(value: np.ndarray, x: Any) -> Any:
    """NumPy `value` (a classifier, means) on the backend of features `x`: torch
    in the features' dtype when it is float32 or float64, float64 otherwise."""
    if isinstance(x, torch.Tensor):
        keep = x.dtype in (torch.float32, torch.float64)
        return tt(value, x.dtype if keep else torch.float64)
    return np.asarray(value)


def jax_numpy() -> ModuleType:
    """jax.numpy with float64 on (as the test suite runs JAX)."""
    from ncgeom._lib.backend import backend_namespace

    return backend_namespace("jax")


def evaluate_tracker(ood_mean: Any) -> Any:
    """`NCTracker.evaluate` of a small float64 model over one batch of the base
    labels, with `ood_mean`."""
    from ncgeom_torch import NCTracker

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, D), torch.nn.ReLU(), torch.nn.Linear(D, K))
    loader = [(torch.randn(N, 5, dtype=torch.float64), tt(LABELS))]
    return NCTracker(K).evaluate(model.double(), loader, "2", ood_mean=ood_mean)
