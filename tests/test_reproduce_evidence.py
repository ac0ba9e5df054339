"""The evidence of `ncgeom reproduce`: threshold fit, alignment exponent, claims, report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")
scipy_optimize = pytest.importorskip("scipy.optimize")

from ncgeom import ufm_relu_optimum  # noqa: E402
from ncgeom_torch import reproduce_report as rr  # noqa: E402
from ncgeom_torch.reproduce_plots import write_figures  # noqa: E402

# ----------------------------------------------------------------------------- threshold fit


def penalised(b0, b1, x, y):
    """Negative Firth-penalised log-likelihood, written out independently."""
    eta = b0 + b1 * x
    p = 1 / (1 + np.exp(-eta))
    w = p * (1 - p)
    design = np.stack([np.ones_like(x), x], 1)
    info = design.T @ (w[:, None] * design)
    return -(np.sum(y * eta - np.log1p(np.exp(eta))) + 0.5 * np.log(np.linalg.det(info)))


def firth_reference(x, y):
    """Firth's penalised logistic fit by Nelder-Mead: (threshold, minimum)."""
    res = scipy_optimize.minimize(
        lambda b: penalised(b[0], b[1], x, y),
        [0.0, -1.0],
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000},
    )
    return math.exp(-res.x[0] / res.x[1]), float(res.fun)


