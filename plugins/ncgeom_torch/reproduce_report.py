"""``report.md`` of ``ncgeom reproduce``: a summary table, the figures and one sentence a claim."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "alignment_exponent",
    "alignment_summary",
    "band_verdict",
    "claims",
    "evidence",
    "fell_short",
    "fit_threshold",
    "imbalance_key",
    "interval_over_seeds",
    "judge",
    "markdown",
    "most_imbalanced",
    "reached",
    "threshold_fit",
]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not np.isfinite(value):
        return "-"
    return f"{value:.{digits}g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _counts(counts: list[int]) -> str:
    distinct = sorted(set(counts), reverse=True)
    if len(distinct) <= 2:
        return " / ".join(f"{sum(c == d for c in counts)}x{d}" for d in distinct)
    return f"{counts[0]} ... {counts[-1]}"


def _span(values: list[float], *, percent: bool = False) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    show = _pct if percent else _fmt
    median = show(float(np.median(values)))
    return f"{show(min(values))} to {show(max(values))} (median {median})"


def fell_short(run: dict[str, Any], fraction: float = 0.5) -> list[int]:
    """Classes predicted alive whose measured norm is below `fraction` of the predicted one."""
    return [
        int(k)
        for k, (alive, norm, predicted) in enumerate(
            zip(run["predicted_alive"], run["measured_norms"], run["predicted_norms"], strict=True)
        )
        if alive and norm < fraction * predicted
    ]


def _norm_errors(
    run: dict[str, Any], exclude: list[int] | None = None
) -> tuple[float | None, float | None]:
    """Largest relative error of the alive classes' norms and margins (minus `exclude`)."""
    alive = np.asarray(run["predicted_alive"], dtype=bool).copy()
    for k in exclude or []:
        alive[k] = False
    if not alive.any():
        return None, None
    norms = np.asarray(run["measured_norms"])[alive]
    predicted = np.asarray(run["predicted_norms"])[alive]
    margins = np.asarray(run["measured_margins"])[alive]
    predicted_margins = np.asarray(run["predicted_margins"])[alive]
    return (
        float(np.max(np.abs(norms / predicted - 1))),
        float(np.max(np.abs(margins / predicted_margins - 1))),
    )


def imbalance_key(counts: list[int] | tuple[int, ...]) -> tuple[float, int]:
    """Order of imbalance: the count ratio, then how many classes have the smallest count."""
    return max(counts) / min(counts), list(counts).count(min(counts))


