"""Tests that pin behaviour a mutation run (docs/mutation.md) found unchecked.

Each test says which change of the source it rules out. Expected values are
computed here in float64 NumPy or written out from the definitions.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from world import reduce_on_threads

from ncgeom import ClassStats, nc_report
from ncgeom.theory import ufm_relu_optimum


def _means(x, y, k):
    return np.stack([x[y == c].mean(axis=0) for c in range(k)])


def test_report_theory_values_use_the_means_of_rebased_statistics():
    # `means = shift - offsets` in the report's theory values went unnoticed:
    # statistics from features have offsets ~0. Rebased ones have large sums.
    counts = [30, 20, 8, 5]
    opt = ufm_relu_optimum(counts, 1e-2, 1e-2)
    k = len(counts)
    y = np.repeat(np.arange(k), counts)
    rng = np.random.default_rng(0)
    x = np.asarray(opt.means())[y] + 0.05 * rng.normal(size=(len(y), opt.dim))
    w = np.asarray(opt.classifier())
    stats = ClassStats.from_features(x, y, k).rebase(np.zeros((k, opt.dim)))
    assert np.all(np.abs(stats.sums).max(axis=1) > 1.0)
    report = nc_report(stats, w, theory=opt)
    means = _means(x, y, k)
    np.testing.assert_allclose(
        report.feature_norms_measured, np.linalg.norm(means, axis=1), rtol=1e-10
    )
    logits = means @ w.T
    true = np.diag(logits)
    other = np.where(np.eye(k, dtype=bool), -np.inf, logits).max(axis=1)
    np.testing.assert_allclose(report.margins_measured, true - other, rtol=1e-9)
    fresh = nc_report(ClassStats.from_features(x, y, k), w, theory=opt)
    assert report.gof_error == pytest.approx(fresh.gof_error, rel=1e-9)
    assert report.logit_structure_error == pytest.approx(fresh.logit_structure_error, rel=1e-9)


def test_optimum_to_dict_names_every_field():
    # Renamed keys of UFMOptimum.to_dict went unnoticed.
    opt = ufm_relu_optimum([30, 20, 3, 1], 2e-2, 3e-2)
    d = opt.to_dict()
    assert d["lambda_w"] == 2e-2 and d["lambda_h"] == 3e-2
    assert d["dim"] == opt.dim and d["num_alive"] == opt.num_alive == 3
    assert d["collapse_count"] == opt.collapse_count
    assert d["counts"] == [30, 20, 3, 1]
    assert set(d) >= {
        "counts",
        "lambda_w",
        "lambda_h",
        "dim",
        "num_alive",
        "collapse_count",
        "objective",
        "alive",
        "margins",
        "feature_norms",
        "classifier_norms",
        "cosines",
    }


def test_finite_features_whose_squares_overflow_are_explained():
    # A blank or altered message for features that are finite but too large.
    x = np.array([[3e38, 0.0], [-3e38, 0.0], [1.0, 1.0]], dtype=np.float32)
    with pytest.raises(ValueError) as err:
        ClassStats.from_features(x, np.array([0, 0, 1]), 2)
    assert str(err.value) == (
        "`features` are finite but their squared deviations overflow float32: the "
        "features cannot be represented at this size; pass them in float64"
    )


def _smallest_surviving_count(rest: int, k: int, lw: float, lh: float, limit: int = 20_000):
    """Smallest m with ``m (K-1) > (rest + m)^2 K lw lh``, exactly, by search."""
    from fractions import Fraction

    p, q = (Fraction(lw) * Fraction(lh)).as_integer_ratio()
    for m in range(1, limit):
        if m * (k - 1) * q > (rest + m) ** 2 * k * p:
            return m
    return None


@pytest.mark.parametrize(
    ("counts", "k", "lw", "lh"),
    [
        ([5000, 2000, 500, 100, 20], 4, 5e-3, 1e-3),  # the docstring's case
        ([1, 1000], 0, 0.011124, 0.011124),  # 4 c R = 0.99: a narrow interval
        ([1, 1000], 0, 0.01118, 0.01118),  # 4 c R = 0.99996: narrower still
        ([1, 1000], 0, 0.0112, 0.0112),  # 4 c R > 1: no count survives
        ([3, 5], 1, 1e-3, 1e-3),  # one sample is enough
        ([7, 40, 3], 2, 0.05, 0.04),
        ([5, 2], 0, 0.25, 0.25),  # m = 2 meets the threshold with equality: not alive
    ],
)
def test_min_samples_to_survive_matches_an_exact_search(counts, k, lw, lh):
    # Changes of the closed-form start of the search (a wrong discriminant, a
    # start above the surviving interval, a walk that stops at 2) went unnoticed.
    from ncgeom.theory import min_samples_to_survive

    rest = sum(counts) - counts[k]
    want = _smallest_surviving_count(rest, len(counts), lw, lh)
    assert min_samples_to_survive(counts, k, lw, lh) == want


def _collapsed_reference(w, means, counts, b, lw, lh, lb):
    """Value and gradients of the collapsed UFM+ objective (docs/loss.md), float64."""
    n = np.asarray(counts, dtype=np.float64)
    total = n.sum()
    logits = means @ w.T + b
    shifted = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    k = len(n)
    ce = -np.log(p[np.arange(k), np.arange(k)])
    value = (
        np.sum(n / total * ce)
        + lw / 2 * np.sum(w * w)
        + lh / 2 * np.sum(n * np.sum(means * means, axis=1))
        + lb / 2 * np.sum(b * b)
    )
    g = (n / total)[:, None] * (p - np.eye(k))
    return value, g.T @ means + lw * w, g @ w + lh * n[:, None] * means, g.sum(axis=0) + lb * b


def test_collapsed_gradients_default_bias_penalty_is_zero():
    # A default lambda_b of 1 instead of 0 went unnoticed.
    from ncgeom.loss import collapsed_gradients, collapsed_objective

    rng = np.random.default_rng(0)
    w, means = rng.normal(size=(3, 4)), np.abs(rng.normal(size=(3, 4)))
    b, counts = np.array([0.5, -1.0, 2.0]), [5, 3, 1]
    want = _collapsed_reference(w, means, counts, b, 1e-2, 2e-2, 0.0)
    got = collapsed_gradients(w, means, counts, 1e-2, 2e-2, bias=b)
    assert float(got.objective) == pytest.approx(want[0], rel=1e-12)
    np.testing.assert_allclose(got.classifier, want[1], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(got.means, want[2], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(got.bias, want[3], rtol=1e-10, atol=1e-14)
    assert float(collapsed_objective(w, means, counts, 1e-2, 2e-2, bias=b)) == pytest.approx(
        want[0], rel=1e-12
    )
    penalised = collapsed_gradients(w, means, counts, 1e-2, 2e-2, bias=b, lambda_b=0.3)
    np.testing.assert_allclose(
        penalised.bias, _collapsed_reference(w, means, counts, b, 1e-2, 2e-2, 0.3)[3], rtol=1e-10
    )


def test_report_to_dict_layout():
    # Renamed or dropped keys of NCReport.to_dict went unnoticed.
    counts = [12, 9, 6]
    opt = ufm_relu_optimum(counts, 1e-2, 1e-2)
    y = np.repeat(np.arange(3), counts)
    rng = np.random.default_rng(1)
    x = np.asarray(opt.means())[y] + 0.01 * rng.normal(size=(len(y), opt.dim))
    report = nc_report((x, y), np.asarray(opt.classifier()), theory=opt).with_theory(opt)
    d = report.to_dict()
    assert d["counts"] == counts and d["excluded"] == []
    assert type(d["theory"]) is dict and d["theory"] == dict(report.theory)
    assert set(d) == {f.name for f in dataclasses.fields(report)} | {"verdict"}
    assert isinstance(d["verdict"], dict) and d["verdict"] == report.verdict().to_dict()
    assert set(d["unavailable"]) == {"ood_deviation"}  # no out-of-distribution mean given
    assert isinstance(d["margins_measured"], list) and len(d["margins_measured"]) == 3
    # A class without samples is excluded, with its reason, and what it
    # prevents is listed under "unavailable".
    stats = ClassStats.from_features(x[y < 2], y[y < 2], 3)
    with pytest.warns(UserWarning, match="no samples"):
        partial = nc_report(stats, theory=opt)
    with pytest.warns(UserWarning, match="no samples"):
        two = nc_report(ClassStats.from_features(x[y < 2], y[y < 2], 4))
    assert str(two).endswith("\n  excluded: class 2 (no samples), class 3 (no samples)")
    d = partial.to_dict()
    assert d["excluded"] == [{"class": 2, "reason": "no samples"}]
    # The theory still says which classes collapse, for the verdict.
    assert d["theory"]["counts"] == counts
    for name in ("gof_error", "classifier_gram_error", "logit_structure_error"):
        assert d["unavailable"][name] == "the theory needs every class to have samples"
    assert d["unavailable"]["ncc_agreement"] == "needs features, not statistics"
    assert d["unavailable"]["self_duality_error"] == "no classifier given"
    assert str(partial).endswith("\n  excluded: class 2 (no samples)")


def test_report_text_and_reasons_with_theory_but_no_classifier():
    # The per-class header, the line breaks and the reasons of metrics that
    # need a classifier went unchecked.
    counts = [12, 9, 6]
    opt = ufm_relu_optimum(counts, 1e-2, 1e-2)
    y = np.repeat(np.arange(3), counts)
    x = np.asarray(opt.means())[y] + 0.01 * np.random.default_rng(2).normal(size=(len(y), opt.dim))
    report = nc_report((x, y), theory=opt)
    for name in (
        "classifier_gram_error",
        "logit_structure_error",
        "margins_measured",
        "margins_predicted",
    ):
        assert dict(report.unavailable)[name] == "no classifier given"
    lines = str(report).split("\n")
    assert lines[0].startswith("NCReport: 3 classes, 27 samples")
    assert "Per class (_meas = measured, _opt = at the optimum)" in lines


def test_report_refuses_a_theory_that_is_not_an_optimum():
    x, y = np.eye(3), np.arange(3)
    with pytest.raises(TypeError) as err:
        nc_report((x, y), theory="x")
    assert str(err.value) == (
        "`theory` must be a UFMOptimum (ncgeom.theory.ufm_relu_optimum); got str; "
        "for explicit margins use ncgeom.theory_metrics"
    )


def test_classifier_gram_error_names_the_classifier_in_its_errors():
    from ncgeom.theory.comparison import classifier_gram_error

    opt = ufm_relu_optimum([1, 2, 3], 1e-2, 1e-2)
    with pytest.raises(ValueError, match=r"^`classifier` must be 2-D \(classes, dim\)"):
        classifier_gram_error(np.ones(3), opt)


def _nf_distance(a, b):
    return float(np.linalg.norm(a / np.linalg.norm(a) - b / np.linalg.norm(b)))


@pytest.mark.parametrize("global_mean", ["samples", "classes"])
def test_self_duality_error_honours_global_mean(global_mean):
    # `populated(stats)` without the caller's global_mean went unnoticed:
    # with unequal counts the two centres differ.
    from ncgeom.metrics import self_duality_error

    rng = np.random.default_rng(3)
    counts = [40, 6, 15]
    y = np.repeat(np.arange(3), counts)
    x = rng.normal(size=(3, 5))[y] * 3 + rng.normal(size=(len(y), 5))
    w = rng.normal(size=(3, 5))
    means = _means(x, y, 3)
    centre = x.mean(axis=0) if global_mean == "samples" else means.mean(axis=0)
    want = _nf_distance(w, means - centre)
    stats = ClassStats.from_features(x, y, 3)
    got = float(self_duality_error(w, stats, global_mean=global_mean))
    assert got == pytest.approx(want, rel=1e-10)


def test_self_duality_error_is_nan_when_the_means_coincide_to_rounding():
    # Without its name the metric escaped the "between" flag: a value made of
    # rounding noise came back instead of NaN.
    from ncgeom.metrics import self_duality_error

    y = np.array([0, 0, 1, 1, 2, 2])
    base = np.array([1.0, 2.0, 3.0])
    x = np.stack([base, base, base * (1 + 2**-52), base, base, base * (1 - 2**-52)])
    stats = ClassStats.from_features(x, y, 3)
    assert np.isnan(float(self_duality_error(np.eye(3), stats)))


def test_ncc_agreements_merge_by_adding():
    from ncgeom.metrics import NCCAgreement

    merged = NCCAgreement(np.asarray(3), np.asarray(10)).merge(
        NCCAgreement(np.asarray(4), np.asarray(5))
    )
    assert int(merged.matches) == 7 and int(merged.total) == 15
    assert merged.fraction == pytest.approx(7 / 15)


def _world(parts, kwargs=None):
    """`reduce_class_stats` on every rank of a simulated world (threads); the
    results (or errors) of every rank."""
    return reduce_on_threads(parts, kwargs)


def test_reduce_class_stats_refuses_torch_ranks_of_different_dtypes():
    # A dtype label read wrongly from "torch.float32" (every torch dtype the
    # same "other" code) let float32 and float64 ranks mix.
    torch = pytest.importorskip("torch")
    x = torch.arange(12, dtype=torch.float64).reshape(6, 2)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    parts = [
        ClassStats.from_features(x[:3], y[:3], 2),
        ClassStats.from_features(x[3:].float(), y[3:], 2),
    ]
    results = _world(parts)
    for rank, result in enumerate(results):
        assert isinstance(result, ValueError)
        assert "dtype (rank 0: float64, rank 1: float32)" in str(result)
        assert f"(this is rank {rank})" in str(result)
    same = _world([parts[0], ClassStats.from_features(x[3:], y[3:], 2)])
    assert [int(v) for v in same[0].counts] == [3, 3]


def test_reduce_class_stats_default_step_is_zero():
    # A default step other than 0 refused ranks that pass step=0 next to
    # ranks that leave it out.
    x, y = np.arange(12.0).reshape(6, 2), np.array([0, 1, 0, 1, 0, 1])
    parts = [ClassStats.from_features(x[:3], y[:3], 2), ClassStats.from_features(x[3:], y[3:], 2)]
    results = _world(parts, [{"step": 0}, {}])
    assert not any(isinstance(r, Exception) for r in results)
    np.testing.assert_allclose(results[1].means, _means(x, y, 2), rtol=1e-12)


def test_reduce_class_stats_names_a_negative_step():
    from ncgeom.measure.distributed import reduce_class_stats

    stats = ClassStats.from_features(np.eye(2), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match=r"^`step` must be"):
        reduce_class_stats(
            stats, rank=0, world_size=1, all_gather=lambda v: [v], all_reduce=lambda v: v, step=-1
        )


def test_equinorm_default_centre_and_coincident_means():
    # The default global_mean and the metric's name (which selects its NaN
    # flags) of `equinorm` went unchecked.
    from ncgeom.metrics import equinorm

    rng = np.random.default_rng(4)
    counts = [30, 5, 12, 9]
    y = np.repeat(np.arange(4), counts)
    x = rng.normal(size=(4, 3))[y] * 2 + rng.normal(size=(len(y), 3))
    norms = np.linalg.norm(_means(x, y, 4) - x.mean(axis=0), axis=1)
    stats = ClassStats.from_features(x, y, 4)
    assert float(equinorm(stats)) == pytest.approx(np.std(norms) / np.mean(norms), rel=1e-10)
    same = ClassStats.from_features(np.ones((4, 3)), np.arange(4), 4)
    assert np.isnan(float(equinorm(same)))


# ----------------------------------------------------------------------------- reduce_class_stats


def test_reduce_class_stats_counts_ranks_of_one_sample():
    # Ranks with exactly one sample were skipped when the ranks agreed on the
    # dimension and the scale (`> 1` for `> 0`).
    x, y = np.array([[1.0, 2.0], [5.0, -1.0]]), np.array([0, 1])
    parts = [ClassStats.from_features(x[i : i + 1], y[i : i + 1], 2) for i in range(2)]
    for result in _world(parts):
        assert [int(v) for v in result.counts] == [1, 1]
        np.testing.assert_allclose(result.means, x, rtol=0, atol=0)


def test_reduce_class_stats_refuses_a_one_sample_rank_of_another_dim():
    parts = [
        ClassStats.from_features(np.ones((1, 2)), np.array([0]), 2),
        ClassStats.from_features(np.ones((4, 3)), np.array([0, 1, 0, 1]), 2),
    ]
    for result in _world(parts):
        assert isinstance(result, ValueError) and "dim (rank 0: 2, rank 1: 3)" in str(result)


def test_reduce_class_stats_names_every_disagreement():
    parts = [
        ClassStats.from_features(np.ones((2, 2)), np.array([0, 1]), 2),
        ClassStats.from_features(np.ones((2, 2), dtype=np.float32), np.array([0, 1]), 2),
    ]
    results = _world(parts, [{"step": 1}, {"step": 2}])
    message = str(results[0])
    assert "dtype (rank 0: float64, rank 1: float32); step (rank 0: 1, rank 1: 2)" in message


@pytest.mark.parametrize("size", [1e200, 1e-200])
def test_reduce_class_stats_keeps_the_common_scale(size):
    # Features whose squares leave float64: the ranks must agree on the power
    # of two the statistics are stored in (the largest among ranks with
    # samples; an empty rank has none), and the result must keep it.
    from ncgeom.metrics import cdnv

    rng = np.random.default_rng(5)
    y = np.repeat(np.arange(3), [7, 5, 6])
    unit = rng.normal(size=(3, 4))[y] + 0.1 * rng.normal(size=(len(y), 4))
    x = unit * size
    order = rng.permutation(len(y))
    parts = [ClassStats.from_features(x[p], y[p], 3) for p in np.array_split(order, 2)]
    parts.append(ClassStats.empty(3, 4))
    want_means = _means(unit, y, 3)
    var = np.array([np.mean(np.sum((unit[y == c] - want_means[c]) ** 2, 1)) for c in range(3)])
    pairs = [(a, b) for a in range(3) for b in range(a + 1, 3)]
    want_cdnv = np.mean(
        [(var[a] + var[b]) / (2 * np.sum((want_means[a] - want_means[b]) ** 2)) for a, b in pairs]
    )
    for result in _world(parts):
        np.testing.assert_allclose(result.means / size, want_means, rtol=1e-12)
        assert float(cdnv(result)) == pytest.approx(want_cdnv, rel=1e-10)
        assert float(result.unit_scale) == float(parts[0].unit_scale) != 1.0


def test_reduce_class_stats_keeps_dtype_gram_setting_and_empty_classes():
    # float32 statistics stay float32; without a Gram there is none (not ""),
    # an empty rank of another dimension adopts the common settings, and a
    # class nobody saw does not turn the Gram into NaN.
    x = np.array([[1.0, 2.0], [3.0, 1.0], [0.0, 4.0], [2.0, 2.0]], dtype=np.float32)
    y = np.array([0, 1, 0, 1])
    for gram in (True, False):
        parts = [
            ClassStats.from_features(x[:2], y[:2], 3, gram=gram),
            ClassStats.from_features(x[2:], y[2:], 3, gram=gram),
            ClassStats.empty(3, 7, gram=gram, dtype=np.float32),
        ]
        for result in _world(parts):
            assert result.dtype == np.float32 and result.unit_scale.dtype == np.float32
            assert (result.gram is None) == (not gram)
            assert [int(v) for v in result.counts] == [2, 2, 0]
            if gram:
                dev = x.astype(np.float64) - _means(x.astype(np.float64), y, 2)[y]
                np.testing.assert_allclose(result.within_scatter(), dev.T @ dev, rtol=1e-6)


def test_reduce_class_stats_empty_rank_stays_on_its_namespace():
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as torch_xp

    x = torch.tensor([[1.0, 2.0], [3.0, 1.0], [0.0, 4.0]], dtype=torch.float64)
    y = torch.tensor([0, 1, 0])
    parts = [
        ClassStats.from_features(x, y, 2),
        ClassStats.empty(2, 5, xp=torch_xp, dtype=torch.float64),
    ]
    results = _world(parts)
    assert all(isinstance(r.shift, torch.Tensor) for r in results)
    assert isinstance(results[1].gram, torch.Tensor) and results[1].gram.shape == (2, 2)


# ----------------------------------------------------------------------------- ncc_agreement


def test_ncc_agreement_checks_and_names_each_argument():
    torch = pytest.importorskip("torch")
    from ncgeom.metrics import ncc_agreement

    x, w, means = np.ones((4, 3)), np.ones((2, 3)), np.eye(2, 3)
    for args, what in [
        ((torch.ones(4, 3), w, means), "`features` and `classifier`"),
        ((x, torch.ones(2, 3), means), "`features` and `classifier`"),
        ((x, w, torch.tensor(means)), "`features` and `means`"),
        ((x, w, means, torch.ones(2)), "`features` and `bias`"),
    ]:
        with pytest.raises(TypeError, match=f"^{what} must come from the same array library"):
            ncc_agreement(*args)
    for args, message in [
        ((x, np.ones(3), means), "`classifier` must have shape (num_classes, 3); got (3,)"),
        ((x, np.ones((2, 4)), means), "`classifier` must have shape (num_classes, 3); got (2, 4)"),
        ((x, w, np.ones((2, 2))), "`means` must have shape (num_classes, 3); got (2, 2)"),
    ]:
        with pytest.raises(ValueError) as err:
            ncc_agreement(*args)
        assert str(err.value) == message
    with pytest.raises(TypeError, match=r"^`classifier` must have a real floating dtype"):
        ncc_agreement(x, np.ones((2, 3), dtype=np.int64), means)
    with pytest.raises(TypeError, match=r"^`means` must have a real floating dtype"):
        ncc_agreement(x, w, np.ones((2, 3), dtype=np.int64))


@pytest.mark.parametrize("wide", ["features", "classifier", "means"])
def test_ncc_agreement_works_in_the_widest_dtype(wide):
    # The working dtype taken from two of the three inputs: a float64 input
    # whose last digits decide a row was rounded to float32. Each case has one
    # row where the float64 answer disagrees with the nearest centre and the
    # float32-rounded inputs tie (and then agree).
    from ncgeom.metrics import ncc_agreement

    x = np.array([[1.0, 1.0]])
    w = np.array([[1.0, 0.0], [0.0, 0.0]])
    means = np.array([[1.0, 1.0], [5.0, 5.0]])
    if wide == "features":
        x = np.array([[1.0 + 1e-12, 0.0]])
        means = np.array([[0.0, 0.0], [2.0, 0.0]])
    elif wide == "classifier":
        w = np.array([[1.0, 0.0], [1.0, 1e-9]])
    else:
        x = np.array([[1.0, 0.0]])
        means = np.array([[0.0, 0.0], [2.0 - 1e-9, 0.0]])
    args = {"features": x, "classifier": w, "means": means}
    args = {k: v if k == wide else v.astype(np.float32) for k, v in args.items()}
    got = ncc_agreement(args["features"], args["classifier"], args["means"])
    assert int(got.matches) == 0 and int(got.total) == 1


def test_ncc_agreement_names_the_row_counts_that_differ():
    from ncgeom.metrics import ncc_agreement

    with pytest.raises(ValueError) as err:
        ncc_agreement(np.ones((4, 2)), np.ones((2, 2)), np.ones((3, 2)))
    assert str(err.value) == ("`classifier` and `means` must have one row per class; got 2 and 3")


def test_merge_stats_of_nothing_is_explained():
    from ncgeom import merge_stats

    with pytest.raises(ValueError) as err:
        merge_stats()
    assert str(err.value) == "`merge_stats` needs at least one ClassStats; got none"


def test_comparison_counts_error_shows_the_counts_of_a_tensor():
    # The counts of a non-positive class, read back from a framework tensor for
    # the message, came back as None.
    torch = pytest.importorskip("torch")
    from ncgeom.theory.comparison import norm_comparison

    with pytest.raises(ValueError, match=r"`counts` must be positive; got \[1, 0, 2\]"):
        norm_comparison(
            torch.ones(3, 2, dtype=torch.float64),
            torch.ones(3, dtype=torch.float64),
            counts=torch.tensor([1, 0, 2]),
            lambda_ratio=1.0,
        )


def test_ncc_agreement_explains_non_finite_inputs_and_needs_one_mean():
    from ncgeom.metrics import ncc_agreement

    x, w = np.array([[0.0, 1.0], [3.0, 0.0]]), np.eye(2)
    means = np.array([[0.0, 1.0], [np.nan, np.nan]])
    # One class with a mean is enough: every row's nearest centre is class 0.
    got = ncc_agreement(x, w, means)
    assert int(got.matches) == 1 and int(got.total) == 2
    finite = "must be finite; got NaN or Inf entries"
    partial = np.array([[0.0, np.nan], [1.0, 1.0]])
    cases = [
        ((x, w, np.full((2, 2), np.nan)), "`means` must have at least one row without NaN; "
                                          "got none"),
        ((x, w, partial), "`means` must be finite, or NaN in whole rows (classes without "
                          "samples); got NaN or Inf entries"),
        ((np.array([[np.inf, 0.0]]), w, np.eye(2)), f"`features` {finite}"),
        ((x, np.array([[np.nan, 0.0], [0.0, 1.0]]), np.eye(2)), f"`classifier` {finite}"),
        ((x, w, np.eye(2), np.array([0.0, np.nan])), f"`bias` {finite}"),
    ]  # fmt: skip
    for args, message in cases:
        with pytest.raises(ValueError) as err:
            ncc_agreement(*args)
        assert str(err.value) == message


def test_class_stats_repr():
    # No test of the mutation run's selection reached __repr__.
    x, y = np.eye(2), np.array([0, 1])
    assert repr(ClassStats.from_features(x, y, 2)) == (
        "ClassStats(num_classes=2, dim=2, dtype=float64, device=cpu, with gram)"
    )
    assert repr(ClassStats.from_features(x.astype(np.float32), y, 2, gram=False)) == (
        "ClassStats(num_classes=2, dim=2, dtype=float32, device=cpu, without gram)"
    )


def test_report_with_theory_keeps_or_replaces_the_context():
    # No test of the mutation run's selection reached NCReport.with_theory.
    counts = [12, 9, 6]
    opt = ufm_relu_optimum(counts, 1e-2, 1e-2)
    other = ufm_relu_optimum(counts, 2e-2, 1e-2)
    y = np.repeat(np.arange(3), counts)
    x = np.asarray(opt.means())[y]
    report = nc_report((x, y), np.asarray(opt.classifier()))
    assert report.theory is None and report.objective is None
    first = report.with_theory(opt, objective=1.5)
    assert first.theory == nc_report((x, y), theory=opt).theory
    assert first.objective == 1.5 and first.theory is not None
    assert first.with_theory(None).theory == first.theory  # None keeps the context
    assert first.with_theory(None).objective == 1.5  # and the objective
    assert first.with_theory(None, objective=2).objective == 2.0
    replaced = first.with_theory(other)
    assert replaced.theory != first.theory and replaced.objective == 1.5
    assert first.to_dict()["objective"] == 1.5


def test_update_checks_the_labels_namespace_and_honours_check_finite():
    torch = pytest.importorskip("torch")
    stats = ClassStats.empty(2, 2)
    with pytest.raises(TypeError, match=r"^`stats` and `labels` must come from the same"):
        stats.update(np.ones((2, 2)), torch.tensor([0, 1]))
    # check_finite=False reaches the engine: NaN features are not refused.
    x = np.array([[np.nan, 1.0], [1.0, 1.0]])
    assert [int(v) for v in stats.update(x, np.array([0, 1]), check_finite=False).counts] == [1, 1]
    with pytest.raises(ValueError):
        stats.update(x, np.array([0, 1]))


def test_within_scatter_of_features_stored_at_a_scale():
    # Class means near 1e6 are stored divided by a power of two; the scatter
    # must come back in the features' units (scale squared).
    rng = np.random.default_rng(6)
    y = np.repeat(np.arange(3), [10, 7, 9])
    x = 1e6 * rng.normal(size=(3, 4))[y] + rng.normal(size=(len(y), 4))
    stats = ClassStats.from_features(x, y, 3)
    assert float(stats.unit_scale) != 1.0
    dev = x - _means(x, y, 3)[y]
    np.testing.assert_allclose(stats.within_scatter(), dev.T @ dev, rtol=1e-6)
    np.testing.assert_allclose(stats.within_covariance(), dev.T @ dev / len(y), rtol=1e-6)


def test_normalised_distances_of_zero_tiny_and_one_entry_matrices():
    # The guards of the nf distance: a zero classifier or zero scaled means
    # give NaN, a classifier of one entry (norm exactly 1 after scaling) and a
    # tiny one (whose squares underflow unless rescaled) give the true value.
    from ncgeom.metrics import scaled_alignment_error, self_duality_error

    rng = np.random.default_rng(7)
    y = np.repeat(np.arange(3), [5, 6, 7])
    x = 3 * rng.normal(size=(3, 2))[y] + rng.normal(size=(len(y), 2))
    stats = ClassStats.from_features(x, y, 3)
    centred = _means(x, y, 3) - x.mean(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN without a division warning
        assert np.isnan(float(self_duality_error(np.zeros((3, 2)), stats)))
    one = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    assert float(self_duality_error(one, stats)) == pytest.approx(_nf_distance(one, centred))
    w = rng.normal(size=(3, 2))
    want = _nf_distance(w, centred)
    assert float(self_duality_error(1e-200 * w, stats)) == pytest.approx(want, rel=1e-12)
    # sqrt(n_k) mu_k equal for every class: S = 0 although no mean is zero.
    counts = [1, 4]
    mu = np.array([[2.0, 0.0], [1.0, 0.0]])
    equal = ClassStats.from_features(np.repeat(mu, counts, axis=0), np.repeat([0, 1], counts), 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(float(scaled_alignment_error(np.eye(2), equal)))


def test_ncc_agreement_of_tiny_and_zero_inputs():
    # The scales that keep squares in range: tiny features, means and
    # classifier (squares underflow unless rescaled) give the answer of unit
    # ones; an all-zero classifier (argmax 0) or all-zero means (nearest 0)
    # give no division warning.
    from ncgeom.metrics import ncc_agreement

    x, w, b, means = _biased_problem_small()
    want = int(ncc_agreement(x, w, means, b).matches)
    # Logits scale with the features and the bias together, or with the
    # classifier and the bias together: the argmax stays.
    tiny_x = ncc_agreement(1e-200 * x, w, 1e-200 * means, 1e-200 * b)
    tiny_w = ncc_agreement(x, 1e-200 * w, means, 1e-200 * b)
    assert int(tiny_x.matches) == int(tiny_w.matches) == want
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zero_w = ncc_agreement(x, np.zeros_like(w), means)
        nearest = np.argmin(((x[:, None, :] - means[None]) ** 2).sum(axis=2), axis=1)
        assert int(zero_w.matches) == int(np.sum(nearest == 0))
        zero_means = ncc_agreement(x, w, np.zeros_like(means))
        assert int(zero_means.matches) == int(np.sum(np.argmax(x @ w.T, axis=1) == 0))


def _biased_problem_small():
    rng = np.random.default_rng(8)
    means = 3.0 * rng.normal(size=(3, 4))
    y = np.arange(60) % 3
    x = means[y] + 2.0 * rng.normal(size=(60, 4))
    w = means - means.mean(axis=0)
    return x, w, np.array([1.0, -2.0, 0.5]), _means(x, y, 3)


def test_reduce_class_stats_empty_rank_on_a_second_device():
    # A rank that saw nothing builds its placeholder on its own device.
    xs = pytest.importorskip("array_api_strict")
    device = xs.Device("device1")
    x = xs.asarray([[1.0, 2.0], [3.0, 1.0], [0.0, 4.0]], dtype=xs.float64, device=device)
    y = xs.asarray([0, 1, 0], device=device)
    parts = [
        ClassStats.from_features(x, y, 2),
        ClassStats.empty(2, 5, xp=xs, device=device),
    ]
    results = _world(parts)
    assert not any(isinstance(r, Exception) for r in results)
    assert all(r.shift.device == device for r in results)


def test_report_with_theory_uses_the_report_centre():
    from ncgeom.measure.report import theory_context

    counts = [12, 9, 6]
    opt = ufm_relu_optimum(counts, 1e-2, 1e-2)
    y = np.repeat(np.arange(3), counts)
    report = nc_report((np.asarray(opt.means())[y], y), global_mean="classes").with_theory(opt)
    assert dict(report.theory) == dict(theory_context(opt, global_mean="classes"))
    assert dict(report.theory) != dict(theory_context(opt, global_mean="samples"))


# ----------------------------------------------------------------------------- the engine
def _stats_about(x, y, k, shift):
    """ClassStats of (x, y) about hand-chosen shifts, summed here in float64."""
    dev = x - shift[y]
    sums = np.stack([dev[y == c].sum(axis=0) for c in range(k)])
    sqnorms = np.array([np.sum(dev[y == c] ** 2) for c in range(k)])
    counts = np.bincount(y, minlength=k).astype(np.int64)
    return ClassStats(counts, shift, sums, sqnorms, dev.T @ dev, np.ones(()))


def _population_variances(x, y, k):
    """Mean squared distance of each class's samples to their mean (NaN if none)."""
    out = np.full(k, np.nan)
    for c in np.unique(y):
        out[c] = np.mean(np.sum((x[y == c] - x[y == c].mean(axis=0)) ** 2, axis=1))
    return out