def sampled_outcomes(threshold, seeds, slope=6.0, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    ratios = np.geomspace(0.25, 4.0, 8)
    r = np.tile(np.repeat(ratios, 5), seeds)
    p = 1 / (1 + (r / threshold) ** slope)
    survived = rng.random(r.size) < p
    return r, survived, np.repeat(np.arange(seeds), ratios.size * 5)


def test_threshold_fit_equals_an_independent_firth_fit():
    r, survived, seeds = sampled_outcomes(0.7, 2)
    fit = rr.fit_threshold(r, survived, seeds)
    want, _ = firth_reference(np.log(r), survived.astype(float))
    assert fit["fitted_over_predicted"] == pytest.approx(want, rel=1e-5)
    assert fit["method"].startswith("profile") and fit["seeds"] == 2 and fit["pairs"] == 80
    low, high = fit["ci"]
    assert low < fit["fitted_over_predicted"] < high


def test_profile_interval_is_where_the_deviance_is_below_the_chi2_quantile():
    r, survived, seeds = sampled_outcomes(1.3, 2, slope=3.0, rng_seed=4)
    x, y = np.log(r), survived.astype(float)
    fit = rr.fit_threshold(r, survived, seeds)
    _, floor = firth_reference(x, y)

    def profile(c):  # the slope minimised at a fixed log threshold c
        res = scipy_optimize.minimize_scalar(
            lambda s: penalised(math.exp(s) * c, -math.exp(s), x, y),
            bounds=(-4, 6),
            method="bounded",
        )
        return 2 * (res.fun - floor)

    low, high = (math.log(v) for v in fit["ci"])
    assert profile(low) <= 3.8415 + 0.05 and profile(high) <= 3.8415 + 0.05
    assert profile(low - 0.05) > 3.8415 and profile(high + 0.05) > 3.8415


def test_five_seeds_use_a_bootstrap_over_seeds_that_covers_the_truth(monkeypatch):
    monkeypatch.setattr(rr, "BOOTSTRAP_SAMPLES", 200)
    r, survived, seeds = sampled_outcomes(0.6, 5, rng_seed=2)
    fit = rr.fit_threshold(r, survived, seeds)
    assert fit["method"].startswith("bootstrap over seeds") and fit["seeds"] == 5
    low, high = fit["ci"]
    assert low < 0.6 < high and high / low < 2.0


def test_separated_outcomes_give_a_finite_threshold_between_the_grid_points():
    r = [0.5, 0.7, 1.0, 1.4] * 2
    fit = rr.fit_threshold(r, [1, 1, 0, 0] * 2, [0] * 4 + [1] * 4)
    assert 0.7 < fit["fitted_over_predicted"] < 1.0
    assert fit["ci"][0] < 0.75 and fit["ci"][1] > 0.95


def test_no_crossing_in_the_grid_is_a_bound_not_a_number():
    fit = rr.fit_threshold([0.5, 1.0, 2.0], [1, 1, 1], [0, 0, 0])
    assert fit["fitted_over_predicted"] is None and fit["ci"] == [2.0, math.inf]
    assert rr.band_verdict(fit["ci"], rr.THRESHOLD_BAND) == "fail"  # above 2: misses the band
    short = rr.fit_threshold([0.5, 1.0], [1, 1], [0, 0])
    assert rr.band_verdict(short["ci"], rr.THRESHOLD_BAND) == "inconclusive"
    dead = rr.fit_threshold([2.0, 3.0], [0, 0], [0, 1])
    assert dead["ci"] == [0.0, 2.0]
    assert rr.fit_threshold([], [], [])["reason"] == "no run reached the terminal phase"


def test_a_threshold_outside_the_measured_ratios_is_not_a_measurement():
    # one collapse at the largest ratio, every other class survived: the fit would
    # put the threshold beyond the grid
    r = [0.2] * 4 + [0.4] * 4 + [0.8] * 4
    survived = [1] * 8 + [1, 1, 1, 0]
    fit = rr.fit_threshold(r, survived, [0, 1] * 6)
    assert fit["fitted_over_predicted"] is None and fit["ci"] is None
    assert "outside the ratios of the terminal runs (0.2 to 0.8)" in fit["reason"]


def test_band_verdicts():
    band = (0.8, 1.25)
    assert rr.band_verdict([0.8, 1.25], band) == "pass"
    assert rr.band_verdict([0.5, 0.79], band) == "fail"
    assert rr.band_verdict([1.26, 2.0], band) == "fail"
    assert rr.band_verdict([0.5, 0.9], band) == "inconclusive"


def test_interval_over_seeds_formulas():
    values, seeds = [0.4, 0.5, 0.6, 0.55], [0, 0, 1, 1]
    out = rr.interval_over_seeds(values, seeds)
    half = 3.182446305284263 * np.std(values, ddof=1) / 2  # t(0.975, 3)
    assert out["ci"] == pytest.approx([np.mean(values) - half, np.mean(values) + half])
    assert "Student-t" in out["method"]
    many = rr.interval_over_seeds(np.arange(10.0), np.arange(10) % 5)
    assert many["method"].startswith("bootstrap") and many["seeds"] == 5
    assert many["estimate"] == pytest.approx(4.5)


# ----------------------------------------------------------------------------- alignment


@pytest.mark.parametrize("counts", [[100, 40, 10, 5], [50, 50, 10, 10, 10]])
def test_exponent_is_one_half_at_the_closed_form_optimum(counts):
    opt = ufm_relu_optimum(counts, 1e-3, 1e-3, dim=8)
    assert bool(np.all(np.asarray(opt.alive)))
    fit = rr.alignment_exponent(opt.classifier(), opt.means(), counts)
    assert fit["exponent"] == pytest.approx(0.5, abs=1e-6)
    assert fit["error_half"] < 1e-10 < fit["error_classic"]


def test_exponent_recovers_a_planted_value():
    rng = np.random.default_rng(0)
    counts = np.array([64.0, 16.0, 4.0, 1.0])
    means = np.abs(rng.normal(size=(4, 6)))
    scaled = counts[:, None] ** 0.3 * means
    w = 4 * scaled - scaled.sum(axis=0)
    assert rr.alignment_exponent(w, means, counts)["exponent"] == pytest.approx(0.3, abs=1e-6)


# ----------------------------------------------------------------------------- report


def synthetic_point(group, seed, factor, minority_norm, *, kkt=1e-3, all_alive_exp=0.5):
    counts = [20] * 5 + [2] * 5
    n = sum(counts)
    critical = [c * 9 / (10 * n**2) for c in counts]
    lam = factor * math.sqrt(min(critical))
    opt = ufm_relu_optimum(counts, lam, lam)
    predicted = np.asarray(opt.feature_norms).tolist()
    measured = [predicted[0]] * 5 + [minority_norm] * 5
    return {
        "name": f"sweep {group} x{factor}",
        "group": group,
        "seed": seed,
        "lambda_w": lam,
        "lambda_h": lam,
        "counts": counts,
        "critical_products": critical,
        "predicted_alive": np.asarray(opt.alive).tolist(),
        "predicted_norms": predicted,
        "measured_norms": measured,
        "class_accuracy": [1.0] * 10,
        "kkt_residual": kkt,
        "grad_norm": 1e-3,
        "balanced_start": 0.3 if group == "balanced" else 0.0,
        "alignment": {
            "exponent": all_alive_exp,
            "error_half": 0.1,
            "error_classic": 0.5,
            "error": 0.09,
        },
    }


def synthetic_summary():
    points = []
    for group in ("standard", "balanced"):
        for seed in (0, 1):
            for factor in (0.3, 0.5, 0.8, 1.2, 2.0, 4.0):
                alive = factor < (0.6 if group == "standard" else 0.9)
                points.append(
                    synthetic_point(
                        group,
                        seed,
                        factor,
                        0.5 if alive else 1e-4,
                        all_alive_exp=0.45 + 0.1 * seed,
                    )
                )
    points.append(synthetic_point("standard", 2, 0.5, 0.5, kkt=0.5))  # misses the phase
    return {
        "preset": "synthetic",
        "seed": 0,
        "device": "cpu",
        "torch": "x",
        "machine": "test machine",
        "seconds": 1.0,
        "runs": [],
        "threshold_sweep": points,
        "ufm": [],
    }


def test_evidence_keys_claims_and_the_failed_run_kept_apart(tmp_path):
    summary = synthetic_summary()
    summary.update(rr.evidence(summary))
    saved = json.loads(json.dumps(summary, default=float))
    assert {"criteria", "threshold", "alignment", "claims"} <= saved.keys()
    threshold = saved["threshold"]
    assert threshold["seeds"] == 2 and len(threshold["ci"]) == 2
    # standard: survivors up to 0.5, collapse from 0.8 -> fitted between
    assert 0.5 < threshold["fitted_over_predicted"] < 0.8
    balanced = threshold["by_group"]["balanced"]
    assert 0.8 < balanced["fitted_over_predicted"] < 1.2
    assert threshold["pairs"] == 2 * 6 * 5  # the failed run's pairs are not in the fit
    assert [m["seed"] for m in saved["not_terminal"]] == [2]
    assert "KKT residual" in saved["not_terminal"][0]["reasons"][0]
    alignment = saved["alignment"]
    assert alignment["exponent"] == pytest.approx(0.5) and len(alignment["ci"]) == 2
    names = [c["name"] for c in saved["claims"]]
    assert names[:2] == [
        "Minority collapse threshold, standard start",
        "Minority collapse threshold, balanced start",
    ]
    for claim in saved["claims"]:
        assert set(claim) == {"name", "prediction", "measured", "band", "verdict"}
        assert claim["verdict"] in ("pass", "fail", "inconclusive")
    standard = saved["claims"][0]
    assert standard["verdict"] == "fail"  # interval inside (0.5, 0.8): misses [0.8, 1.25]
    ratio = next(c for c in saved["claims"] if c["name"].startswith("Scaled alignment"))
    assert ratio["verdict"] == "pass"  # 0.1 / 0.5 in every run


def test_report_leads_with_the_claims_table_and_draws_the_figures(tmp_path):
    summary = synthetic_summary()
    summary.update(rr.evidence(summary))
    paths = write_figures(tmp_path, summary)
    assert [p.name for p in paths] == ["threshold.png", "exponent.png"]
    summary["files"] = [str(p) for p in paths]
    text = rr.markdown(summary)
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Claims"
    table = text[text.index("## Claims") :].split("\n\n")[2]
    assert table.startswith("| claim | prediction | measured")
    assert "test machine" in text
    assert "## Runs that missed the terminal phase" in text and "sweep standard x0.5" in text
    assert "![threshold.png](threshold.png)" in text
    per_class = text[text.index("## Per class") :]
    assert "0.5 / " in per_class and " C |" in per_class


# ----------------------------------------------------------------------------- sweep plan


def test_full_sweeps_vary_the_lambda_ratio_at_fixed_products_and_the_data_size():
    from ncgeom.theory import critical_regularization
    from ncgeom_torch.reproduce import PRESETS, sweep_plan

    preset = PRESETS["full"]
    plan = sweep_plan(preset, seed=3)
    groups = {}
    for group, spec in plan:
        groups.setdefault(group, []).append(spec)
    assert list(groups) == [
        "standard",
        "balanced",
        "lambda ratio 0.25",
        "lambda ratio 4",
        "head 85",
    ]
    assert (
        {s.seed for s in plan_specs(plan)} == set(range(3, 3 + preset.seeds)) == set(range(3, 8))
    )
    assert len(preset.sweep_factors) >= 12
    assert min(preset.sweep_factors) == 0.25 and max(preset.sweep_factors) == 4.0
    for group, specs in groups.items():
        assert len(specs) == len(preset.sweep_factors) * preset.seeds
        for spec, factor in zip(specs, preset.sweep_factors * preset.seeds, strict=True):
            # independent: n_min (K-1) / (K N^2) is the minority's critical product
            n = sum(spec.counts)
            critical = min(spec.counts) * 9 / (10 * n**2)
            assert critical == pytest.approx(min(critical_regularization(list(spec.counts))))
            assert spec.lambda_w * spec.lambda_h == pytest.approx(factor**2 * critical)
            ratio = {"lambda ratio 0.25": 0.25, "lambda ratio 4": 4.0}.get(group, 1.0)
            assert spec.lambda_w / spec.lambda_h == pytest.approx(ratio)
            assert spec.balanced_start == (0.3 if group == "balanced" else 0.0)
            assert max(spec.counts) == (85 if group == "head 85" else 170)


def plan_specs(plan):
    return [spec for _, spec in plan]


def test_quick_preset_has_both_starts_two_seeds_and_a_coarse_grid():
    from ncgeom_torch.reproduce import PRESETS, sweep_plan

    plan = sweep_plan(PRESETS["quick"], seed=0)
    assert {g for g, _ in plan} == {"standard", "balanced"}
    assert {s.seed for _, s in plan} == {0, 1}
    assert len(PRESETS["quick"].sweep_factors) == 8 and len(plan) == 32
    assert PRESETS["quick"].digits_profiles == () and PRESETS["quick"].mnist1d_profiles == ()
