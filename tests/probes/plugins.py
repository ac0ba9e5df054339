"""The framework plugins (ncgeom_torch, ncgeom_jax) and ncgeom.testing: their own
arguments (counts, layers, dtypes), and units of the JAX and tracker reports
(bias collapse of a layer's or a given bias, NC5 of an `ood_mean`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ncgeom.testing import check_plugin

from . import Probe, Raises, Returns, metric_scales, scales
from . import formulas as f
from .data import CLASSIFIER, FEATURES, LABELS, LAMBDA_H, LAMBDA_W, D, K, jax_numpy, tt

TYPE, VALUE, ERROR = (TypeError,), (ValueError,), (TypeError, ValueError)


def _callback(**kwargs: Any) -> Any:
    from ncgeom_torch.lightning import NeuralCollapseCallback

    return NeuralCollapseCallback(K, **kwargs)


def _with_theory(counts: Any) -> Any:
    return _callback(lambda_w=LAMBDA_W, lambda_h=LAMBDA_H, counts=counts)


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(5, D), nn.ReLU(), nn.Linear(D, K, bias=False))


def _tap(model: Any, layer: Any) -> Any:
    from ncgeom_torch import FeatureTap

    return FeatureTap(model, layer)


def _tracker(*args: Any, **kwargs: Any) -> Any:
    from ncgeom_torch import NCTracker

    return NCTracker(*args, **kwargs)


def _observed() -> Any:
    tracker = _tracker(K)
    tracker.observe(tt(FEATURES), tt(LABELS))
    return tracker


def _validate_float_labels() -> None:
    from ncgeom_jax import validate_batch

    jnp = jax_numpy()
    validate_batch(jnp.asarray(FEATURES), jnp.asarray(LABELS.astype(np.float64)), K)


def _jax_metrics(c: float) -> Any:
    from ncgeom_jax import batch_stats, nc_metrics

    jnp = jax_numpy()
    x = scales.features(c)
    stats = batch_stats(jnp.asarray(x), jnp.asarray(scales.Y), scales.K)
    return nc_metrics(
        stats,
        jnp.asarray(scales.W),
        lambda_w=scales.LAMBDA,
        lambda_h=scales.LAMBDA,
        counts=list(scales.COUNTS),
    )


def _jax_metrics_check(c: float) -> f.Check:
    x = scales.features(c)
    means = f.class_means(x, scales.Y, scales.K)
    return f.field_checks(
        [
            ("feature_norms_measured", np.linalg.norm(means, axis=1), 1e-10),
            ("margins_measured", f.margins(scales.W, means), 1e-10),
            ("within_variance", f.within_variance(x, scales.Y, scales.K), 1e-8),
        ]
    )


def _jax_units(c: float) -> Any:
    """`nc_metrics` with a bias (c times a fixed vector) and an `ood_mean`."""
    from ncgeom_jax import batch_stats, nc_metrics

    jnp = jax_numpy()
    stats = batch_stats(jnp.asarray(scales.features(c)), jnp.asarray(scales.Y), scales.K)
    return nc_metrics(
        stats,
        jnp.asarray(scales.W),
        bias=jnp.asarray(c * metric_scales.BIAS),
        ood_mean=jnp.asarray(metric_scales.OOD),
    )


def _tracker_units(c: float) -> Any:
    """`NCTracker.report` of a classifier layer with a bias (c times a fixed vector)."""
    from ncgeom_torch import NCTracker

    layer = nn.Linear(scales.W.shape[1], scales.K).double()
    with torch.no_grad():
        layer.weight.copy_(tt(scales.W))
        layer.bias.copy_(tt(c * metric_scales.BIAS))
    tracker = NCTracker(scales.K)
    tracker.observe(tt(scales.features(c)), tt(scales.Y))
    return tracker.report(layer, ood_mean=tt(metric_scales.OOD))


def _units_check(c: float) -> f.Check:
    """bias_collapse, uniform_duality_variance and ood_deviation at scale c."""
    x = scales.features(c)
    means = f.class_means(x, scales.Y, scales.K)
    centred = f.centred_means(means, f.counts(scales.Y, scales.K))
    return f.field_checks(
        [
            ("bias_collapse", f.bias_collapse(scales.W, c * metric_scales.BIAS, x.mean(0)), 1e-10),
            ("uniform_duality_variance", f.uniform_duality_variance(scales.W, centred), 1e-9),
            ("ood_deviation", f.ood_deviation(means, metric_scales.OOD), 1e-12),
        ]
    )


def _torch_plugin() -> Any:
    from ncgeom_torch import plugin

    return plugin


ROWS = [
    (
        "NeuralCollapseCallback-counts-string",
        lambda: _with_theory("1,2,3"),
        Raises(TYPE, ("counts",)),
    ),
    (
        "NeuralCollapseCallback-counts-too-few",
        lambda: _with_theory([10, 20]),
        Raises(VALUE, ("counts",)),
    ),
    (
        "NeuralCollapseCallback-counts-fraction",
        lambda: _with_theory([2.5, 20, 30]),
        Raises(VALUE, ("counts",)),
    ),
    (
        "NeuralCollapseCallback-counts-zero",
        lambda: _with_theory([0, 20, 30]),
        Raises(VALUE, ("counts",)),
    ),
    (
        "NeuralCollapseCallback-counts-uint64-2**63",
        lambda: _with_theory(np.array([2**63, 20, 30], dtype=np.uint64)),
        Raises(VALUE, ("counts",)),
    ),
    (
        "NeuralCollapseCallback-lambda-negative",
        lambda: _callback(lambda_w=-1.0, lambda_h=LAMBDA_H),
        Raises(VALUE, ("lambda_w",)),
    ),
    ("FeatureTap-unknown-layer", lambda: _tap(_model(), "nope"), Raises(VALUE, ("layer",))),
    ("FeatureTap-layer-not-a-module", lambda: _tap(_model(), 5), Raises(TYPE, ("layer",))),
    ("FeatureTap-model-not-a-module", lambda: _tap("model", "0"), Raises(TYPE, ("model",))),
    ("NCTracker-integer-dtype", lambda: _tracker(K, dtype=torch.int64), Raises(TYPE, ("dtype",))),
    ("NCTracker-num_classes-float", lambda: _tracker(2.5), Raises(TYPE, ("num_classes",))),
    (
        "NCTracker.report-counts-string",
        lambda: _observed().report(lambda_w=LAMBDA_W, lambda_h=LAMBDA_H, counts="1,2,3"),
        Raises(TYPE, ("counts",)),
    ),
    (
        "NCTracker.report-counts-too-few",
        lambda: _observed().report(lambda_w=LAMBDA_W, lambda_h=LAMBDA_H, counts=[10, 20]),
        Raises(VALUE, ("counts",)),
    ),
    (
        "NCTracker.report-classifier-transposed",
        lambda: _observed().report(tt(CLASSIFIER.T.copy())),
        Raises(VALUE, ("classifier",)),
    ),
    (
        "NCTracker.report-one-lambda",
        lambda: _observed().report(lambda_w=LAMBDA_W),
        Raises(ERROR, ("lambda_h", "lambda_w")),
    ),
    ("jax-validate_batch-float-labels", _validate_float_labels, Raises(TYPE, ("labels",))),
    (
        "jax-nc_metrics-scale-2**20",
        lambda: _jax_metrics(2.0**20),
        Returns(_jax_metrics_check(2.0**20)),
    ),
    (
        "jax-nc_metrics-bias-ood_mean-scale-2**20",
        lambda: _jax_units(2.0**20),
        Returns(_units_check(2.0**20)),
    ),
    (
        "NCTracker.report-layer-bias-ood_mean-scale-1e+20",
        lambda: _tracker_units(1e20),
        Returns(_units_check(1e20)),
    ),
    (
        "NCTracker.report-layer-bias-ood_mean-scale-1e-20",
        lambda: _tracker_units(1e-20),
        Returns(_units_check(1e-20)),
    ),
    (
        "testing-check_plugin-make_tensor-not-callable",
        lambda: check_plugin(_torch_plugin(), 5),
        Raises(TYPE, ("make_tensor",)),
    ),
    (
        "testing-check_plugin-unknown-check",
        lambda: check_plugin(_torch_plugin(), torch.as_tensor, checks=["bogus"]),
        Raises(VALUE, ("checks",)),
    ),
]


def probes() -> list[Probe]:
    return [Probe(f"plugin-{name}", call, expect) for name, call, expect in ROWS]
