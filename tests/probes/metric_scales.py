"""The pair and variant metrics and the nearest ideal geometries at feature scales 1e-20 to 1e20.

The features, classifier and scales of `probes.scales`. Outputs with units
must be the float64 formula at the given features: `bias_collapse` (logits, c
times; the bias is c times a fixed vector), `uniform_duality_variance` (c**2
times), `cdnv` with a distance exponent e (c**(2 - 2e) times), the nearest
simplex ETF's and orthogonal frame's `target`, `scale` and `distance` (c
times) and the inner-product `interference_grid` (c**2 times); also the
bias collapse of `nc_report` given a bias, from features and from statistics.
The scale-free metrics must keep their value at c = 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ncgeom import ClassStats, metrics, nc_report

from . import Probe, Returns
from . import formulas as f
from .data import tt
from .scales import FLOAT32_SCALES, OPT, SCALES, K, W, Y, features, scale_label

#: A bias of logit size, multiplied by the feature scale (W is fixed).
BIAS = 0.1 * np.random.default_rng(11).normal(size=K)
#: Relative lengths of the orthogonal frame: the optimum's feature norms.
LENGTHS = np.asarray(OPT.feature_norms, dtype=np.float64)
#: Distance exponents of CDNV with units.
EXPONENTS = (0.5, 2.0)
#: A direction of out-of-distribution features.
OOD = np.array([1.0, 2.0, -0.5])
#: The fields of a `NearestFrame` with units.
FIELDS = ("target", "scale", "distance")


def _stats(x: Any) -> ClassStats:
    return ClassStats.from_features(x, Y, K)


def _parts(x: np.ndarray) -> dict[str, np.ndarray]:
    """Float64 means, variances, centred means and global mean of features `x`."""
    x64 = np.asarray(x, dtype=np.float64)
    means = f.class_means(x64, Y, K)
    return {
        "means": means,
        "variances": f.class_variances(x64, Y, K),
        "centred": f.centred_means(means, f.counts(Y, K)),
        "global_mean": x64.mean(axis=0),
    }


def _frame_fields(fit: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {f"{prefix}.{name}": fit[name] for name in FIELDS}


def unit_values(x: np.ndarray, bias: np.ndarray) -> dict[str, Any]:
    """The float64 formula of every output with units, at features `x`."""
    p = _parts(x)
    out: dict[str, Any] = {
        "bias_collapse": f.bias_collapse(W, bias, p["global_mean"]),
        "bias_collapse-no-bias": f.bias_collapse(W, None, p["global_mean"]),
        "uniform_duality_variance": f.uniform_duality_variance(W, p["centred"]),
        "interference_grid-inner": f.interference_grid(p["centred"], cosine=False),
        **_frame_fields(f.nearest_simplex_etf(p["centred"]), "nearest_simplex_etf"),
        **_frame_fields(f.nearest_frame(p["means"], LENGTHS), "nearest_orthogonal_frame"),
        **_frame_fields(f.nearest_frame(p["means"], np.ones(K)), "nearest_orthogonal_frame-equal"),
    }
    for e in EXPONENTS:
        out[f"cdnv-exponent-{e:g}"] = f.cdnv(p["means"], p["variances"], e)
    return out


#: How the library measures each output with units, from (stats, classifier, bias).
UNIT_MEASURES: dict[str, Callable[[ClassStats, Any, Any], Any]] = {
    "bias_collapse": lambda s, w, b: metrics.bias_collapse(w, b, s),
    "bias_collapse-no-bias": lambda s, w, b: metrics.bias_collapse(w, None, s),
    "uniform_duality_variance": lambda s, w, b: metrics.uniform_duality_variance(w, s),
    "interference_grid-inner": lambda s, w, b: metrics.interference_grid(s, cosine=False),
    **{
        f"cdnv-exponent-{e:g}": (lambda s, w, b, e=e: metrics.cdnv(s, exponent=e))
        for e in EXPONENTS
    },
}
#: The nearest ideal geometries, whose target, scale and distance have units.
FITS: dict[str, Callable[[ClassStats], Any]] = {
    "nearest_simplex_etf": metrics.nearest_simplex_etf,
    "nearest_orthogonal_frame": lambda s: metrics.nearest_orthogonal_frame(s, lengths=LENGTHS),
    "nearest_orthogonal_frame-equal": metrics.nearest_orthogonal_frame,
}


def measure_units(stats: ClassStats, w: Any, bias: Any) -> dict[str, Any]:
    """Every output with units, from the library."""
    out = {name: measure(stats, w, bias) for name, measure in UNIT_MEASURES.items()}
    for name, fit in FITS.items():
        result = fit(stats)
        out.update({f"{name}.{field}": getattr(result, field) for field in FIELDS})
    return out


def free_values(x: np.ndarray) -> dict[str, Any]:
    """The float64 formula of every scale-free output, at features `x`."""
    p = _parts(x)
    c, means = p["centred"], p["means"]
    cosines = f.pair_cosines(c)
    d = means.shape[1]
    return {
        "cdnv": f.cdnv(means, p["variances"]),
        "nc1_trace_ratio": f.nc1_trace_ratio(x, Y, K),
        "log_equinorm": f.log_equinorm(c),
        "equiangularity_std": float(np.std(cosines)),
        "interference_mean": float(np.mean(cosines)),
        "interference_min": float(np.min(cosines)),
        "interference_max": float(np.max(cosines)),
        "interference_grid": f.interference_grid(c),
        "log_energy": f.log_energy(c),
        "log_energy_variance": f.log_energy_variance(c),
        "riesz_log_energy": f.riesz_log_energy(c, d - 2.0),
        "riesz_log_variance": f.riesz_log_variance(c, d - 2.0),
        "riesz_log_energy-s=2.5": f.riesz_log_energy(c, 2.5),
        "classifier_equinorm": f.classifier_equinorm(W),
        "classifier_equiangularity": f.classifier_equiangularity(W),
        "classifier_etf_error": f.classifier_etf_error(W),
        "uniform_duality": f.uniform_duality(W, c),
        "distance_norms": f.distance_norms(W, c),
        "ood_deviation": f.ood_deviation(means, OOD),
        "nearest_simplex_etf.relative_distance": f.nearest_simplex_etf(c)["relative_distance"],
        "nearest_orthogonal_frame.relative_distance": f.nearest_frame(means, LENGTHS)[
            "relative_distance"
        ],
    }


def measure_free(stats: ClassStats, w: Any, ood: Any) -> dict[str, Any]:
    """Every scale-free output, from the library."""
    m = metrics
    return {
        "cdnv": m.cdnv(stats),
        "nc1_trace_ratio": m.nc1_trace_ratio(stats),
        "log_equinorm": m.log_equinorm(stats),
        "equiangularity_std": m.equiangularity_std(stats),
        "interference_mean": m.interference_mean(stats),
        "interference_min": m.interference_min(stats),
        "interference_max": m.interference_max(stats),
        "interference_grid": m.interference_grid(stats),
        "log_energy": m.log_energy(stats),
        "log_energy_variance": m.log_energy_variance(stats),
        "riesz_log_energy": m.riesz_log_energy(stats),
        "riesz_log_variance": m.riesz_log_variance(stats),
        "riesz_log_energy-s=2.5": m.riesz_log_energy(stats, s=2.5),
        "classifier_equinorm": m.classifier_equinorm(w, stats),
        "classifier_equiangularity": m.classifier_equiangularity(w, stats),
        "classifier_etf_error": m.classifier_etf_error(w, stats),
        "uniform_duality": m.uniform_duality(w, stats),
        "distance_norms": m.distance_norms(w, stats),
        "ood_deviation": m.ood_deviation(stats, ood),
        "nearest_simplex_etf.relative_distance": m.nearest_simplex_etf(stats).relative_distance,
        "nearest_orthogonal_frame.relative_distance": m.nearest_orthogonal_frame(
            stats, lengths=LENGTHS
        ).relative_distance,
    }


def values_check(want: dict[str, Any], rtol: float) -> f.Check:
    """Every entry of a dict of results against the formula's, within `rtol`."""

    def check(got: dict[str, Any]) -> None:
        problems = []
        for name, value in want.items():
            try:
                f.close(name, got[name], value, rtol)
            except AssertionError as error:
                problems.append(str(error))
        if problems:
            raise AssertionError("; ".join(problems))

    return check