@pytest.mark.filterwarnings("error")  # an empty class divides by nothing, silently
def test_cancellation_and_shift_error_of_chosen_shifts():
    # The two bounds that decide whether the engine sums the means again:
    # |shift - mean|^2 / variance (worst class) and |shift - mean| over the RMS
    # spread of the shifts about their count-weighted centre.
    from ncgeom.measure import stats as engine

    rng = np.random.default_rng(11)
    k, d = 4, 3
    y = np.repeat(np.arange(k), [5, 0, 8, 1])  # class 1 empty, class 3 one sample
    x = 4.0 * rng.normal(size=(k, d))[y] + rng.normal(size=(len(y), d))
    x[y == 3] = [1.0, 2.0, 3.0]
    present = [0, 2, 3]
    means = np.zeros((k, d))
    means[present] = [x[y == c].mean(axis=0) for c in present]
    offsets = np.array([[0.3, 0.0, 0.1], [0.0, 0.0, 0.0], [-0.9, 0.4, 0.2], [1.5, 0.0, 0.0]])
    shift = means + offsets
    shift[1] = [50.0, -70.0, 20.0]  # an empty class's shift counts for nothing
    stats = _stats_about(x, y, k, shift)
    n = np.bincount(y, minlength=k)
    centre = n @ shift / n.sum()
    rms = np.sqrt(np.mean([np.sum((shift[c] - centre) ** 2) for c in present]))
    want = max(np.linalg.norm(offsets[c]) for c in present) / rms
    assert engine._shift_error(stats, np) == pytest.approx(want, rel=1e-12)
    # Scale-free: shifts whose spread is below 1 give the same ratio.
    small = _stats_about(x / 64, y, k, shift / 64)
    assert engine._shift_error(small, np) == pytest.approx(want, rel=1e-12)
    # The one-sample class has no spread: its offset is divided by the
    # smallest normal number instead (a ratio of 1e307, far past the bound).
    assert (
        engine._first_try_errors(stats, np, rounded=False)[0]
        == 2.25 / np.finfo(np.float64).smallest_normal
    )
    # Shifts that coincide have no spread to compare with.
    same = _stats_about(x, y, k, np.zeros((k, d)))
    assert engine._shift_error(same, np) == 0.0

    y = np.repeat(np.arange(k), [5, 0, 8, 3])
    x = 4.0 * rng.normal(size=(k, d))[y] + rng.normal(size=(len(y), d))
    means = np.zeros((k, d))
    means[present] = [x[y == c].mean(axis=0) for c in present]
    shift = means + offsets
    shift[1] = [50.0, -70.0, 20.0]
    v = _population_variances(x, y, k)
    ratios = [np.sum(offsets[c] ** 2) / v[c] for c in present]
    stats = _stats_about(x, y, k, shift)
    assert engine._first_try_errors(stats, np, rounded=False)[0] == pytest.approx(
        max(ratios), rel=1e-12
    )
    # A single sample exactly at its shift: no spread and no offset, ratio 0.
    y1 = np.array([0, 0, 1])
    x1 = np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 5.0]])
    shift1 = np.array([[2.5, 2.0], [5.0, 5.0]])
    assert engine._first_try_errors(_stats_about(x1, y1, 2, shift1), np, rounded=False)[
        0
    ] == pytest.approx(0.25)