def most_imbalanced(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The digits run of experiment (a) with the first seed and the most imbalanced counts.

    This is the run that the plain weight-decay and the controlled runs repeat;
    without digits runs, the most imbalanced run of (a).
    """
    candidates = [r for r in runs if r.get("experiment") == "a"]
    if not candidates:
        return None
    first = min(r["seed"] for r in candidates)
    digits = [r for r in candidates if r["dataset"] == "digits" and r["seed"] == first]
    return max(digits or candidates, key=lambda r: imbalance_key(r["counts"]))


def claims(summary: dict[str, Any]) -> list[str]:
    """One sentence per finding of the other experiments, each with its number.

    Pooled figures use only the runs in the terminal phase (`judge`); the others
    are listed apart in the report.
    """
    terminal = [r for r in summary["runs"] if reached(r) or r.get("setting") == "plain"]
    runs = [r for r in terminal if r.get("experiment") == "a"]
    out: list[str] = []
    if runs:
        out.append(
            "**NC1 (features collapse to their class means).** Final NC1 "
            f"{_span([r['nc1'] for r in runs])} over the {len(runs)} UFM+ runs; "
            f"train accuracy {_span([r['train_accuracy'] for r in runs])}."
        )
        out.append(
            "**NC2_H (class means form an orthogonal frame with the predicted lengths).** "
            f"Distance of the normalised Gram of the means to the prediction (gof_error) "
            f"{_span([r['gof_error'] for r in runs])}; mean |cosine| between class means "
            f"(orthogonality_error) {_span([r['orthogonality_error'] for r in runs])}."
        )
        out.append(
            "**NC3 (classifier aligned with the sqrt(n)-scaled centred means).** "
            f"Logit structure error (NC3_WH) {_span([r['logit_structure_error'] for r in runs])}; "
            f"classifier Gram error (NC2_WWT) {_span([r['classifier_gram_error'] for r in runs])}."
        )
        out.append(
            "**Objective.** The trained networks end "
            f"{_span([r['gap'] for r in runs if r['gap'] is not None], percent=True)} above the "
            "closed-form optimum f* of the unconstrained model (a network can only be worse: "
            "f* is a lower bound over all features)."
        )
    worst = most_imbalanced(terminal)
    if worst is not None:
        short = fell_short(worst)
        kept = [k for k in np.flatnonzero(worst["predicted_alive"]) if k not in short]
        norm_err, margin_err = _norm_errors(worst, exclude=short)
        sentence = (
            f"**Per-class norms and margins ({worst['name']}).** The {len(kept)} classes "
            "predicted alive that reached at least half their predicted norm have norms "
            f"within {_pct(norm_err)} and margins within {_pct(margin_err)} of the "
            "prediction (largest relative error over those classes)."
        )
        if short:
            measured = [worst["measured_norms"][k] for k in short]
            counts = ", ".join(str(n) for n in sorted({worst["counts"][k] for k in short}))
            sentence += (
                f" Classes {short} (n = {counts}) are predicted alive with norms up to "
                f"{_fmt(max(worst['predicted_norms'][k] for k in short))} but ended at "
                f"{_fmt(min(measured))} to {_fmt(max(measured))}: they died early "
                "(see the controlled experiment)."
            )
        out.append(sentence)
    controlled = [r for r in terminal if r.get("experiment") == "controlled"]
    if controlled and worst is not None:
        run = controlled[0]
        short_standard, short_balanced = fell_short(worst), fell_short(run)
        alive = int(np.sum(run["predicted_alive"]))
        norm_err, _ = _norm_errors(run, exclude=short_balanced)
        out.append(
            "**Controlled experiment: why minority classes die early.** The most imbalanced "
            f"run ({worst['name']}) repeated with the same seed, data, lambdas, optimiser, "
            "epochs and final objective, changing only the path: class-balanced "
            f"cross-entropy for the first {100 * run['balanced_start']:.0f}% of the epochs, the "
            "plain objective afterwards. Classes predicted alive that ended below half their "
            f"predicted norm: {len(short_standard)} of {alive} in the standard run, "
            f"{len(short_balanced)} of {alive} with the balanced start (whose alive classes' "
            f"norms are then within {_pct(norm_err)} of the prediction); objective "
            f"{_pct(worst['gap'])} against {_pct(run['gap'])} above f*. So the minimiser is the "
            "one the theorem describes, and the standard run's departure is the optimiser's "
            "path: early gradients dominated by the head classes shrink the rare classes' "
            "features before their cross-entropy separates them, and ReLU units that a class "
            "no longer activates pass it no gradient to recover."
        )
    plain = [r for r in terminal if r.get("experiment") == "plain"]
    if plain:
        run = plain[0]
        sentence = (
            f"**Plain weight decay ({run['name']}, weight decay {_fmt(run['lambda_w'])} on "
            "every parameter, no feature penalty).** Here the model's assumptions do not hold: "
            "the features are regularised only through the weights, and the closed form has "
            f"no lambda_H to compare with. NC1 {_fmt(run['nc1'])}, orthogonality error "
            f"{_fmt(run['orthogonality_error'])}, train accuracy "
            f"{_fmt(run['train_accuracy'])}"
        )
        if worst is not None:
            sentence += (
                f", against NC1 {_fmt(worst['nc1'])} and orthogonality error "
                f"{_fmt(worst['orthogonality_error'])} with the UFM+ regulariser on the same "
                "counts"
            )
        out.append(sentence + ".")
    checks = summary.get("ufm") or []
    if checks:
        gaps = [c["objective_gap"] for c in checks]
        errors = [c["norm_error"] for c in checks]
        agree = sum(c["alive_agree"] for c in checks)
        out.append(
            "**The UFM itself.** Projected gradient descent on free features "
            "(`ncgeom.solve.solve_ufm`) at the same counts and lambdas reaches the closed form: "
            f"objective gap at most {_fmt(max(gaps))}, norm error at most "
            f"{_fmt(max(errors))} (relative to the largest norm), alive classes agree in "
            f"{agree}/{len(checks)} configurations."
        )
    return out


def markdown(summary: dict[str, Any]) -> str:
    """The text of ``report.md``: the claims table first, then the evidence behind it."""
    lines = [
        f"# ncgeom reproduce ({summary['preset']} preset)",
        "",
        f"Seed {summary['seed']}, device `{summary['device']}`, torch {summary['torch']}, "
        f"on {summary.get('machine', '-')}; {summary['seconds']:.0f} s in all.",
        "",
        "## Claims",
        "",
        "Each band was fixed before the runs: **pass** when the whole interval lies in "
        "the band, **fail** when the interval misses it, **inconclusive** otherwise.",
        "",
        "| claim | prediction | measured [95% interval] | band | verdict |",
        "|---|---|---|---|---|",
    ]
    for claim in summary.get("claims", []):
        lines.append(
            f"| {claim['name']} | {claim['prediction']} | {claim['measured']} | "
            f"{claim['band']} | **{claim['verdict']}** |"
        )
    lines += ["", *_criteria_lines(summary), *_threshold_lines(summary)]
    lines += _alignment_lines(summary)
    depth = summary.get("depth") or {}
    if depth.get("runs"):
        lines += [
            "## Collapse through depth",
            "",
            "NC1 at each ReLU of the network: collapse progresses with depth "
            f"({depth['criterion']}) in {depth['progresses']} of the {depth['runs']} "
            "terminal runs; per run in `report.json` (`threshold_sweep[].depth`).",
            "",
        ]
    figures = [Path(f).name for f in summary.get("files", []) if str(f).endswith(".png")]
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{name}]({name})" for name in figures]
    lines += _per_class_lines(summary)
    lines += _not_terminal_lines(summary)
    lines += _other_lines(summary)
    return "\n".join(lines) + "\n"


def _criteria_lines(summary: dict[str, Any]) -> list[str]:
    criteria = summary.get("criteria") or {}
    if not criteria:
        return []
    return [
        "## Criteria (fixed before the runs, `ncgeom.criteria`)",
        "",
        f"- alive: {criteria['alive']};",
        f"- collapsed: {criteria['collapsed']};",
        f"- partial: {criteria['partial']};",
        f"- terminal phase: {criteria['terminal_phase']}. Runs that miss it are listed "
        "apart below and enter no fit, interval or table above it;",
        f"- threshold fit: {criteria['partial_in_fit']}.",
        "",
    ]


def _threshold_lines(summary: dict[str, Any]) -> list[str]:
    threshold = summary.get("threshold") or {}
    groups = threshold.get("by_group") or {}
    if not groups:
        return []
    lines = [
        "## Threshold",
        "",
        "Fitted threshold of the minority classes over the predicted one, from a "
        "logistic fit of their outcome (survived = not collapsed) against log lambda "
        "(`fit_threshold`).",
        "",
        "| sweep | fitted / predicted | 95% interval | method | seeds | pairs | partial "
        "| without partial |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, fit in [*groups.items(), ("head classes (both starts)", threshold["head"])]:
        ci = fit.get("ci")
        strict = fit.get("without_partial") or {}
        strict_ci = strict.get("ci")
        strict_text = (
            "-"
            if strict_ci is None
            else f"{_fmt(strict.get('fitted_over_predicted'))} [{_fmt(strict_ci[0])}, "
            f"{_fmt(strict_ci[1])}]"
        )
        lines.append(
            f"| {name} | {_fmt(fit.get('fitted_over_predicted'))} | "
            f"{'-' if ci is None else f'[{_fmt(ci[0])}, {_fmt(ci[1])}]'} | "
            f"{fit.get('method') or fit.get('reason') or '-'} | {fit['seeds']} | "
            f"{fit['pairs']} | {fit.get('partial', 0)} | {strict_text} |"
        )
    return [*lines, ""]


def _alignment_lines(summary: dict[str, Any]) -> list[str]:
    alignment = summary.get("alignment") or {}
    if not alignment or not alignment.get("runs"):
        return []
    ratio = alignment["scaled_over_classic"]
    return [
        "## Alignment (NC3)",
        "",
        f"Over the {alignment['runs']} terminal runs with every class alive: scaled "
        f"alignment error (W against S(1/2), the sqrt(n)-scaled centred means) "
        f"{_span(alignment['scaled_alignment_error'])}, against classic self-duality "
        f"(W against the centred means, S(0)) {_span(alignment['self_duality_error'])}; "
        f"their ratio {_fmt(ratio['estimate'])} [{_fmt(ratio['ci'][0])}, "
        f"{_fmt(ratio['ci'][1])}]. Fitted exponent a = argmin_a ||nf(W) - nf(S(a))||: "
        f"{_fmt(alignment['exponent'], 4)} [{_fmt(alignment['ci'][0], 4)}, "
        f"{_fmt(alignment['ci'][1], 4)}] ({alignment['method']}); per run "
        f"{_fmt(min(alignment['exponents']), 4)} to {_fmt(max(alignment['exponents']), 4)}.",
        "",
    ]


def _per_class_lines(summary: dict[str, Any]) -> list[str]:
    points = [p for p in summary.get("threshold_sweep") or [] if reached(p)]
    if not points:
        return []
    lines = [
        "",
        "## Per class: every sweep run in the terminal phase",
        "",
        "Measured class-mean norm / predicted (0: predicted to collapse), and the outcome "
        "(A alive, C collapsed, P partial).",
        "",
        "| sweep | lambda / lambda_c | seed | KKT | "
        + " | ".join(f"class {k} (n={n})" for k, n in enumerate(points[0]["counts"]))
        + " |",
        "|---|---|---|---|" + "---|" * len(points[0]["counts"]),
    ]
    for p in points:
        cells = [
            f"{_fmt(m)} / {_fmt(q)} {o[0].upper()}"
            for m, q, o in zip(
                p["measured_norms"], p["predicted_norms"], p["outcomes"], strict=True
            )
        ]
        ratio = math.sqrt(p["lambda_w"] * p["lambda_h"] / min(p["critical_products"]))
        lines.append(
            f"| {p['group']} | {ratio:.3g} | {p['seed']} | {_fmt(p['kkt_residual'], 2)} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def _not_terminal_lines(summary: dict[str, Any]) -> list[str]:
    missed = summary.get("not_terminal") or []
    lines = ["", "## Runs that missed the terminal phase (in no figure above)", ""]
    if not missed:
        return [*lines, "None."]
    lines += ["| run | seed | why |", "|---|---|---|"]
    lines += [f"| {m['name']} | {m['seed']} | {'; '.join(m['reasons'])} |" for m in missed]
    return lines


def _other_lines(summary: dict[str, Any]) -> list[str]:
    """The other experiments (the full preset): sentences, runs table, per class, UFM."""
    lines: list[str] = []
    sentences = claims(summary)
    if sentences:
        lines += ["", "## Other experiments (terminal-phase runs only)", ""]
        lines += [f"- {sentence}" for sentence in sentences]
    if summary["runs"]:
        lines += [
            "",
            "## Runs",
            "",
            "| run | seed | counts | lambda_W | lambda_H | epochs | terminal | train acc | "
            "objective | f* | gap | NC1 | NC2_H | NC2_WWT | NC3_WH | orth. |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    for run in summary["runs"]:
        terminal = run.get("terminal")
        mark = "-" if terminal is None else ("yes" if terminal["reached"] else "**no**")
        lines.append(
            f"| {run['name']} | {run['seed']} | {_counts(run['counts'])} | "
            f"{_fmt(run['lambda_w'])} | {_fmt(run['lambda_h'])} | {run['epochs']} | {mark} | "
            f"{run['train_accuracy']:.3f} | {_fmt(run['objective'], 4)} | "
            f"{_fmt(run['optimum'], 4)} | {_pct(run['gap'])} | {_fmt(run['nc1'])} | "
            f"{_fmt(run['gof_error'])} | {_fmt(run['classifier_gram_error'])} | "
            f"{_fmt(run['logit_structure_error'])} | {_fmt(run['orthogonality_error'])} |"
        )
    worst = most_imbalanced(summary["runs"])
    if worst is not None:
        lines += [
            "",
            f"## Per class: {worst['name']}",
            "",
            "| class | n_k | norm | predicted | margin | predicted | outcome |",
            "|---|---|---|---|---|---|---|",
        ]
        outcomes = worst.get("outcomes") or ["-"] * len(worst["counts"])
        for k, n in enumerate(worst["counts"]):
            lines.append(
                f"| {k} | {n} | {_fmt(worst['measured_norms'][k])} | "
                f"{_fmt(worst['predicted_norms'][k])} | {_fmt(worst['measured_margins'][k])} | "
                f"{_fmt(worst['predicted_margins'][k])} | {outcomes[k]} |"
            )
    checks = summary.get("ufm") or []
    if checks:
        lines += [
            "",
            "## The UFM on free features",
            "",
            "| counts | lambda_W | lambda_H | solver objective | f* | gap | norm error |",
            "|---|---|---|---|---|---|---|",
        ]
        for check in checks:
            lines.append(
                f"| {_counts(check['counts'])} | {_fmt(check['lambda_w'])} | "
                f"{_fmt(check['lambda_h'])} | {check['objective']:.6g} | "
                f"{check['optimum']:.6g} | {check['objective_gap']:.1e} | "
                f"{check['norm_error']:.1e} |"
            )
    return lines


# --------------------------------------------------------------------------- evidence: fits

#: Each claim's band, fixed before any run: pass when the whole interval lies in
#: the band, fail when the interval misses it, inconclusive otherwise.
THRESHOLD_BAND = (0.8, 1.25)
EXPONENT_BAND = (0.4, 0.6)
#: The scaled alignment error must be below this fraction of the classic
#: self-duality error (in every terminal run with all classes alive).
ALIGNMENT_BAND = (0.0, 1.0)
#: Seeds needed for a bootstrap over seeds; with fewer, the fit's own interval.
BOOTSTRAP_MIN_SEEDS = 5
BOOTSTRAP_SAMPLES = 1000
#: chi-square(1) quantile of a 95% profile-likelihood interval.
_CHI2_95 = 3.841458820694124


def _penalised_loss(beta0: float, beta1: float, x: np.ndarray, y: np.ndarray) -> float:
    """Negative Firth-penalised log-likelihood of P(y=1) = sigmoid(beta0 + beta1 x)."""
    from scipy.special import expit

    eta = beta0 + beta1 * x
    loglik = float(np.sum(y * eta - np.logaddexp(0.0, eta)))
    w = expit(eta) * expit(-eta)
    det = float(np.sum(w) * np.sum(w * x * x) - np.sum(w * x) ** 2)
    return -(loglik + (0.5 * math.log(det) if det > 0 else -1e6))


def _fit_logistic(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(beta0, beta1, minimum) of Firth's penalised logistic fit (Newton, step halving)."""
    from scipy.special import expit

    design = np.stack([np.ones_like(x), x], axis=1)
    beta = np.zeros(2)
    loss = _penalised_loss(0.0, 0.0, x, y)
    for _ in range(200):
        p = expit(design @ beta)
        w = p * (1 - p)
        inverse = np.linalg.pinv(design.T @ (w[:, None] * design))
        leverage = w * np.einsum("ij,jk,ik->i", design, inverse, design)
        step = inverse @ (design.T @ (y - p + leverage * (0.5 - p)))
        step *= min(1.0, 5.0 / max(float(np.abs(step).max()), 1e-300))
        for _ in range(30):
            trial = _penalised_loss(*(beta + step), x, y)
            if trial <= loss + 1e-12:
                break
            step = step / 2
        beta, loss = beta + step, min(loss, trial)
        if float(np.abs(step).max()) < 1e-10:
            break
    return float(beta[0]), float(beta[1]), loss


def _profile_interval(x: np.ndarray, y: np.ndarray, c_hat: float, floor: float) -> list[float]:
    """95% profile (penalised) likelihood interval of the log threshold c."""
    from scipy.optimize import minimize_scalar

    grid = np.linspace(float(x.min()) - 2.0, float(x.max()) + 2.0, 321)

    def profile(c: float) -> float:
        res = minimize_scalar(
            lambda s: _penalised_loss(math.exp(s) * c, -math.exp(s), x, y),
            bounds=(-4.0, 6.0),
            method="bounded",
        )
        return float(res.fun)

    inside = [c for c in grid if 2.0 * (profile(c) - floor) <= _CHI2_95] or [c_hat]
    low = min(min(inside), c_hat)
    high = max(max(inside), c_hat)
    return [math.exp(low), math.exp(high)]


def fit_threshold(ratios: Any, survived: Any, seeds: Any, *, rng_seed: int = 0) -> dict[str, Any]:
    """The fitted threshold of a class outcome against lambda, in units of its prediction.

    A logistic curve ``P(survive) = 1 / (1 + (r / r*)^b)`` (``b > 0``: a class
    survives less often as lambda grows) is fitted to the outcome of every
    (run, class) pair against ``log r``, ``r`` = lambda over the predicted
    critical lambda. The fit is penalised (Firth's Jeffreys-prior penalty),
    which keeps it finite when the outcomes are separated, as they are when
    every run agrees. ``r*`` is the fitted threshold over the predicted one;
    a fit that puts it outside the ratios of the given pairs extrapolates and
    gives no number (``reason`` says so).

    Interval: with at least `BOOTSTRAP_MIN_SEEDS` distinct seeds, the 2.5 and
    97.5 percentiles of `BOOTSTRAP_SAMPLES` refits on seeds drawn with
    replacement (all pairs of a drawn seed together); with fewer, the 95%
    profile penalised-likelihood interval of the fit itself. ``method`` says
    which.

    Parameters
    ----------
    ratios : array-like
        ``r`` of each pair (> 0).
    survived : array-like of bool
        1 when the class did not collapse (alive or partial), 0 when it did.
    seeds : array-like of int
        The seed of each pair's run.

    Returns
    -------
    dict
        ``fitted_over_predicted`` (None when every pair survived or every one
        collapsed: no crossing in the grid), ``ci`` (two numbers), ``method``,
        ``seeds`` (distinct seeds), ``pairs``, ``slope`` (b), ``reason``.

    Examples
    --------
    >>> r = [0.5, 0.7, 1.4, 2.0] * 2
    >>> fit = fit_threshold(r, [1, 1, 0, 0] * 2, [0] * 4 + [1] * 4)
    >>> 0.7 < fit["fitted_over_predicted"] < 1.4, fit["method"].startswith("profile")
    (True, True)
    """
    x = np.log(np.asarray(ratios, dtype=np.float64))
    y = np.asarray(survived, dtype=np.float64)
    groups = np.asarray(seeds)
    distinct = sorted(set(groups.tolist()))
    base = {"seeds": len(distinct), "pairs": int(x.size)}
    if x.size == 0:
        return {
            **base,
            "fitted_over_predicted": None,
            "ci": None,
            "method": None,
            "slope": None,
            "reason": "no run reached the terminal phase",
        }
    if y.min() == y.max():
        if y[0] == 1:
            ci, why = [float(np.exp(x.max())), math.inf], "every class survived"
        else:
            ci, why = [0.0, float(np.exp(x.min()))], "every class collapsed"
        return {
            **base,
            "fitted_over_predicted": None,
            "ci": ci,
            "method": "grid bound",
            "slope": None,
            "reason": f"{why}: the threshold lies beyond the grid",
        }
    beta0, beta1, floor = _fit_logistic(x, y)
    if not beta1 < 0:
        return {
            **base,
            "fitted_over_predicted": None,
            "ci": None,
            "method": None,
            "slope": None,
            "reason": "classes survive more often at larger lambda",
        }
    c_hat = -beta0 / beta1
    if not float(x.min()) <= c_hat <= float(x.max()):
        return {
            **base,
            "fitted_over_predicted": None,
            "ci": None,
            "method": None,
            "slope": -beta1,
            "reason": f"the fit puts the threshold at {math.exp(c_hat):.3g}, outside the "
            f"ratios of the terminal runs ({math.exp(x.min()):.3g} to "
            f"{math.exp(x.max()):.3g}): no measurement",
        }
    if len(distinct) >= BOOTSTRAP_MIN_SEEDS:
        rng = np.random.default_rng(rng_seed)
        members = [np.flatnonzero(groups == g) for g in distinct]
        draws = []
        for _ in range(BOOTSTRAP_SAMPLES):
            pick = np.concatenate(
                [members[i] for i in rng.integers(0, len(members), len(members))]
            )
            if y[pick].min() == y[pick].max():
                continue
            b0, b1, _ = _fit_logistic(x[pick], y[pick])
            if b1 < 0:
                draws.append(-b0 / b1)
        ci = [float(np.exp(np.percentile(draws, 2.5))), float(np.exp(np.percentile(draws, 97.5)))]
        method = f"bootstrap over seeds ({len(draws)} refits, 2.5-97.5 percentiles)"
    else:
        ci = _profile_interval(x, y, c_hat, floor)
        method = "profile penalised likelihood (95%), fewer than 5 seeds"
    return {
        **base,
        "fitted_over_predicted": math.exp(c_hat),
        "ci": ci,
        "method": method,
        "slope": -beta1,
        "reason": None,
    }


def alignment_exponent(classifier: Any, means: Any, counts: Any) -> dict[str, float]:
    """The exponent a that best aligns W with ``S(a)_k = K n_k^a mu_k - sum_j n_j^a mu_j``.

    ``a = argmin_a || nf(W) - nf(S(a)) ||_F`` (nf: divided by the Frobenius
    norm) over ``a`` in [-1, 2]: a scan on a grid of step 0.01, refined by a
    bounded scalar minimisation. At the UFM+ optimum a = 1/2.

    Returns
    -------
    dict
        ``exponent``, ``error`` (the distance at the exponent), ``error_half``
        (at a = 1/2) and ``error_classic`` (classic self-duality: W against
        the means centred at their unweighted mean, i.e. a = 0).

    Examples
    --------
    >>> import numpy as np
    >>> counts = np.array([9.0, 4.0, 1.0])
    >>> means = np.eye(3)
    >>> w = 3 * np.sqrt(counts)[:, None] * means - (np.sqrt(counts)[:, None] * means).sum(0)
    >>> round(alignment_exponent(w, means, counts)["exponent"], 6)
    0.5
    """
    from scipy.optimize import minimize_scalar

    w = np.asarray(classifier, dtype=np.float64)
    mu = np.asarray(means, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)
    k = n.size
    w_dir = w / np.linalg.norm(w)

    def error(a: float) -> float:
        scaled = (n**a)[:, None] * mu
        target = k * scaled - scaled.sum(axis=0)
        norm = np.linalg.norm(target)
        return float(np.linalg.norm(w_dir - target / norm)) if norm > 0 else math.inf

    grid = np.arange(-1.0, 2.0001, 0.01)
    best = float(grid[int(np.argmin([error(a) for a in grid]))])
    res = minimize_scalar(
        error,
        bounds=(max(-1.0, best - 0.01), min(2.0, best + 0.01)),
        method="bounded",
        options={"xatol": 1e-8},
    )
    return {
        "exponent": float(res.x),
        "error": float(res.fun),
        "error_half": error(0.5),
        "error_classic": error(0.0),
    }


def interval_over_seeds(values: Any, seeds: Any, *, rng_seed: int = 0) -> dict[str, Any]:
    """Mean of per-seed means with a 95% interval over seeds.

    Bootstrap over seeds (percentiles of `BOOTSTRAP_SAMPLES` resamples) with
    at least `BOOTSTRAP_MIN_SEEDS` seeds; with fewer, a Student-t interval over
    the individual values (which share seeds, so it is optimistic; ``method``
    says so).

    Examples
    --------
    >>> out = interval_over_seeds([0.5, 0.52, 0.48, 0.5], [0, 0, 1, 1])
    >>> round(out["estimate"], 3), out["seeds"]
    (0.5, 2)
    """
    from scipy import stats as scistats

    v = np.asarray(values, dtype=np.float64)
    groups = np.asarray(seeds)
    distinct = sorted(set(groups.tolist()))
    if v.size == 0:
        return {"estimate": None, "ci": None, "method": None, "seeds": 0, "values": 0}
    per_seed = np.array([v[groups == g].mean() for g in distinct])
    estimate = float(per_seed.mean())
    if len(distinct) >= BOOTSTRAP_MIN_SEEDS:
        rng = np.random.default_rng(rng_seed)
        draws = per_seed[rng.integers(0, len(distinct), (BOOTSTRAP_SAMPLES, len(distinct)))]
        means = draws.mean(axis=1)
        ci = [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]
        method = "bootstrap over seeds (2.5-97.5 percentiles)"
    elif v.size >= 2:
        half = float(scistats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
        ci = [float(v.mean()) - half, float(v.mean()) + half]
        estimate = float(v.mean())
        method = "Student-t over runs (fewer than 5 seeds; runs share seeds)"
    else:
        ci = [estimate, estimate]
        method = "one value"
    return {
        "estimate": estimate,
        "ci": ci,
        "method": method,
        "seeds": len(distinct),
        "values": int(v.size),
    }


def band_verdict(ci: list[float] | None, band: tuple[float, float]) -> str:
    """pass (interval inside the band), fail (interval misses it) or inconclusive.

    Examples
    --------
    >>> band_verdict([0.9, 1.1], (0.8, 1.25)), band_verdict([0.3, 0.6], (0.8, 1.25))
    ('pass', 'fail')
    >>> band_verdict([0.7, 1.1], (0.8, 1.25)), band_verdict(None, (0.8, 1.25))
    ('inconclusive', 'inconclusive')
    """
    if ci is None or any(v is None or math.isnan(v) for v in ci):
        return "inconclusive"
    low, high = ci
    if band[0] <= low and high <= band[1]:
        return "pass"
    if high < band[0] or low > band[1]:
        return "fail"
    return "inconclusive"


# --------------------------------------------------------------------------- evidence: claims


def judge(points: list[dict[str, Any]]) -> None:
    """Add ``outcomes`` and ``terminal`` to each run or sweep point, in place.

    Outcomes by `ncgeom.criteria.class_outcomes`; where no class is predicted
    alive, collapse is judged against the largest norm of a predicted-alive
    class over the points with the same counts and lambda ratio (the same
    sweep). The terminal phase by `ncgeom.criteria.terminal_phase`, with the
    train accuracy over the samples of the classes that did not collapse.
    """
    from ncgeom.criteria import accuracy_classes, class_outcomes, terminal_phase

    scales: dict[tuple[Any, ...], float] = {}
    for point in points:
        key = _sweep_key(point)
        alive = [
            v
            for v, p in zip(point["measured_norms"], point["predicted_norms"], strict=True)
            if p > 0
        ]
        if alive:
            scales[key] = max(scales.get(key, 0.0), max(alive))
    for point in points:
        if point.get("kkt_residual") is None:
            continue
        outcomes = class_outcomes(
            point["measured_norms"], point["predicted_norms"], scale=scales.get(_sweep_key(point))
        )
        keep = accuracy_classes(outcomes)
        counts = np.asarray(point["counts"], dtype=np.float64)[keep]
        accuracy = np.asarray(point["class_accuracy"])[keep]
        overall = float(np.sum(counts * accuracy) / np.sum(counts)) if keep else 1.0
        point["outcomes"] = outcomes
        point["terminal"] = terminal_phase(
            overall, point["kkt_residual"], grad_norm=point.get("grad_norm")
        ).to_dict()


def _sweep_key(point: dict[str, Any]) -> tuple[Any, ...]:
    return (tuple(point["counts"]), round(point["lambda_w"] / point["lambda_h"], 9))


def reached(point: dict[str, Any]) -> bool:
    """Whether a judged run or sweep point reached the terminal phase (`judge`)."""
    return bool(point.get("terminal", {}).get("reached"))


def _pairs(points: list[dict[str, Any]], which: str) -> dict[str, list[Any]]:
    """(ratio, survived, seed, partial) of the minority ("min") or head ("max") classes."""
    out: dict[str, list[Any]] = {"ratio": [], "survived": [], "seed": [], "partial": []}
    for point in points:
        counts = point["counts"]
        target = min(counts) if which == "min" else max(counts)
        critical = (
            min(point["critical_products"]) if which == "min" else max(point["critical_products"])
        )
        ratio = math.sqrt(point["lambda_w"] * point["lambda_h"] / critical)
        for k, n in enumerate(counts):
            if n == target:
                out["ratio"].append(ratio)
                out["survived"].append(point["outcomes"][k] != "collapsed")
                out["seed"].append(point["seed"])
                out["partial"].append(point["outcomes"][k] == "partial")
    return out


def threshold_fit(points: list[dict[str, Any]], which: str = "min") -> dict[str, Any]:
    """`fit_threshold` of the minority (or head) classes of terminal-phase points.

    Partial outcomes count as survived (the class did not collapse); the fit
    without them is given beside (``without_partial``).
    """
    pairs = _pairs([p for p in points if reached(p)], which)
    fit = fit_threshold(pairs["ratio"], pairs["survived"], pairs["seed"])
    keep = [not p for p in pairs["partial"]]
    strict = fit_threshold(
        [r for r, k in zip(pairs["ratio"], keep, strict=True) if k],
        [s for s, k in zip(pairs["survived"], keep, strict=True) if k],
        [s for s, k in zip(pairs["seed"], keep, strict=True) if k],
    )
    return {
        **fit,
        "partial": int(sum(pairs["partial"])),
        "without_partial": {
            key: strict[key] for key in ("fitted_over_predicted", "ci", "method", "pairs")
        },
        "points": [
            {"ratio": r, "survived": bool(s), "seed": d, "partial": bool(p)}
            for r, s, d, p in zip(
                pairs["ratio"], pairs["survived"], pairs["seed"], pairs["partial"], strict=True
            )
        ],
    }


def alignment_summary(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The alignment exponent and scaled-vs-classic alignment over terminal runs.

    Only runs in the terminal phase whose classes are all predicted and
    observed alive enter (with a collapsed class the exponent is fitted to
    fewer classes).
    """
    chosen = [
        p
        for p in points
        if reached(p)
        and p.get("alignment")
        and all(o == "alive" for o in p["outcomes"])
        and all(p["predicted_alive"])
    ]
    seeds = [p["seed"] for p in chosen]
    exponent = interval_over_seeds([p["alignment"]["exponent"] for p in chosen], seeds)
    scaled = [p["alignment"]["error_half"] for p in chosen]
    classic = [p["alignment"]["error_classic"] for p in chosen]
    ratio = interval_over_seeds(
        [a / b for a, b in zip(scaled, classic, strict=True) if b > 0], seeds
    )
    return {
        "exponent": exponent["estimate"],
        "ci": exponent["ci"],
        "method": exponent["method"],
        "seeds": exponent["seeds"],
        "runs": len(chosen),
        "exponents": [p["alignment"]["exponent"] for p in chosen],
        "scaled_alignment_error": scaled,
        "self_duality_error": classic,
        "scaled_over_classic": ratio,
    }


def _claim(
    name: str,
    prediction: str,
    fit: dict[str, Any],
    key: str,
    band: tuple[float, float],
    digits: int = 3,
) -> dict[str, Any]:
    value, ci = fit.get(key), fit.get("ci")
    if value is None and ci is None:
        measured = f"- ({fit.get('reason') or 'no data'})"
    elif value is None:
        measured = f"beyond the grid: [{_fmt(ci[0])}, {_fmt(ci[1])}] ({fit.get('reason')})"
    else:
        shown = [_fmt(v, digits) for v in (value, *ci)]
        measured = f"{shown[0]} [{shown[1]}, {shown[2]}] ({fit['method']}; " + (
            f"{fit['seeds']} seeds)"
        )
    return {
        "name": name,
        "prediction": prediction,
        "measured": measured,
        "band": f"interval within [{band[0]:g}, {band[1]:g}]",
        "verdict": band_verdict(ci, band),
    }


def evidence(summary: dict[str, Any]) -> dict[str, Any]:
    """``criteria``, ``threshold``, ``alignment``, ``claims`` and ``not_terminal`` of a summary.

    Judges every sweep point and run (`judge`) first.
    """
    from ncgeom.criteria import criteria_dict

    points = summary.get("threshold_sweep") or []
    runs = [r for r in summary.get("runs", []) if r.get("setting") == "ufm"]
    judge(points)
    judge(runs)
    groups = list(dict.fromkeys(p.get("group", "standard") for p in points))
    fits = {
        g: threshold_fit([p for p in points if p.get("group", "standard") == g]) for g in groups
    }
    starts = [p for p in points if p.get("group", "standard") in ("standard", "balanced")]
    head = threshold_fit(starts, "max")
    alignment = alignment_summary(points + runs)
    headline = fits.get("standard") or (fits[groups[0]] if groups else threshold_fit([]))
    claims_list = []
    for group in groups:
        if group in ("standard", "balanced"):
            name = f"Minority collapse threshold, {group} start"
            prediction = "fitted threshold / predicted = 1"
        else:
            name = f"Only N^2 lambda_W lambda_H matters ({group})"
            prediction = "fitted threshold / predicted = 1, as with lambda_W = lambda_H"
        claims_list.append(
            _claim(name, prediction, fits[group], "fitted_over_predicted", THRESHOLD_BAND)
        )
    if points:
        claims_list.append(
            _claim(
                "Head-class threshold (both starts)",
                "fitted threshold / predicted = 1",
                head,
                "fitted_over_predicted",
                THRESHOLD_BAND,
            )
        )
    claims_list.append(
        _claim(
            "NC3 alignment exponent a",
            "a = 1/2",
            {**alignment, "reason": "no terminal run with every class alive"},
            "exponent",
            EXPONENT_BAND,
            digits=4,
        )
    )
    ratio = alignment["scaled_over_classic"]
    claims_list.append(
        _claim(
            "Scaled alignment error / classic self-duality error",
            "< 1 (W follows the sqrt(n)-scaled means, not the plain means)",
            {**ratio, "reason": "no terminal run with every class alive"},
            "estimate",
            ALIGNMENT_BAND,
        )
    )
    missed = [
        {
            "name": p.get("name", f"sweep {p.get('group', '')} lambda={p['lambda_w']:.3g}"),
            "group": p.get("group"),
            "seed": p["seed"],
            "reasons": p["terminal"]["reasons"],
        }
        for p in points + runs
        if "terminal" in p and not p["terminal"]["reached"]
    ]
    deep = [p for p in points + runs if reached(p) and p.get("depth")]
    depth = {
        "runs": len(deep),
        "progresses": sum(p["depth"]["progresses"] for p in deep),
        "criterion": "Spearman rho of log NC1 against the layer index below -0.8 and the last "
        "layer's NC1 below 0.1x the first's (ncgeom.depth)",
    }
    return {
        "depth": depth,
        "criteria": {
            **criteria_dict(),
            "threshold_band": list(THRESHOLD_BAND),
            "exponent_band": list(EXPONENT_BAND),
            "alignment_band": list(ALIGNMENT_BAND),
            "verdict": "pass: the interval lies in the band; fail: it misses the band; "
            "inconclusive: otherwise",
            "partial_in_fit": "a partial class counts as survived (it did not collapse); the "
            "fit without partial classes is reported beside",
        },
        "threshold": {**headline, "start": "standard", "by_group": fits, "head": head},
        "alignment": alignment,
        "claims": claims_list,
        "not_terminal": missed,
    }