def _float64_probes(c: float) -> list[Probe]:
    """One probe per output with units (the id says which broke), one for the scale-free ones."""
    x = features(c)
    label = scale_label(c)
    want = unit_values(x, c * BIAS)
    out = []
    for name, measure in UNIT_MEASURES.items():
        out.append(
            Probe(
                f"scale-{name}-{label}",
                lambda measure=measure: measure(_stats(x), W, c * BIAS),
                Returns(f.scalar_check(name, want[name], 1e-10)),
            )
        )
    for name, fit in FITS.items():
        fields = [(field, want[f"{name}.{field}"], 1e-10) for field in FIELDS]
        out.append(
            Probe(
                f"scale-{name}-{label}",
                lambda fit=fit: fit(_stats(x)),
                Returns(f.field_checks(fields)),
            )
        )
    out.append(
        Probe(
            f"scale-nc_report-bias_collapse-{label}",
            lambda: _report_bias_collapse(x, c * BIAS),
            Returns(f.scalar_check("bias_collapse", [want["bias_collapse"]] * 2, 1e-10)),
        )
    )
    out.append(
        Probe(
            f"scale-free-metrics-{label}",
            lambda: measure_free(_stats(x), W, OOD),
            Returns(values_check(free_values(features(1.0)), 1e-9)),
        )
    )
    return out


