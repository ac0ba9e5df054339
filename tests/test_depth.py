"""The depth report: per-layer metrics, the progression criterion, table, JSON, figure.

A hand-built network: each layer pulls its input towards the nearest of three
fixed centres, ``h -> c + f (h - c)``, by a fixed factor f. The inputs lie
near their own class's centre, with class-centred noise, so every layer keeps
the class means and multiplies the within-class deviations by f: collapse sets
in at known depths (NC1 of a layer is the product of the factors squared times
the input's, exactly 0 after a factor 0), and every metric of every layer is
checked against float64 NumPy formulas.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ncgeom import ClassStats, DepthReport, SecondPass, depth_report
from ncgeom.depth import (
    DEPTH_METRICS,
    PROGRESSION_DROP,
    PROGRESSION_RHO,
    progression,
    spearman,
)
from ncgeom.vocabulary import label

K = 3
#: Factor of each layer: none (the input), NC1 down 4x, then 100x more, then exact collapse.
FACTORS = {"input": 1.0, "block1": 0.5, "block2": 0.1, "block3": 0.0, "head": 1.0}
CENTRES = np.array(
    [
        [4.0, 0.5, 0.0, 1.0, 0.0, 0.0],
        [0.0, 3.0, 1.0, 0.0, 1.0, 0.0],
        [1.0, 0.0, 5.0, 0.0, 0.0, 2.0],
    ]
)


# ----------------------------------------------------------------------------- formulas
def _means(x, y):
    classes = np.unique(y)
    return classes, np.stack([x[y == k].mean(axis=0) for k in classes])


def nc1_formula(x, y):
    classes, means = _means(x, y)
    dev = x - means[np.searchsorted(classes, y)]
    centred = means - x.mean(axis=0)
    within, between = dev.T @ dev / len(y), centred.T @ centred / len(classes)
    return float(np.trace(within @ np.linalg.pinv(between, rcond=1e-10)) / len(classes))


def cdnv_formula(x, y):
    classes, means = _means(x, y)
    var = [((x[y == k] - means[i]) ** 2).sum(axis=1).mean() for i, k in enumerate(classes)]
    pairs = [
        (var[i] + var[j]) / (2 * ((means[i] - means[j]) ** 2).sum())
        for i in range(len(classes))
        for j in range(i + 1, len(classes))
    ]
    return float(np.mean(pairs))


def trace_ratio_formula(x, y):
    classes, means = _means(x, y)
    dev = x - means[np.searchsorted(classes, y)]
    centred = means - x.mean(axis=0)
    return float((dev**2).sum() / len(y) / ((centred**2).sum() / len(classes)))


def etf_formula(x, y):
    classes, means = _means(x, y)
    centred = means - x.mean(axis=0)
    gram = centred @ centred.T
    target = np.eye(len(classes)) - 1 / len(classes)
    return float(np.linalg.norm(gram / np.linalg.norm(gram) - target / np.linalg.norm(target)))


def orthogonality_formula(x, y):
    _, means = _means(x, y)
    unit = means / np.linalg.norm(means, axis=1, keepdims=True)
    cos = unit @ unit.T
    return float(np.mean(np.abs(cos[np.triu_indices(len(means), 1)])))


def equinorm_formula(x, y):
    _, means = _means(x, y)
    norms = np.linalg.norm(means - x.mean(axis=0), axis=1)
    return float(norms.std() / norms.mean())


def ncc_formula(x, y):
    classes, means = _means(x, y)
    nearest = classes[np.argmin(((x[:, None] - means[None]) ** 2).sum(axis=2), axis=1)]
    return float(np.mean(nearest == y))


FORMULAS = {
    "nc1": nc1_formula,
    "cdnv": cdnv_formula,
    "nc1_trace_ratio": trace_ratio_formula,
    "etf_error": etf_formula,
    "orthogonality_error": orthogonality_formula,
    "equinorm": equinorm_formula,
    "ncc_accuracy": ncc_formula,
}


# ----------------------------------------------------------------------------- network
def _layer(h: np.ndarray, factor: float) -> np.ndarray:
    """Pull every row towards its nearest centre by `factor`."""
    nearest = CENTRES[np.argmin(((h[:, None] - CENTRES[None]) ** 2).sum(axis=2), axis=1)]
    return nearest + factor * (h - nearest)


def _network(num: int = 240, seed: int = 0):
    """Labels (N,) and the output of every layer (name -> (N, 6)), shallowest first."""
    rng = np.random.default_rng(seed)
    y = np.arange(num) % K
    rng.shuffle(y)
    noise = 0.6 * rng.normal(size=(num, 6))
    for k in range(K):  # class-centred: every layer keeps the class means
        noise[y == k] -= noise[y == k].mean(axis=0)
    h = CENTRES[y] + noise
    assert ncc_formula(h, y) == 1.0  # every row nearest its own centre
    layers = {}
    for name, factor in FACTORS.items():
        h = _layer(h, factor)
        layers[name] = h
    return layers, y


def _report(layers, y, *, gram_layers=("input", "block2", "head"), **kwargs) -> DepthReport:
    stats, second = {}, {}
    for name, x in layers.items():
        gram = name in gram_layers
        stats[name] = ClassStats.from_features(x, y, K, gram=gram)
        passes = SecondPass(stats[name], scatter=not gram)
        for rows in np.array_split(np.arange(len(y)), 4):
            passes.update(x[rows], y[rows])
        second[name] = passes
    return depth_report(stats, second=second, **kwargs)


@pytest.fixture(scope="module")
def network():
    return _network()


@pytest.fixture(scope="module")
def report(network):
    layers, y = network
    classifier = np.array([[1.0, 0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0, 0], [0, 0, 1.0, 0, 0, 0]])
    return _report(layers, y, classifier=classifier, reduce={n: "pool" for n in layers})


# ----------------------------------------------------------------------------- values
def test_every_layer_gives_the_float64_formulas(network, report):
    layers, y = network
    assert report.layers == tuple(FACTORS)
    for name, x in layers.items():
        for metric in DEPTH_METRICS:
            expected = FORMULAS[metric](x, y)
            got = report.value(name, metric)
            if expected == 0:  # exactly collapsed layers
                assert got == 0, (name, metric)
            else:
                assert got == pytest.approx(expected, rel=1e-10, abs=0), (name, metric)


def test_collapse_sets_in_at_the_known_depths(network, report):
    first = report.value("input", "nc1")
    assert first > 0.01  # a spread along the span of the means: NC1 sees it
    for name, drop in (("block1", 0.25), ("block2", 0.25e-2)):
        for metric in ("nc1", "cdnv", "nc1_trace_ratio"):
            expected = drop * report.value("input", metric)
            assert report.value(name, metric) == pytest.approx(expected, rel=1e-10, abs=0)
    for name in ("block3", "head"):
        assert report.value(name, "nc1") == report.value(name, "cdnv") == 0.0
        assert report.value(name, "ncc_accuracy") == 1.0
    result = report.progression()
    # Depths 0..4 against NC1 ranks (5, 4, 3, 1.5, 1.5): rho = -9.5 / sqrt(10 * 9.5).
    assert result.rho == pytest.approx(-9.5 / math.sqrt(95), rel=1e-14)
    assert result.progresses and result.first == first and result.last == 0.0
    assert result.sentence.startswith("Collapse progresses with depth: Spearman rho")


def test_classifier_metrics_only_at_the_last_layer(report):
    assert report.value("head", "self_duality_error") is not None
    assert report.value("block3", "self_duality_error") is None
    assert report.reason("block3", "self_duality_error") == "no classifier given"
    assert report.reason("head", "nc1") is None


def test_nc1_without_gram_or_second_pass_is_missing_with_a_reason(network):
    layers, y = network
    stats = {name: ClassStats.from_features(x, y, K, gram=False) for name, x in layers.items()}
    report = depth_report(stats)
    assert report.value("input", "nc1") is None
    assert "SecondPass" in report.reason("input", "nc1")
    assert report.value("input", "ncc_accuracy") is None
    assert "second pass" in report.reason("input", "ncc_accuracy")
    assert report.value("input", "cdnv") == pytest.approx(cdnv_formula(layers["input"], y))
    assert not report.progression().progresses
    assert "not judged" in report.progression().sentence


def test_a_second_pass_over_other_samples_is_flagged(network):
    layers, y = network
    x = layers["input"]
    stats = {"input": ClassStats.from_features(x, y, K, gram=False)}
    passes = SecondPass(stats["input"], scatter=True).update(x[:-3], y[:-3])
    report = depth_report(stats, second={"input": passes})
    assert math.isnan(report.value("input", "nc1"))
    assert "other class counts" in report.reason("input", "nc1")


def test_a_second_pass_without_ncc_gives_nc1_and_says_why_no_ncc(network):
    layers, y = network
    x = layers["block1"]
    stats = {"block1": ClassStats.from_features(x, y, K, gram=False)}
    passes = SecondPass(stats["block1"], scatter=True, ncc=False).update(x, y)
    report = depth_report(stats, second={"block1": passes})
    assert report.value("block1", "ncc_accuracy") is None
    assert "ncc=False" in report.reason("block1", "ncc_accuracy")
    assert report.value("block1", "nc1") == pytest.approx(nc1_formula(x, y), rel=1e-10, abs=0)


def test_flattened_feature_maps_through_layer_features():
    from ncgeom import layer_features

    rng = np.random.default_rng(3)
    y = np.arange(90) % K
    maps = rng.normal(size=(90, 2, 4, 4)) + 3 * np.eye(K)[y][:, :, None, None][:, :2]
    flat, labels = layer_features(maps, y, reduce="flatten")
    stats = {"conv": ClassStats.from_features(flat, labels, K, gram=False)}
    second = {"conv": SecondPass(stats["conv"], scatter=True).update(flat, labels)}
    report = depth_report(stats, second=second, reduce="flatten")
    assert report.reduce == {"conv": "flatten"}
    assert report.value("conv", "nc1") == pytest.approx(nc1_formula(flat, y), rel=1e-10)


# ----------------------------------------------------------------------------- criterion
def test_spearman_with_ties_against_hand_computed_values():
    # Ranks of y: (2.5, 1, 2.5, 4.5, 4.5); rho = 7.5 / sqrt(10 * 9).
    assert spearman([1, 2, 3, 4, 5], [2, 1, 2, 4, 4]) == pytest.approx(7.5 / math.sqrt(90))
    # Ranks of y: (4, 2.5, 2.5, 1); rho = -4.5 / sqrt(5 * 4.5).
    assert spearman([0, 1, 2, 3], [4.0, 3.0, 3.0, 1.0]) == pytest.approx(-4.5 / math.sqrt(22.5))
    scipy_stats = pytest.importorskip("scipy.stats")
    values = [3.0, 1.0, 1.0, 7.0, 2.0, 2.0, 2.0]
    assert spearman(range(7), values) == pytest.approx(
        scipy_stats.spearmanr(range(7), values).statistic, rel=1e-14
    )
    assert math.isnan(spearman([0, 1, 2], [1.0, 1.0, 1.0]))


def test_the_criterion_needs_both_the_trend_and_the_drop():
    assert (PROGRESSION_RHO, PROGRESSION_DROP) == (-0.8, 0.1)
    steady = progression([1.0, 0.8, 0.5, 0.3])  # rho -1, drop 0.3
    assert steady.rho == -1.0 and not steady.progresses
    assert "needs < 0.1" in steady.sentence and "(< -0.8)" in steady.sentence
    jumpy = progression([1.0, 0.001, 0.5, 0.002, 0.01])  # drop 0.01, rho -0.3
    assert jumpy.rho == pytest.approx(-0.3) and not jumpy.progresses
    assert "needs < -0.8" in jumpy.sentence
    # A layer without NC1 is left out, and the sentence says over how many.
    gaps = progression([1.0, None, float("nan"), 0.1, 0.01])
    assert gaps.progresses and "over the 3 layers" in gaps.sentence
    short = progression([1.0, 0.01])
    assert not short.progresses and math.isnan(short.rho) and "not judged" in short.sentence


# ----------------------------------------------------------------------------- outputs
def test_table_uses_the_vocabulary_and_dashes(network, report):
    text = report.table()
    lines = text.splitlines()
    heads = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert heads == ["layer", "reduce", *(label(name) for name in DEPTH_METRICS)]
    assert label("ncc_accuracy") == "ncc_accuracy (NCC_acc)"
    assert len(lines) == 2 + len(FACTORS)
    row = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert row[0] == "input" and row[1] == "pool"
    assert float(row[2]) == pytest.approx(report.value("input", "nc1"), rel=1e-3)
    layers, y = network
    stats = {"a": ClassStats.from_features(layers["input"], y, K, gram=False)}
    assert "| a | pool | - |" in depth_report(stats).table()


def test_json_round_trip(tmp_path, report):
    path = tmp_path / "depth.json"
    report.save(path)
    data = json.loads(path.read_text())
    assert data["layers"] == list(FACTORS)
    assert data["reduce"] == dict.fromkeys(FACTORS, "pool")
    assert data["values"]["block2"]["nc1"] == report.value("block2", "nc1")
    assert data["progression"]["progresses"] is True
    assert data["progression"]["sentence"] == report.progression().sentence
    assert set(data["reports"]) == set(FACTORS)


def test_figure_is_written_and_reads_back_as_png(tmp_path, report):
    image = pytest.importorskip("matplotlib.image")
    path = tmp_path / "depth.png"
    fig = report.plot(path)
    assert path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == list(FACTORS)
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == [
        *(label(name) for name in ("nc1", "cdnv", "nc1_trace_ratio", "etf_error")),
        "exactly 0 (off the log axis)",
    ]
    # nc1, cdnv and the trace ratio are exactly 0 at block3 and head: six marks.
    marks = [tuple(line.get_xdata()) for line in ax.get_lines() if line.get_marker() == "v"]
    assert sorted(marks) == sorted([(3,), (4,)] * 3 + [()])


def test_bad_arguments_name_themselves(network):
    layers, y = network
    stats = {"a": ClassStats.from_features(layers["input"], y, K, gram=False)}
    with pytest.raises(ValueError, match=r"`reduce` must be one of .*'mean'"):
        depth_report(stats, reduce="mean")
    with pytest.raises(ValueError, match=r"`reduce` must give a mode for every layer"):
        depth_report(stats, reduce={"b": "pool"})
    with pytest.raises(ValueError, match=r"`second` must name layers"):
        depth_report(stats, second={"b": SecondPass(stats["a"])})
    with pytest.raises(TypeError, match=r"`stats\['a'\]` must"):
        depth_report({"a": layers["input"]})
    with pytest.raises(ValueError, match=r"`stats` must be a non-empty mapping"):
        depth_report({})
    report = depth_report(stats)
    with pytest.raises(ValueError, match=r"`layer` must be one of \('a',\); got 'b'"):
        report.value("b", "nc1")
    with pytest.raises(ValueError, match=r"`metric` must be .*'nc9'"):
        report.value("a", "nc9")
