"""Arrays of two libraries, or two devices, in one call: refused, never copied.

Host data (lists, NumPy arrays) given where the computation runs on another
library may be copied there only where the function documents it (counts,
predicted margins); arrays of another array library, or on another device,
get a TypeError (library) or ValueError (device) naming the argument.
"""

from __future__ import annotations

from typing import Any

import array_api_strict as strict
import numpy as np
import torch

from ncgeom import (
    ClassStats,
    collapsed_objective,
    margin_comparison,
    merge_stats,
    metrics,
    nc_report,
    ufm_objective,
    ufm_relu_optimum,
)

from . import Probe, Raises
from .data import (
    BIAS,
    CLASSIFIER,
    COUNTS,
    FEATURES,
    LABELS,
    LAMBDA_H,
    LAMBDA_W,
    MEANS,
    D,
    K,
    jax_numpy,
    numpy_stats,
    torch_stats,
    tt,
)

X, Y, W, B, M = FEATURES, LABELS, CLASSIFIER, BIAS, MEANS
TYPE, ERROR = (TypeError,), (TypeError, ValueError)
OPT = ufm_relu_optimum(COUNTS, LAMBDA_W, LAMBDA_H, dim=D)


def _device1(x: np.ndarray) -> Any:
    return strict.asarray(x, device=strict.Device("device1"))


def _tracker() -> Any:
    from ncgeom_torch import NCTracker

    return NCTracker(K)


def _observed() -> Any:
    tracker = _tracker()
    tracker.observe(tt(X), tt(Y))
    return tracker


def _jax_from_features() -> Any:
    jnp = jax_numpy()
    return ClassStats.from_features(jnp.asarray(X), Y, K)


#: (id, call, exception kinds, the argument the message must name)
ROWS = [
    (
        "from_features-numpy-features-torch-labels",
        lambda: ClassStats.from_features(X, tt(Y), K),
        TYPE,
        ("labels",),
    ),
    (
        "from_features-torch-features-numpy-labels",
        lambda: ClassStats.from_features(tt(X), Y, K),
        TYPE,
        ("labels",),
    ),
    ("from_features-jax-features-numpy-labels", _jax_from_features, TYPE, ("labels",)),
    (
        "from_features-strict-two-devices",
        lambda: ClassStats.from_features(_device1(X), strict.asarray(Y), K),
        ERROR,
        ("labels",),
    ),
    (
        "update-numpy-stats-torch-batch",
        lambda: ClassStats.empty(K, D).update(tt(X), tt(Y)),
        TYPE,
        ("features",),
    ),
    ("update-torch-stats-numpy-batch", lambda: torch_stats().update(X, Y), TYPE, ("features",)),
    (
        "nc_report-numpy-features-torch-classifier",
        lambda: nc_report((X, Y), tt(W)),
        TYPE,
        ("classifier",),
    ),
    (
        "nc_report-torch-features-numpy-classifier",
        lambda: nc_report((tt(X), tt(Y)), W),
        TYPE,
        ("classifier",),
    ),
    (
        "nc_report-torch-features-numpy-bias",
        lambda: nc_report((tt(X), tt(Y)), tt(W), B),
        TYPE,
        ("bias",),
    ),
    (
        "nc_report-numpy-stats-torch-classifier",
        lambda: nc_report(numpy_stats(), tt(W)),
        TYPE,
        ("classifier",),
    ),
    (
        "nc_report-numpy-stats-torch-bias",
        lambda: nc_report(numpy_stats(), W, tt(B)),
        ERROR,
        ("bias",),
    ),
    (
        "nc_report-strict-stats-classifier-other-device",
        lambda: nc_report(
            ClassStats.from_features(strict.asarray(X), strict.asarray(Y), K), _device1(W)
        ),
        ERROR,
        ("classifier",),
    ),
    (
        "self_duality_error-torch-classifier-numpy-stats",
        lambda: metrics.self_duality_error(tt(W), numpy_stats()),
        TYPE,
        ("classifier",),
    ),
    (
        "scaled_alignment_error-torch-classifier-numpy-stats",
        lambda: metrics.scaled_alignment_error(tt(W), numpy_stats()),
        TYPE,
        ("classifier",),
    ),
    (
        "ncc_agreement-torch-classifier",
        lambda: metrics.ncc_agreement(X, tt(W), M),
        TYPE,
        ("classifier",),
    ),
    ("ncc_agreement-torch-means", lambda: metrics.ncc_agreement(X, W, tt(M)), TYPE, ("means",)),
    ("merge-numpy-torch", lambda: numpy_stats().merge(torch_stats()), TYPE, ("other",)),
    (
        "merge_stats-numpy-torch",
        lambda: merge_stats(numpy_stats(), torch_stats()),
        TYPE,
        ("stats", "other"),
    ),
    (
        "ufm_objective-numpy-classifier-torch-features",
        lambda: ufm_objective(W, tt(X), tt(Y), LAMBDA_W, LAMBDA_H),
        TYPE,
        ("classifier", "features"),
    ),
    (
        "ufm_objective-torch-labels",
        lambda: ufm_objective(W, X, tt(Y), LAMBDA_W, LAMBDA_H),
        TYPE,
        ("labels",),
    ),
    (
        "ufm_objective-xp-torch-for-numpy",
        lambda: ufm_objective(W, X, Y, LAMBDA_W, LAMBDA_H, xp=torch),
        ERROR,
        ("xp",),
    ),
    (
        "ufm_objective-xp-string",
        lambda: ufm_objective(W, X, Y, LAMBDA_W, LAMBDA_H, xp="numpy"),
        TYPE,
        ("xp",),
    ),
    (
        "collapsed_objective-torch-classifier-numpy-means",
        lambda: collapsed_objective(tt(W), M, COUNTS, LAMBDA_W, LAMBDA_H),
        TYPE,
        ("means", "classifier"),
    ),
    (
        "margin_comparison-torch-classifier-numpy-means",
        lambda: margin_comparison(tt(W), M, OPT),
        TYPE,
        ("means", "classifier"),
    ),
    (
        "ufm_relu_optimum-xp-string",
        lambda: ufm_relu_optimum(COUNTS, LAMBDA_W, LAMBDA_H, xp="numpy"),
        TYPE,
        ("xp",),
    ),
    (
        "NCTracker.observe-numpy-features",
        lambda: _tracker().observe(X, tt(Y)),
        TYPE,
        ("features",),
    ),
    ("NCTracker.observe-numpy-labels", lambda: _tracker().observe(tt(X), Y), TYPE, ("labels",)),
    (
        "NCTracker.observe-second-batch-on-meta",
        lambda: _observed().observe(tt(X).to("meta"), tt(Y).to("meta")),
        ERROR,
        ("features",),
    ),
    ("NCTracker.report-numpy-classifier", lambda: _observed().report(W), TYPE, ("classifier",)),
]


def probes() -> list[Probe]:
    return [
        Probe(f"mixed-{name}", call, Raises(kinds, names)) for name, call, kinds, names in ROWS
    ]
