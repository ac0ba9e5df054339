"""``report.md`` of ``ncgeom reproduce``: a summary table, the figures and one sentence a claim."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["claims", "markdown"]


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


def _span(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{_fmt(min(values))} to {_fmt(max(values))} (median {_fmt(float(np.median(values)))})"


def _norm_errors(run: dict[str, Any]) -> tuple[float | None, float | None]:
    """Largest relative error of the alive classes' norms and margins."""
    alive = np.asarray(run["predicted_alive"], dtype=bool)
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


def most_imbalanced(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The UFM+ run of experiment (a) with the largest count ratio (first seed)."""
    candidates = [r for r in runs if r.get("experiment") == "a"]
    if not candidates:
        return None
    return max(
        candidates,
        key=lambda r: (max(r["counts"]) / min(r["counts"]), r["counts"].count(min(r["counts"]))),
    )


def claims(summary: dict[str, Any]) -> list[str]:
    """One sentence a claim, each with its number."""
    runs = [r for r in summary["runs"] if r.get("experiment") == "a"]
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
            f"{_span([100 * r['gap'] for r in runs if r['gap'] is not None])} % above the "
            "closed-form optimum f* of the unconstrained model (a network can only be worse: "
            "f* is a lower bound over all features)."
        )
    worst = most_imbalanced(summary["runs"])
    if worst is not None:
        norm_err, margin_err = _norm_errors(worst)
        out.append(
            f"**Per-class norms and margins ({worst['name']}).** Alive classes: norms within "
            f"{_pct(norm_err)} and margins within {_pct(margin_err)} of the prediction "
            "(largest relative error over classes)."
        )
    agreement = summary.get("sweep_agreement")
    if agreement:
        clear, near = agreement["clear"], agreement["near"]
        out.append(
            "**Minority collapse threshold.** Where lambda_W * lambda_H is at least "
            f"{agreement['clear_factor']:g}x from a class's critical value, "
            f"{clear['agree']}/{clear['pairs']} (point, class) pairs "
            f"({_pct(clear['fraction'])}) agree with the prediction (collapsed: mean norm "
            f"below {100 * agreement['floor']:g}% of the largest alive norm; alive: above); "
            f"near the threshold {near['agree']}/{near['pairs']} ({_pct(near['fraction'])})."
        )
    controlled = [r for r in summary["runs"] if r.get("experiment") == "controlled"]
    if controlled and worst is not None:
        run = controlled[0]
        alive = np.asarray(run["predicted_alive"], dtype=bool)
        norms = np.asarray(run["measured_norms"])
        reference = norms[alive].max() if alive.any() else 0.0
        dead = [k for k in np.flatnonzero(alive) if reference > 0 and norms[k] < 0.05 * reference]
        ramped = np.asarray(worst["measured_norms"])
        ramp_dead = [k for k in np.flatnonzero(alive) if ramped[k] < 0.05 * ramped[alive].max()]
        out.append(
            "**Controlled experiment: early death of minority classes.** The same run "
            f"({worst['name']}, same seed, data, lambdas, optimiser and epochs) with the "
            f"feature penalty on from the first step instead of ramped in: "
            f"{len(dead)} of {int(alive.sum())} classes predicted alive end collapsed "
            f"(classes {[int(k) for k in dead]}), objective {_pct(run['gap'])} above f*, "
            f"against {len(ramp_dead)} and {_pct(worst['gap'])} with the ramp. The objective "
            "and its minimiser are the same; only the path differs, so the departure is the "
            "optimiser's (ReLU units whose inputs the penalty pushes below zero before the "
            "rare classes' cross-entropy gradient arrives stop receiving gradient), not the "
            "theorem's."
        )
    plain = [r for r in summary["runs"] if r.get("experiment") == "plain"]
    if plain:
        run = plain[0]
        out.append(
            f"**Plain weight decay ({run['name']}).** Without the feature penalty the model's "
            f"assumptions do not hold (features are regularised only through the weights); "
            f"NC1 {_fmt(run['nc1'])}, orthogonality error {_fmt(run['orthogonality_error'])}, "
            f"train accuracy {_fmt(run['train_accuracy'])}; the closed form has no lambda_H "
            "to compare with, so no gap to f* is reported."
        )
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
    """The text of ``report.md``."""
    lines = [
        f"# ncgeom reproduce ({summary['preset']} preset)",
        "",
        f"Seed {summary['seed']}, device `{summary['device']}`, torch {summary['torch']}; "
        f"{summary['seconds']:.0f} s in all. Training minimises the UFM+ objective "
        "(1/N) sum CE + (lambda_W/2)||W||^2 + (lambda_H/2) sum_i ||h_i||^2 by SGD with "
        "momentum; the networks have ReLU features and a bias-free last layer.",
        "",
        "## Claims",
        "",
    ]
    lines += [f"- {sentence}" for sentence in claims(summary)]
    lines += [
        "",
        "## Runs",
        "",
        "| run | seed | counts | lambda_W | lambda_H | epochs | train acc | objective | f* | gap "
        "| NC1 | NC2_H | NC2_WWT | NC3_WH | orth. |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in summary["runs"]:
        lines.append(
            f"| {run['name']} | {run['seed']} | {_counts(run['counts'])} | "
            f"{_fmt(run['lambda_w'])} | {_fmt(run['lambda_h'])} | {run['epochs']} | "
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
            "| class | n_k | norm | predicted | margin | predicted |",
            "|---|---|---|---|---|---|",
        ]
        for k, n in enumerate(worst["counts"]):
            lines.append(
                f"| {k} | {n} | {_fmt(worst['measured_norms'][k])} | "
                f"{_fmt(worst['predicted_norms'][k])} | {_fmt(worst['measured_margins'][k])} | "
                f"{_fmt(worst['predicted_margins'][k])} |"
            )
    sweep = summary.get("threshold_sweep") or []
    if sweep:
        lines += [
            "",
            "## Threshold sweep",
            "",
            f"Counts {sweep[0]['counts']}; lambda = lambda_W = lambda_H. The minority "
            "classes are predicted to collapse when lambda^2 exceeds their critical product "
            f"{_fmt(min(sweep[0]['critical_products']))} "
            f"(lambda {_fmt(float(np.sqrt(min(sweep[0]['critical_products']))))}).",
            "",
            "| lambda | seed | train acc | head norm (pred.) | minority norm (pred.) "
            "| minority predicted |",
            "|---|---|---|---|---|---|",
        ]
        for point in sweep:
            counts = point["counts"]
            rare = int(np.argmin(counts))
            head = int(np.argmax(counts))
            minority = [k for k, n in enumerate(counts) if n == counts[rare]]
            measured = float(np.mean([point["measured_norms"][k] for k in minority]))
            lines.append(
                f"| {_fmt(point['lambda_w'])} | {point['seed']} | "
                f"{point['train_accuracy']:.3f} | {_fmt(point['measured_norms'][head])} "
                f"({_fmt(point['predicted_norms'][head])}) | {_fmt(measured)} "
                f"({_fmt(point['predicted_norms'][rare])}) | "
                f"{'alive' if point['predicted_alive'][rare] else 'collapsed'} |"
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
    figures = [Path(f).name for f in summary.get("files", []) if str(f).endswith(".png")]
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{name}]({name})" for name in figures]
    return "\n".join(lines) + "\n"