def test_rows_per_chunk_and_row_chunks():
    from ncgeom.measure.stats import CHUNK_BYTES, HOST_CHUNK_BYTES, row_chunks, rows_per_chunk

    assert rows_per_chunk(10**7, 16, np.float64, np) == HOST_CHUNK_BYTES // (8 * 16)
    assert rows_per_chunk(10**7, 16, np.float32, np) == HOST_CHUNK_BYTES // (4 * 16)
    assert rows_per_chunk(10**7, 16, np.float64, np, gram=True) == CHUNK_BYTES // (8 * 16)
    assert rows_per_chunk(100, 16, np.float64, np) == 100
    assert rows_per_chunk(0, 16, np.float64, np) == 1
    assert rows_per_chunk(10**9, 0, np.float64, np) == HOST_CHUNK_BYTES // 8
    assert rows_per_chunk(10**9, 10**9, np.float64, np) == 1
    assert rows_per_chunk(10**7, 16, np.float64, np, chunk_size=7) == 7
    with pytest.raises(ValueError, match=r"^`chunk_size` must be a positive integer; got 0$"):
        rows_per_chunk(5, 2, np.float64, np, chunk_size=0)
    assert row_chunks(10, 3) == [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 10)]
    assert row_chunks(9, 3) == [slice(0, 3), slice(3, 6), slice(6, 9)]
    assert row_chunks(0, 3) == []


