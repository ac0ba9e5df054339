"""Arrays of two libraries, or two devices, in one call: refused, never copied.

Host data (lists, NumPy arrays) given where the computation runs on another
library may be copied there only where the function documents it (counts,
predicted margins); arrays of another array library, or on another device,
get a TypeError (library) or ValueError (device) naming the argument.
`lengths` of `nearest_orthogonal_frame` is documented as read on the host
from any array library: there the probe asks for the correct result.
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

from . import Probe, Raises, Returns
from . import formulas as f
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
    evaluate_tracker,
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


OOD = np.linspace(1.0, 2.0, D)
#: The classifier metrics of `ncgeom.metrics` that take statistics.
CLASSIFIER_METRICS = (
    "classifier_equiangularity",
    "classifier_etf_error",
    "classifier_equinorm",
    "uniform_duality",
    "uniform_duality_variance",
    "distance_norms",
)


def _jax_nc_metrics(**kwargs: Any) -> Any:
    from ncgeom_jax import batch_stats, nc_metrics

    jnp = jax_numpy()
    return nc_metrics(batch_stats(jnp.asarray(X), jnp.asarray(Y), K), jnp.asarray(W), **kwargs)


def _strict_stats() -> ClassStats:
    return ClassStats.from_features(strict.asarray(X), strict.asarray(Y), K)


def _metric(name: str, classifier: Any, stats: ClassStats) -> Any:
    return getattr(metrics, name)(classifier, stats)


#: The pair and variant metrics, NC5 and the trackers' `ood_mean`.
METRIC_ROWS = [
    *(
        (
            f"{name}-torch-classifier-numpy-stats",
            lambda name=name: _metric(name, tt(W), numpy_stats()),
            TYPE,
            ("classifier",),
        )
        for name in CLASSIFIER_METRICS
    ),
    *(
        (
            f"{name}-numpy-classifier-torch-stats",
            lambda name=name: _metric(name, W, torch_stats()),
            TYPE,
            ("classifier",),
        )
        for name in ("uniform_duality_variance", "classifier_equinorm")
    ),
    (
        "bias_collapse-torch-classifier-numpy-stats",
        lambda: metrics.bias_collapse(tt(W), B, numpy_stats()),
        TYPE,
        ("classifier",),
    ),
    (
        "bias_collapse-torch-bias-numpy-stats",
        lambda: metrics.bias_collapse(W, tt(B), numpy_stats()),
        TYPE,
        ("bias",),
    ),
    (
        "bias_collapse-numpy-bias-torch-stats",
        lambda: metrics.bias_collapse(tt(W), B, torch_stats()),
        TYPE,
        ("bias",),
    ),
    (
        "bias_collapse-strict-bias-other-device",
        lambda: metrics.bias_collapse(strict.asarray(W), _device1(B), _strict_stats()),
        ERROR,
        ("bias",),
    ),
    (
        "nc_report-torch-stats-numpy-bias",
        lambda: nc_report(torch_stats(), tt(W), B),
        TYPE,
        ("bias",),
    ),
    ("jax-nc_metrics-numpy-bias", lambda: _jax_nc_metrics(bias=B), TYPE, ("bias",)),
    (
        "ood_deviation-torch-ood_mean-numpy-stats",
        lambda: metrics.ood_deviation(numpy_stats(), tt(OOD)),
        TYPE,
        ("ood_mean",),
    ),
    (
        "ood_deviation-numpy-ood_mean-torch-stats",
        lambda: metrics.ood_deviation(torch_stats(), OOD),
        TYPE,
        ("ood_mean",),
    ),
    (
        "ood_deviation-jax-ood_mean-numpy-stats",
        lambda: metrics.ood_deviation(numpy_stats(), jax_numpy().asarray(OOD)),
        TYPE,
        ("ood_mean",),
    ),
    (
        "ood_deviation-strict-ood_mean-other-device",
        lambda: metrics.ood_deviation(_strict_stats(), _device1(OOD)),
        ERROR,
        ("ood_mean",),
    ),
    (
        "nc_report-numpy-stats-torch-ood_mean",
        lambda: nc_report(numpy_stats(), ood_mean=tt(OOD)),
        TYPE,
        ("ood_mean",),
    ),
    (
        "nc_report-numpy-features-torch-ood_mean",
        lambda: nc_report((X, Y), ood_mean=tt(OOD)),
        TYPE,
        ("ood_mean",),
    ),
    (
        "nc_report-torch-features-numpy-ood_mean",
        lambda: nc_report((tt(X), tt(Y)), ood_mean=OOD),
        TYPE,
        ("ood_mean",),
    ),
    (
        "NCTracker.report-numpy-ood_mean",
        lambda: _observed().report(ood_mean=OOD),
        TYPE,
        ("ood_mean",),
    ),
    (
        "NCTracker.evaluate-numpy-ood_mean",
        lambda: evaluate_tracker(OOD),
        TYPE,
        ("ood_mean",),
    ),
    ("jax-nc_metrics-numpy-ood_mean", lambda: _jax_nc_metrics(ood_mean=OOD), TYPE, ("ood_mean",)),
]


def _lengths_check(stats_rows: np.ndarray, lengths: np.ndarray) -> f.Check:
    want = f.nearest_frame(stats_rows, lengths)

    def check(fit: Any) -> None:
        f.field_checks([(name, want[name], 1e-10) for name in ("scale", "distance")])(fit)
        f.close("target", fit.target, want["target"], 1e-10)

    return check


def host_lengths_probes() -> list[Probe]:
    """`lengths` is read on the host from any array library: the result of the
    equal NumPy array, on the statistics' library."""
    lengths = np.array([1.0, 2.0, 0.5])
    check = Returns(_lengths_check(MEANS, lengths))

    def frame(stats: ClassStats, given: Any) -> Any:
        return metrics.nearest_orthogonal_frame(stats, lengths=given)

    rows = [
        ("numpy-stats-torch-lengths", lambda: frame(numpy_stats(), tt(lengths))),
        (
            "numpy-stats-torch-lengths-requires-grad",
            lambda: frame(numpy_stats(), tt(lengths).requires_grad_(True)),
        ),
        ("numpy-stats-jax-lengths", lambda: frame(numpy_stats(), jax_numpy().asarray(lengths))),
        (
            "numpy-stats-strict-lengths-other-device",
            lambda: frame(numpy_stats(), _device1(lengths)),
        ),
        ("torch-stats-numpy-lengths", lambda: frame(torch_stats(), lengths)),
        ("torch-stats-list-lengths", lambda: frame(torch_stats(), lengths.tolist())),
        (
            "torch-array-numpy-lengths",
            lambda: metrics.nearest_orthogonal_frame(tt(MEANS), lengths=lengths),
        ),
    ]
    return [Probe(f"mixed-nearest_orthogonal_frame-{name}", call, check) for name, call in rows]


def probes() -> list[Probe]:
    out = []
    for name, call, kinds, names in ROWS + METRIC_ROWS:
        probe = Probe(f"mixed-{name}", call, Raises(kinds, names))
        out.append(probe)
    return out + host_lengths_probes()