def _report_bias_collapse(x: np.ndarray, bias: np.ndarray) -> tuple[float | None, ...]:
    """The report's bias collapse with a bias, from features and from statistics."""
    return tuple(nc_report(source, W, bias).bias_collapse for source in ((x, Y), _stats(x)))


def _float32_probes(c: float) -> list[Probe]:
    """float32 features and classifier: outputs with units within 1e-5 (the
    features' rounding), scale-free ones within 1e-4 of their value at c = 1."""
    x = features(c, np.float32)
    w, bias = W.astype(np.float32), (c * BIAS).astype(np.float32)
    label = scale_label(c)
    return [
        Probe(
            f"scale-float32-units-{label}",
            lambda: measure_units(_stats(x), w, bias),
            Returns(values_check(unit_values(x, bias), 1e-5)),
        ),
        Probe(
            f"scale-float32-free-metrics-{label}",
            lambda: measure_free(_stats(x), w, OOD.astype(np.float32)),
            Returns(values_check(free_values(features(1.0)), 1e-4)),
        ),
    ]


def _other_backend_probes() -> list[Probe]:
    import array_api_strict as strict

    c = 2.0**20
    x = features(c)
    torch_c = 1e20
    torch_x = features(torch_c)
    return [
        Probe(
            f"scale-array_api_strict-units-{scale_label(c)}",
            lambda: measure_units(
                _strict_stats(x),
                strict.asarray(W),
                strict.asarray(c * BIAS),
            ),
            Returns(values_check(unit_values(x, c * BIAS), 1e-10)),
        ),
        Probe(
            f"scale-torch-units-{scale_label(torch_c)}",
            lambda: measure_units(
                ClassStats.from_features(tt(torch_x), tt(Y), K), tt(W), tt(torch_c * BIAS)
            ),
            Returns(values_check(unit_values(torch_x, torch_c * BIAS), 1e-10)),
        ),
        Probe(
            f"scale-torch-free-metrics-{scale_label(torch_c)}",
            lambda: measure_free(ClassStats.from_features(tt(torch_x), tt(Y), K), tt(W), tt(OOD)),
            Returns(values_check(free_values(features(1.0)), 1e-9)),
        ),
    ]


def _strict_stats(x: np.ndarray) -> ClassStats:
    import array_api_strict as strict

    return ClassStats.from_features(strict.asarray(x), strict.asarray(Y), K)


def probes() -> list[Probe]:
    out = []
    for c in SCALES:
        out += _float64_probes(c)
    for c in FLOAT32_SCALES:
        out += _float32_probes(c)
    return out + _other_backend_probes()