@pytest.mark.parametrize(
    ("largest", "scale"),
    [
        (2.0**16, 1.0),
        (2.0**17, 2.0**17),
        (2.0**-16, 1.0),
        (2.0**-17, 2.0**-17),
        (1.4 * 2.0**20, 2.0**20),  # log2 rounds to the nearest integer
        (1.6 * 2.0**20, 2.0**21),
        (0.0, 1.0),  # dead features
    ],
)
def test_the_scale_is_the_nearest_power_of_two_beyond_two_to_the_sixteen(largest, scale):
    x = np.array([[largest, 0.0], [largest, 0.5 * largest], [0.25 * largest, 0.0]])
    y = np.array([0, 0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = ClassStats.from_features(x, y, 2)
    assert float(stats.unit_scale) == scale
    np.testing.assert_array_equal(stats.means, _means(x, y, 2))


def _pooled_reference(x, y, k):
    """Counts, class means (0 for empty classes), squared deviations and Gram, in float64."""
    counts = np.bincount(y, minlength=k)
    means = np.zeros((k, x.shape[1]))
    for c in range(k):
        if counts[c]:
            means[c] = x[y == c].mean(axis=0)
    dev = x - means[y]
    sq = np.array([np.sum(dev[y == c] ** 2) for c in range(k)])
    return counts, means, sq, dev.T @ dev


def test_merge_recentres_every_class_on_its_pooled_mean():
    # The merged shifts are the pooled class means (so the sums are ~0), for a
    # class on both sides, on one side only, and on neither (shift stays finite).
    rng = np.random.default_rng(12)
    k, d = 4, 3
    ya = np.array([0, 0, 0, 1, 1])
    yb = np.array([0, 1, 1, 1, 2, 2])  # class 2 only here; class 3 nowhere
    centres = 5.0 * rng.normal(size=(k, d))
    xa = centres[ya] + rng.normal(size=(len(ya), d))
    xb = centres[yb] + 3.0 + rng.normal(size=(len(yb), d))
    a, b = ClassStats.from_features(xa, ya, k), ClassStats.from_features(xb, yb, k)
    x, y = np.concatenate([xa, xb]), np.concatenate([ya, yb])
    counts, means, sq, gram = _pooled_reference(x, y, k)
    # Either side may hold large sums (shifts far from its means).
    far_a, far_b = a.rebase(np.zeros((k, d))), b.rebase(np.full((k, d), 9.0))
    for merged in (a.merge(b), b.merge(a), far_a.merge(far_b), far_b.merge(far_a)):
        np.testing.assert_array_equal(merged.counts, counts)
        np.testing.assert_allclose(merged.shift[:3], means[:3], rtol=1e-13, atol=1e-13)
        assert np.all(np.isfinite(merged.shift))
        np.testing.assert_allclose(merged.sums, 0.0, atol=1e-12)
        np.testing.assert_allclose(merged.sqnorms, sq, rtol=1e-12)
        np.testing.assert_allclose(merged.gram, gram, rtol=1e-12, atol=1e-12)
        assert float(merged.unit_scale) == 1.0


def test_merge_keeps_the_scale_of_the_side_with_samples():
    # Float32 features near 2**-70 (squares below float32's normal range) are
    # stored at their own scale; merging into empty statistics (scale 1) must
    # keep that scale, and of two scales the larger.
    rng = np.random.default_rng(13)
    y = np.repeat(np.arange(3), [6, 5, 7])
    x = (rng.normal(size=(3, 4))[y] + 0.1 * rng.normal(size=(len(y), 4))) * 2.0**-70
    tiny = ClassStats.from_features(x.astype(np.float32), y, 3)
    own = float(tiny.unit_scale)
    assert own <= 2.0**-60
    empty = ClassStats.empty(3, 4, dtype=np.float32)
    want = _population_variances(x.astype(np.float32).astype(np.float64), y, 3)
    for merged in (empty.merge(tiny), tiny.merge(empty)):
        assert float(merged.unit_scale) == own
        got = merged.scaled_variances().astype(np.float64) * own * own
        np.testing.assert_allclose(got, want, rtol=1e-4)
    big = ClassStats.from_features(x * 2.0**100, y, 3)
    small = ClassStats.from_features(x * 2.0**90, y, 3)
    larger = float(big.unit_scale)
    assert larger == 2.0**10 * float(small.unit_scale)
    assert float(big.merge(small).unit_scale) == float(small.merge(big).unit_scale) == larger
    assert float(empty.merge(empty).unit_scale) == 1.0


def test_class_moments_visits_every_chunk_and_borrows_close_running_means():
    # The engine on its own: counts and shifts handed to the visitor, the visit
    # summed over chunks, and the pilot's shifts kept only where they cover the
    # batch and lie close enough to its means.
    from ncgeom.measure.stats import class_moments

    rng = np.random.default_rng(14)
    k, d = 3, 2
    y = np.arange(23) % k
    x = 6.0 * rng.normal(size=(k, d))[y] + rng.normal(size=(len(y), d))
    counts, means, sq, gram = _pooled_reference(x, y, k)
    seen = {}

    def visitor(n, shifts):
        seen.update(counts=n, shifts=shifts)

        def visit(xc, dev, yc, dev_sq):
            np.testing.assert_allclose(dev_sq, np.sum(dev * dev, axis=1), rtol=1e-15)
            return xc.sum(axis=0), dev.T @ dev, np.bincount(yc, minlength=k)

        return visit

    stats, extra = class_moments(
        x, y, k, dtype=np.float64, gram=True, chunk_size=5, visitor=visitor
    )
    np.testing.assert_array_equal(seen["counts"], counts)
    np.testing.assert_allclose(seen["shifts"], means, rtol=1e-13)
    assert stats.shift is seen["shifts"]
    np.testing.assert_allclose(extra[0], x.sum(axis=0), rtol=1e-13)
    np.testing.assert_allclose(extra[1], gram, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(extra[2], counts)
    np.testing.assert_allclose(stats.scaled_means, means, rtol=1e-13)
    np.testing.assert_allclose(stats.sqnorms, sq, rtol=1e-12)
    np.testing.assert_allclose(stats.gram, gram, rtol=1e-12, atol=1e-12)

    def pilot_at(shift, seen_counts=(5, 5, 5)):
        return ClassStats(
            np.array(seen_counts, dtype=np.int64),
            shift,
            np.zeros((k, d)),
            np.zeros(k),
            np.zeros((d, d)),
            np.ones(()),
        )

    near = pilot_at(means + 0.01)  # |offset|^2 / variance far below 1
    for tolerance in (None, 1.0):
        got, _ = class_moments(
            x, y, k, dtype=np.float64, gram=True, pilot=near, shift_tolerance=tolerance
        )
        assert got.shift is near.shift
        np.testing.assert_allclose(got.scaled_means, means, rtol=1e-13)
        np.testing.assert_allclose(
            got.sqnorms, [np.sum((x[y == c] - near.shift[c]) ** 2) for c in range(k)], rtol=1e-12
        )
    # Too far for a tight tolerance, too far for the cancellation bound, or a
    # class the pilot never saw: the batch's own means.
    for pilot, tolerance in (
        (near, 1e-6),
        (pilot_at(means + 5.0), None),
        (pilot_at(means + 0.01, (5, 0, 5)), None),
    ):
        got, _ = class_moments(
            x, y, k, dtype=np.float64, gram=True, pilot=pilot, shift_tolerance=tolerance
        )
        assert got.shift is not pilot.shift
        np.testing.assert_allclose(got.shift, means, rtol=1e-13)
        np.testing.assert_allclose(got.sqnorms, sq, rtol=1e-12)


def test_update_adds_a_close_batch_about_the_running_means_and_merges_a_far_one():
    rng = np.random.default_rng(15)
    k, d = 3, 2
    centres = 6.0 * rng.normal(size=(k, d))
    y1, y2 = np.arange(12) % k, np.array([0, 1, 2, 0, 1, 2])
    x1 = centres[y1] + rng.normal(size=(len(y1), d))
    stats = ClassStats.from_features(x1, y1, k)
    # Each class of the batch centred on its running mean, spread about it.
    x2 = stats.means[y2] + np.array([[1.0, 0.5]] * 3 + [[-1.0, -0.5]] * 3)
    close = stats.update(x2, y2)
    assert close.shift is stats.shift  # one pass about the running means, then added
    far = stats.update(x2 + 40.0, y2)  # merged: re-centred on the new means
    for got, x in ((close, np.concatenate([x1, x2])), (far, np.concatenate([x1, x2 + 40.0]))):
        counts, means, _, gram = _pooled_reference(x, np.concatenate([y1, y2]), k)
        np.testing.assert_array_equal(got.counts, counts)
        np.testing.assert_allclose(got.means, means, rtol=1e-12)
        np.testing.assert_allclose(got.within_scatter(), gram, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(far.shift, far.means, rtol=1e-13)


# ----------------------------------------------------------------------------- the report
def test_report_infers_k_up_to_twice_the_rows_plus_64_or_from_the_classifier():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty classes
        assert nc_report((x, np.array([0, 1, 69]))).num_classes == 70  # 2 * 3 + 64
        assert nc_report((x, np.array([0, 1, 1])), np.ones((4, 2))).num_classes == 4
    with pytest.raises(ValueError) as err:
        nc_report((np.zeros((0, 2)), np.zeros(0, dtype=np.int64)))
    assert str(err.value) == (
        "`num_classes` must be given when there are no samples to infer it from"
    )
    with pytest.raises(ValueError) as err:
        nc_report((x, np.array([0, 1, 70])))
    assert str(err.value) == (
        "`num_classes` must be given: the largest label is 70, so K would be 71 for only "
        "3 samples (at least 68 classes empty, and K x dim statistics to allocate)"
    )


def test_report_refuses_a_source_of_another_kind_by_name():
    x, y = np.eye(3), np.arange(3)
    for source in ((x, y, y), [x], x):
        with pytest.raises(TypeError) as err:
            nc_report(source)
        assert str(err.value) == (
            "`source` must be a ClassStats or a (features, labels) pair; "
            f"got {type(source).__name__}"
        )


def test_report_names_degenerate_metrics_in_one_warning_at_the_caller():
    from ncgeom.metrics import DEGENERATE_REASONS

    # Both class means are (2, 2) and the classes have equal counts.
    x = np.array([[1.0, 2.0], [3.0, 2.0], [2.0, 1.0], [2.0, 3.0]])
    y = np.array([0, 0, 1, 1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep = nc_report((x, y), np.eye(2))
    between, scaled = DEGENERATE_REASONS["between"], DEGENERATE_REASONS["scaled"]
    assert [str(w.message) for w in caught] == [
        f"degenerate class geometry, {between}: nc1, nc1_trace_ratio, cdnv, etf_error, "
        "equinorm, log_equinorm, equiangularity, equiangularity_std, interference_mean, "
        "interference_min, interference_max, log_energy, log_energy_variance, "
        "riesz_log_energy, riesz_log_variance, nearest_etf_distance, self_duality_error, "
        f"uniform_duality, distance_norms undefined; {scaled}: scaled_alignment_error "
        "undefined (NaN in the report)"
    ]
    assert caught[0].filename == __file__
    why = dict(rep.unavailable)
    assert why["cdnv"] == why["nc1"] == between and why["scaled_alignment_error"] == scaled
    assert np.isnan(rep.cdnv) and np.isfinite(rep.orthogonality_error)


def test_class_moments_keeps_shifts_exactly_at_both_bounds():
    # Pilot shifts one unit from each class mean, with unit variance: the
    # cancellation ratio is exactly 1 (the bound) and the shift error exactly
    # 1/4 (offset 1 over an RMS spread of 4): both accepted, the shifts kept.
    from ncgeom.measure.stats import class_moments

    x = np.array([[0.0], [2.0], [10.0], [12.0]])
    y = np.array([0, 0, 1, 1])
    pilot = ClassStats(
        np.array([3, 3], dtype=np.int64),
        np.array([[2.0], [10.0]]),
        np.zeros((2, 1)),
        np.zeros(2),
        np.zeros((1, 1)),
        np.ones(()),
    )
    got, _ = class_moments(x, y, 2, dtype=np.float64, gram=True, pilot=pilot, shift_tolerance=0.25)
    assert got.shift is pilot.shift
    np.testing.assert_array_equal(got.scaled_means, [[1.0], [11.0]])
    np.testing.assert_array_equal(got.class_variances, [1.0, 1.0])
    # A public function: it refuses NaN features unless told not to look.
    bad = np.array([[np.nan], [1.0], [2.0], [3.0]])
    with pytest.raises(ValueError, match="must be finite"):
        class_moments(bad, y, 2, dtype=np.float64, gram=False)


def test_update_checks_its_chunk_size():
    stats = ClassStats.empty(2, 2)
    with pytest.raises(ValueError) as err:
        stats.update(np.ones((3, 2)), np.array([0, 1, 1]), chunk_size=0)
    assert str(err.value) == "`chunk_size` must be a positive integer; got 0"


def test_merge_explains_a_missing_gram_and_promotes_either_side():
    with_gram = ClassStats.from_features(np.eye(2), np.array([0, 1]), 2)
    without = ClassStats.from_features(np.eye(2), np.array([0, 1]), 2, gram=False)
    for a, b, which in ((without, with_gram, "`self`"), (with_gram, without, "`other`")):
        with pytest.raises(ValueError) as err:
            a.merge(b)
        assert str(err.value) == (
            f"cannot merge statistics with and without a Gram: {which} was built with gram=False"
        )
    single = ClassStats.from_features(np.eye(2, dtype=np.float32), np.array([0, 1]), 2)
    assert with_gram.merge(single).dtype == single.merge(with_gram).dtype == np.float64


def test_float32_statistics_and_nc1_stay_in_float32():
    from ncgeom.metrics import nc1

    rng = np.random.default_rng(16)
    y = np.arange(30) % 3
    x = (3.0 * rng.normal(size=(3, 4))[y] + rng.normal(size=(30, 4))).astype(np.float32)
    stats = ClassStats.from_features(x, y, 3)
    for array in (stats.shift, stats.sums, stats.sqnorms, stats.gram):
        assert array.dtype == np.float32
    assert nc1(stats).dtype == np.float32
    with pytest.raises(ValueError) as err:
        nc1(ClassStats.from_features(x, y, 3, gram=False))
    assert str(err.value) == (
        "nc1 needs the within-class Gram: build the statistics with gram=True, "
        "or pass in-memory (features, labels) to nc_report"
    )


def test_float32_class_means_that_overflow_are_explained():
    x = np.array([[3e38, 0.0], [3e38, 0.0], [1.0, 1.0]], dtype=np.float32)
    with pytest.raises(ValueError) as err:
        ClassStats.from_features(x, np.array([0, 0, 1]), 2)
    assert str(err.value) == (
        "`features` are finite but their class means overflow float32: the "
        "features cannot be represented at this size; pass them in float64"
    )


@pytest.mark.parametrize("block_rows", [1, 2, 3, None])
def test_cdnv_of_every_block_size_matches_its_definition(block_rows):
    from ncgeom.metrics import cdnv

    rng = np.random.default_rng(17)
    k = 5
    y = np.arange(40) % k
    x = 2.0 * rng.normal(size=(k, 3))[y] + rng.normal(size=(40, 3))
    mu = _means(x, y, k)
    v = _population_variances(x, y, k)
    want = np.mean(
        [
            (v[a] + v[b]) / (2 * np.sum((mu[a] - mu[b]) ** 2))
            for a in range(k)
            for b in range(a + 1, k)
        ]
    )
    got = cdnv(ClassStats.from_features(x, y, k), block_rows=block_rows)
    assert float(got) == pytest.approx(want, rel=1e-12)


def test_report_options_and_reasons_are_named():
    rng = np.random.default_rng(18)
    k = 3
    y = np.repeat(np.arange(k), [5, 10, 15])  # unequal: the two centres differ
    x = 4.0 * rng.normal(size=(k, 4))[y] + rng.normal(size=(30, 4))
    with pytest.raises(ValueError, match=r"^`global_mean` must be one of"):
        nc_report((x, y), global_mean="median")
    with pytest.raises(ValueError) as err:
        nc_report((x, y), chunk_size=0)
    assert str(err.value) == "`chunk_size` must be a positive integer; got 0"
    why = dict(nc_report((x, y)).unavailable)
    for name in ("self_duality_error", "scaled_alignment_error", "ncc_agreement"):
        assert why[name] == "no classifier given"
    for name in ("gof_error", "classifier_gram_error", "logit_structure_error"):
        assert why[name] == "no theory given"
    # Statistics without the Gram, centred at the mean of the class means.
    stats = ClassStats.from_features(x, y, k, gram=False)
    rep = nc_report(stats, global_mean="classes")
    assert dict(rep.unavailable)["nc1"] == "statistics without Gram"
    mu = _means(x, y, k)
    centred = mu - mu.mean(axis=0)
    cos = centred @ centred.T / np.outer(*[np.linalg.norm(centred, axis=1)] * 2)
    want = np.mean([abs(cos[a, b] + 1 / (k - 1)) for a in range(k) for b in range(a + 1, k)])
    assert rep.equiangularity == pytest.approx(want, rel=1e-10)
    # In memory, NC1 about the same centre: tr(Sigma_W Sigma_B^+) / K.
    dev = x - mu[y]
    sigma_b = centred.T @ centred / k
    want = np.trace(dev.T @ dev / len(y) @ np.linalg.pinv(sigma_b)) / k
    assert nc_report((x, y), global_mean="classes").nc1 == pytest.approx(want, rel=1e-9)


def test_report_of_one_column_float32_features_names_its_dtype_and_backend():
    rng = np.random.default_rng(19)
    y = np.repeat(np.arange(3), [4, 6, 8])
    x = (np.array([[-3.0], [0.5], [4.0]])[y] + 0.3 * rng.normal(size=(18, 1))).astype(np.float32)
    rep = nc_report((x, y), np.array([[-1.0], [0.0], [1.0]], dtype=np.float32), np.zeros(3))
    assert (rep.dtype, rep.backend, rep.dim) == ("float32", "numpy", 1)
    within = np.sum((x - _means(x, y, 3)[y]) ** 2, dtype=np.float64) / len(y)
    assert rep.within_variance == pytest.approx(within, rel=1e-5)
    torch = pytest.importorskip("torch")
    assert nc_report((torch.from_numpy(x), torch.from_numpy(y))).dtype == "float32"


def test_report_shape_messages_for_in_memory_features():
    x, y = np.ones((4, 3)), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError) as err:
        nc_report((x, y), np.ones((2, 4)))
    assert str(err.value) == (
        "`classifier` must have shape (num_classes, 3) (one row per class, as many "
        "columns as `features`); got (2, 4)"
    )
    with pytest.raises(ValueError) as err:
        nc_report((np.zeros((0, 3)), np.zeros(0, dtype=np.int64)), num_classes=2)
    assert str(err.value) == "`features` must hold at least one sample; got 0 rows"


def test_report_ncc_agreement_with_small_and_zero_classifiers_and_a_bias():
    rng = np.random.default_rng(20)
    k = 3
    y = np.arange(60) % k
    x = 2.0 * rng.normal(size=(k, 4))[y] + 1.5 * rng.normal(size=(60, 4))
    mu = _means(x, y, k)
    nearest = np.argmin(((x[:, None, :] - mu[None]) ** 2).sum(axis=2), axis=1)
    w, b = 0.01 * rng.normal(size=(k, 4)), np.array([0.004, -0.003, 0.001])
    want = np.mean(np.argmax(x @ w.T + b, axis=1) == nearest)
    assert 0.2 < want < 0.9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nc_report((x, y), w, b).ncc_agreement == pytest.approx(want)
    # A zero classifier: the bias alone decides (argmax(b) = class 0); the
    # classifier's own geometry is undefined, with a warning.
    with pytest.warns(UserWarning, match="the classifier is zero"):
        zero = nc_report((x, y), np.zeros((k, 4)), b).ncc_agreement
    assert zero == pytest.approx(np.mean(nearest == 0))


def test_report_names_inputs_from_another_array_library_and_non_finite_features():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(21)
    x, y = rng.normal(size=(12, 3)), np.arange(12) % 3
    w, b = np.ones((3, 3)), np.zeros(3)
    cases = [
        ((torch.from_numpy(x), y), {}, "`features` and `labels`", "torch and numpy"),
        ((x, torch.from_numpy(y)), {}, "`features` and `labels`", "numpy and torch"),
        (
            (x, y),
            {"classifier": torch.from_numpy(w)},
            "`features` and `classifier`",
            "numpy and torch",
        ),
        (
            (x, y),
            {"classifier": w, "bias": torch.from_numpy(b)},
            "`features` and `bias`",
            "numpy and torch",
        ),
    ]
    for source, kwargs, names, got in cases:
        with pytest.raises(TypeError) as err:
            nc_report(source, **kwargs)
        assert str(err.value) == f"{names} must come from the same array library; got {got}"
    x[4, 1] = np.nan
    with pytest.raises(ValueError) as err:
        nc_report((x, y), check_finite=False)
    assert str(err.value) == (
        "`features` are not finite: their class means hold NaN or Inf "
        "(check_finite=False skipped the check that would have located them)"
    )
