"""``ncgeom reproduce``: the theorem's predictions tested in trained networks, offline.

Networks with ReLU penultimate features and a bias-free last layer are
trained on imbalanced subsets of two offline data sets (scikit-learn's
digits with an MLP, MNIST-1D with a small 1-D CNN; see
`ncgeom_torch.reproduce_data`) by SGD with momentum on the UFM+ objective

    f = (1/N) sum_i CE(W h_i, y_i) + (lambda_W/2)||W||_F^2 + (lambda_H/2) sum_i ||h_i||^2,

the objective whose global minimiser `ncgeom.theory.ufm_relu_optimum`
describes (the feature penalty sums over all N samples; a mini-batch of B
samples carries it scaled by N/B, see `ncgeom_torch.ufm_penalty`). The
backbone's own weights are not decayed, so training minimises exactly f
over the network's parameters. The feature penalty is ramped in linearly
over the first `RunSpec.warmup` fraction of the epochs (see the docs for the
controlled experiment that shows why).

Every run is judged by the criteria fixed in `ncgeom.criteria` (alive,
collapsed or partial; the terminal phase, with the KKT residual of
`ncgeom.theory.kkt`); runs that miss the terminal phase are reported apart and
enter no pooled figure. The headline is the threshold sweep:

(c) lambda = sqrt(lambda_W lambda_H) on a log grid across the minority
    classes' critical value (and past the head classes'), several seeds, from
    a standard and a class-balanced start; the fitted threshold over the
    predicted one with its interval (`reproduce_report.fit_threshold`), and
    the alignment exponent of the classifier (`alignment_exponent`). The full
    preset repeats the sweep at other ratios lambda_W / lambda_H and another N.

The full preset adds:

(a) NC1, NC2_H, NC2_WWT, NC3_WH, orthogonality and the gap to f* over epochs,
    for each imbalance profile; a plain weight-decay run (no feature penalty)
    beside them.
(b) Measured against predicted Gram of the class means, per-class norms and
    margins, for the most imbalanced run.
(d) The UFM itself: `ncgeom.solve.solve_ufm` on free features at the same
    counts and lambdas, against the closed form.

and a controlled run: the most imbalanced run with class-balanced
cross-entropy over the first 30% of the epochs, everything else equal (the
objective and its minimiser do not change, only the optimiser's path). The
``paper`` preset (a ResNet-18 on long-tailed CIFAR) is
`ncgeom_torch.reproduce_paper`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ncgeom.cli import Command, require_extra
from ncgeom.utils import Progress, jsonable

from .demo import FieldError, check_device, check_output_folder
from .reproduce_data import build_model, imbalance_counts, load_pool, training_subset
from .reproduce_report import imbalance_key

__all__ = [
    "FIGURE_FILES",
    "PRESETS",
    "Preset",
    "REPORT_FILES",
    "RunSpec",
    "command",
    "run_reproduce",
    "train_run",
]

#: Fraction of the epochs with class-balanced cross-entropy in the controlled run.
BALANCED_START = 0.3


@dataclass(frozen=True)
class RunSpec:
    """One training run.

    Attributes
    ----------
    name : str
        Label in the report, e.g. ``"digits step rho=10"``.
    dataset : {"digits", "mnist1d"}
    profile : {"balanced", "step", "longtail"}
    ratio : float
        Imbalance ratio rho (1 when balanced).
    counts : tuple of int
        Training samples per class.
    lambda_w, lambda_h : float
        Regularisation of the UFM+ objective. In the ``plain`` setting
        `lambda_w` is the SGD weight decay of every parameter and
        `lambda_h` is 0 (no feature penalty).
    setting : {"ufm", "plain"}
        ``ufm``: cross-entropy + the UFM+ regulariser; ``plain``: cross-entropy
        + weight decay on all parameters.
    epochs, batch_size : int
        Passes over the training set, and samples a step (0: full batch).
    lr : float
        Peak learning rate (SGD, momentum 0.9, cosine decay to 0).
    warmup : float
        Fraction of the epochs over which the feature penalty ramps from 0 to
        `lambda_h` (0: on from the first step).
    balanced_start : float
        Fraction of the epochs during which the cross-entropy is class-balanced
        (sample weights ``N / (K n_k)``); afterwards, the plain mean. The final
        objective, and its minimiser, are the same; only the path differs.
    width : int
        Feature dimension d.
    evals : int
        Evaluations over training (evenly spaced, plus the first epoch).
    seed : int
        Seed of the initialisation, the subset and the batch order.
    """

    name: str
    dataset: str
    profile: str
    ratio: float
    counts: tuple[int, ...]
    lambda_w: float
    lambda_h: float
    setting: str = "ufm"
    epochs: int = 1500
    batch_size: int = 0
    lr: float = 0.2
    warmup: float = 0.3
    balanced_start: float = 0.0
    width: int = 128
    evals: int = 15
    seed: int = 0


@dataclass(frozen=True)
class Preset:
    """Settings of one preset of ``ncgeom reproduce``.

    Attributes
    ----------
    name : str
    digits_head, mnist1d_head : int
        Samples of the largest class.
    digits_profiles, mnist1d_profiles : tuple of (profile, ratio)
        Imbalance profiles trained for experiment (a) (empty: skip the data set).
    digits_lambda, mnist1d_lambdas : float, (float, float)
        lambda_W = lambda_H of the digits runs; (lambda_W, lambda_H) of MNIST-1D.
    digits_epochs, mnist1d_epochs : int
    mnist1d_batch : int
    width : int
    plain_weight_decay : float
        Weight decay of the plain run (0: no plain run).
    controlled : bool
        Repeat the most imbalanced digits run with a class-balanced start.
    sweep_head, sweep_ratio : int, float
        Counts of the threshold sweep: a step profile on digits.
    sweep_factors : tuple of float
        Sweep points, as multiples of the critical lambda of the minority classes
        (``sqrt(lambda_W lambda_H)`` over its critical value).
    sweep_epochs, sweep_lr : int, float
        Epochs and peak learning rate of each sweep run (full batch).
    sweep_starts : tuple of {"standard", "balanced"}
        Starts of the threshold sweep: the plain objective from the first step,
        or class-balanced cross-entropy over the first `BALANCED_START` of the
        epochs (same objective and minimiser, another path).
    sweep_lambda_ratios : tuple of float
        Further sweeps (standard start) with ``lambda_W / lambda_H`` at these
        ratios and the same products: only the product should matter.
    sweep_heads : tuple of int
        Further sweeps (standard start) with these head counts (same profile,
        so another N): only ``N^2 lambda_W lambda_H`` should matter.
    seeds : int
        Seeds of each run and sweep point (seed, seed + 1, ...).
    """

    name: str
    digits_head: int = 170
    digits_profiles: tuple[tuple[str, float], ...] = (
        ("balanced", 1.0),
        ("step", 10.0),
        ("step", 100.0),
        ("longtail", 10.0),
        ("longtail", 100.0),
    )
    digits_lambda: float = 5e-4
    digits_epochs: int = 1500
    mnist1d_head: int = 1000
    mnist1d_profiles: tuple[tuple[str, float], ...] = (("step", 10.0), ("longtail", 100.0))
    mnist1d_lambdas: tuple[float, float] = (5e-3, 1e-5)
    mnist1d_epochs: int = 150
    mnist1d_batch: int = 128
    width: int = 128
    plain_weight_decay: float = 5e-4
    controlled: bool = True
    sweep_head: int = 170
    sweep_ratio: float = 10.0
    sweep_factors: tuple[float, ...] = (0.25, 0.37, 0.55, 0.82, 1.22, 1.81, 2.69, 4.0)
    sweep_epochs: int = 4000
    sweep_lr: float = 0.4
    sweep_starts: tuple[str, ...] = ("standard", "balanced")
    sweep_lambda_ratios: tuple[float, ...] = ()
    sweep_heads: tuple[int, ...] = ()
    seeds: int = 2
    evals: int = 15


#: Sweep factors of the full preset: 13 points, log-spaced from 0.25x to 4x.
FULL_FACTORS = tuple(round(float(v), 3) for v in np.geomspace(0.25, 4.0, 13))

PRESETS: dict[str, Preset] = {
    # quick: the threshold sweep only (2 seeds x 2 starts x 8 points), within 10 CPU-minutes
    "quick": Preset(
        "quick",
        digits_profiles=(),
        mnist1d_profiles=(),
        plain_weight_decay=0.0,
        controlled=False,
    ),
    "full": Preset(
        "full",
        digits_epochs=4000,
        mnist1d_head=2000,
        mnist1d_profiles=(
            ("balanced", 1.0),
            ("step", 10.0),
            ("step", 100.0),
            ("longtail", 10.0),
            ("longtail", 100.0),
        ),
        mnist1d_epochs=150,
        sweep_factors=FULL_FACTORS,
        sweep_epochs=5000,
        sweep_lambda_ratios=(0.25, 4.0),
        sweep_heads=(85,),
        seeds=5,
        evals=20,
    ),
}
#: Every ``--preset`` choice: those of `PRESETS` and ``paper`` (a CIFAR ResNet-18,
#: `ncgeom_torch.reproduce_paper`).
PRESET_CHOICES = (*PRESETS, "paper")


# --------------------------------------------------------------------------- training


def _schedule_epochs(epochs: int, evals: int) -> set[int]:
    step = max(1, epochs // max(evals, 1))
    return {1, epochs, *range(step, epochs + 1, step)}


def train_run(
    spec: RunSpec,
    x: np.ndarray,
    y: np.ndarray,
    *,
    device: str = "cpu",
    tick: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train one network and measure its geometry against the closed form.

    Parameters
    ----------
    spec : RunSpec
    x, y : ndarray
        Training inputs (N, D) and labels (N,), with ``bincount(y) == spec.counts``.
    device : str
        Torch device.
    tick : callable, optional
        Called with the number of epochs done after every epoch.

    Returns
    -------
    dict
        The run's entry of ``report.json``: the spec, ``epochs``,
        ``train_accuracy``, ``objective`` (the UFM+ objective on the whole
        training set; the plain run's own objective there), ``optimum`` (f*;
        None for the plain run), the final metrics, per-class norms and
        margins, ``history`` and ``seconds``.

    Examples
    --------
    >>> from ncgeom_torch.reproduce_data import imbalance_counts, load_pool, training_subset
    >>> counts = tuple(imbalance_counts(20, "step", 4))
    >>> x, y = training_subset(*load_pool("digits", 20), counts)
    >>> spec = RunSpec("tiny", "digits", "step", 4.0, counts, 1e-3, 1e-3, epochs=5, width=16)
    >>> run = train_run(spec, x, y)
    >>> run["epochs"], len(run["history"]) > 1
    (5, True)
    """
    import torch
    import torch.nn.functional as F

    from ncgeom.theory import ufm_relu_optimum

    from .regularizer import ufm_penalty

    _check_spec(spec)
    if np.bincount(y, minlength=len(spec.counts)).tolist() != list(spec.counts):
        msg = f"`y` must hold spec.counts {list(spec.counts)} samples a class"
        raise ValueError(msg)
    torch.manual_seed(spec.seed)
    dev = torch.device(device)
    inputs = torch.as_tensor(x, device=dev)
    labels = torch.as_tensor(y, device=dev)
    num = len(y)
    model = build_model(spec.dataset, spec.width, len(spec.counts)).to(dev)
    body, classifier = model[0], model[1]
    plain = spec.setting == "plain"
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=spec.lr,
        momentum=0.9,
        weight_decay=spec.lambda_w if plain else 0.0,
    )
    batch = num if spec.batch_size <= 0 else min(spec.batch_size, num)
    steps_per_epoch = math.ceil(num / batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, spec.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(spec.seed)
    theory = None if plain else ufm_relu_optimum(spec.counts, spec.lambda_w, spec.lambda_h)
    evaluate_at = _schedule_epochs(spec.epochs, spec.evals)
    history: list[dict[str, Any]] = []
    warm_epochs = spec.warmup * spec.epochs
    class_weights = torch.as_tensor(
        [num / (len(spec.counts) * n) for n in spec.counts], dtype=inputs.dtype, device=dev
    )
    started = time.perf_counter()
    for epoch in range(1, spec.epochs + 1):
        ramp = 1.0 if warm_epochs <= 0 else min(1.0, (epoch - 1) / warm_epochs)
        weights = class_weights if epoch <= spec.balanced_start * spec.epochs else None
        order = torch.randperm(num, generator=generator).to(dev) if batch < num else None
        for start in range(0, num, batch):
            rows = None if order is None else order[start : start + batch]
            xb = inputs if rows is None else inputs[rows]
            yb = labels if rows is None else labels[rows]
            features = body(xb)
            loss = F.cross_entropy(classifier(features), yb, weight=weights)
            if not plain:
                loss = loss + ufm_penalty(
                    classifier.weight,
                    features,
                    lambda_w=spec.lambda_w,
                    lambda_h=spec.lambda_h * ramp,
                    num_samples=num,
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if epoch in evaluate_at:
            history.append({"epoch": epoch, **_evaluate(spec, model, inputs, labels, theory)})
        if tick is not None:
            tick(epoch)
    final = history[-1]
    for entry in history[:-1]:
        del entry["feature_gram"]  # kept for the final evaluation only
    checks = {} if plain else final_checks(spec, model, inputs, labels)
    return {
        "name": spec.name,
        "dataset": spec.dataset,
        "model": "mlp" if spec.dataset == "digits" else "cnn1d",
        "profile": spec.profile,
        "ratio": spec.ratio,
        "setting": spec.setting,
        "seed": spec.seed,
        "counts": list(spec.counts),
        "lambda_w": spec.lambda_w,
        "lambda_h": spec.lambda_h,
        "epochs": spec.epochs,
        "batch_size": batch,
        "lr": spec.lr,
        "warmup": spec.warmup,
        "balanced_start": spec.balanced_start,
        "width": spec.width,
        "optimum": None if theory is None else float(theory.objective),
        "predicted_alive": None if theory is None else theory.alive.tolist(),
        "predicted_norms": None if theory is None else theory.feature_norms.tolist(),
        "predicted_margins": None if theory is None else theory.margins.tolist(),
        **{key: value for key, value in final.items() if key != "epoch"},
        **checks,
        "history": history,
        "seconds": time.perf_counter() - started,
    }


def _evaluate(spec: RunSpec, model: Any, inputs: Any, labels: Any, theory: Any) -> dict[str, Any]:
    """Metrics of the whole training set (eval pass, no gradients)."""
    import torch
    import torch.nn.functional as F

    from .tracker import NCTracker

    body, classifier = model[0], model[1]
    with torch.no_grad():
        features = torch.cat([body(chunk) for chunk in torch.split(inputs, 4096)])
        logits = classifier(features)
        cross_entropy = float(F.cross_entropy(logits, labels))
        accuracy = float((logits.argmax(dim=1) == labels).double().mean())
        weight = classifier.weight.double()
        feats = features.double()
        if spec.setting == "plain":
            params = sum(float(p.double().pow(2).sum()) for p in model.parameters())
            objective = cross_entropy + 0.5 * spec.lambda_w * params
        else:
            objective = (
                cross_entropy
                + 0.5 * spec.lambda_w * float(weight.pow(2).sum())
                + 0.5 * spec.lambda_h * float(feats.pow(2).sum())
            )
        # per-class mean of the logits of the true class minus the best other one
        true = logits.gather(1, labels[:, None])[:, 0]
        other = logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
    tracker = NCTracker(len(spec.counts), dtype=torch.float64)
    tracker.observe(features, labels)
    lambdas = {"lambda_w": spec.lambda_w, "lambda_h": spec.lambda_h} if theory is not None else {}
    with warnings.catch_warnings():
        # collapsed (zero) class means are an expected outcome here, not a misuse:
        # the metrics they leave undefined are None in the report
        warnings.simplefilter("ignore", UserWarning)
        report = tracker.report(classifier, **lambdas).to_dict()
    means = tracker.stats.means.double()
    counts = torch.as_tensor(spec.counts, device=labels.device)
    margin = torch.zeros(len(spec.counts), dtype=torch.float64, device=labels.device)
    margin.index_add_(0, labels, (true - other).double())
    return {
        "train_accuracy": accuracy,
        "cross_entropy": cross_entropy,
        "objective": objective,
        "gap": None if theory is None else objective / float(theory.objective) - 1.0,
        "nc1": report.get("nc1"),
        "gof_error": report.get("gof_error"),
        "classifier_gram_error": report.get("classifier_gram_error"),
        "logit_structure_error": report.get("logit_structure_error"),
        "orthogonality_error": report.get("orthogonality_error"),
        "etf_error": report.get("etf_error"),
        "scaled_alignment_error": report.get("scaled_alignment_error"),
        "self_duality_error": report.get("self_duality_error"),
        "measured_norms": means.norm(dim=1).tolist(),
        "measured_margins": (margin / counts).tolist(),
        "feature_gram": (means @ means.T).tolist(),
    }


def final_checks(spec: RunSpec, model: Any, inputs: Any, labels: Any) -> dict[str, Any]:
    """What the criteria and the alignment fit need from a trained UFM+ network.

    - ``kkt_residual`` (and its ``kkt_parts``): `ncgeom.theory.kkt.ufm_kkt_residual`
      at the final features (the whole training set) and classifier, in float64;
    - ``grad_norm``: ``||grad f|| / (||grad CE|| + ||grad penalty||)`` over every
      parameter of the network, full batch: how far the two forces that cancel at
      a stationary point are from cancelling;
    - ``class_accuracy``: train accuracy of each class;
    - ``alignment``: `ncgeom_torch.reproduce_report.alignment_exponent` of the
      classifier against the class means;
    - ``depth``: NC1 at each ReLU and whether collapse progresses with depth.
    """
    import torch
    import torch.nn.functional as F

    from ncgeom.theory.kkt import ufm_kkt_parts

    from .regularizer import ufm_penalty
    from .reproduce_report import alignment_exponent

    body, classifier = model[0], model[1]
    params = [p for p in model.parameters() if p.requires_grad]
    features = body(inputs)
    cross_entropy = F.cross_entropy(classifier(features), labels)
    penalty = ufm_penalty(
        classifier.weight,
        features,
        lambda_w=spec.lambda_w,
        lambda_h=spec.lambda_h,
        num_samples=len(labels),
    )
    g_ce = torch.autograd.grad(cross_entropy, params, retain_graph=True)
    g_pen = torch.autograd.grad(penalty, params)

    def norm(grads: Any) -> float:
        return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))

    total = norm([a + b for a, b in zip(g_ce, g_pen, strict=True)])
    scale = norm(g_ce) + norm(g_pen)
    h = features.detach().double().cpu().numpy()
    w = classifier.weight.detach().double().cpu().numpy()
    y = labels.cpu().numpy()
    k = len(spec.counts)
    parts = ufm_kkt_parts(w, h, y, k, spec.lambda_w, spec.lambda_h)
    predicted = (h @ w.T).argmax(axis=1)
    accuracy = [float(np.mean(predicted[y == c] == c)) for c in range(k)]
    means = np.stack([h[y == c].mean(axis=0) for c in range(k)])
    return {
        "depth": _depth(model, inputs, labels),
        "kkt_residual": max(parts.values()),
        "kkt_parts": parts,
        "grad_norm": total / scale if scale > 0 else 0.0,
        "class_accuracy": accuracy,
        "alignment": alignment_exponent(w, means, np.asarray(spec.counts)),
    }


def _depth(model: Any, inputs: Any, labels: Any) -> dict[str, Any]:
    """NC1 at every ReLU of the network, and whether collapse progresses with depth
    (`ncgeom_torch.depth_runs.depth_of`; criterion of `ncgeom.depth`)."""
    from torch import nn

    from .depth_runs import depth_of

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # dead features: NaN with a reason
        report = depth_of(model, inputs, labels, layers=nn.ReLU, classifier=model[1])
    progression = report.progression()
    return {
        "layers": list(report.layers),
        "nc1": [report.value(layer, "nc1") for layer in report.layers],
        "progresses": bool(progression.progresses),
        "sentence": progression.sentence,
    }


def _check_spec(spec: RunSpec) -> None:
    if spec.setting not in ("ufm", "plain"):
        msg = f"`setting` must be 'ufm' or 'plain'; got {spec.setting!r}"
        raise ValueError(msg)
    for name in ("epochs", "width", "evals"):
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            msg = f"`{name}` must be a positive integer; got {value!r}"
            raise ValueError(msg)
    if isinstance(spec.batch_size, bool) or not isinstance(spec.batch_size, int):
        msg = f"`batch_size` must be an integer (0: full batch); got {spec.batch_size!r}"
        raise ValueError(msg)
    positive = ("lr", "lambda_w") if spec.setting == "plain" else ("lr", "lambda_w", "lambda_h")
    for name in positive:
        value = getattr(spec, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            msg = f"`{name}` must be a finite number > 0; got {value!r}"
            raise ValueError(msg)
    for name in ("warmup", "balanced_start"):
        value = getattr(spec, name)
        if not (isinstance(value, (int, float)) and 0 <= value < 1):
            msg = f"`{name}` must lie in [0, 1); got {value!r}"
            raise ValueError(msg)


# --------------------------------------------------------------------------- UFM check


def ufm_check(
    counts: list[int], lambda_w: float, lambda_h: float, seed: int = 0
) -> dict[str, Any]:
    """Gradient-based minimisation of the UFM+ on free features, against the closed form.

    Examples
    --------
    >>> check = ufm_check([30, 20, 3, 1], 2e-2, 2e-2)
    >>> check["objective_gap"] < 1e-6, check["alive_agree"]
    (True, True)
    """
    from ncgeom.solve import solve_ufm
    from ncgeom.theory import ufm_relu_optimum

    started = time.perf_counter()
    opt = ufm_relu_optimum(counts, lambda_w, lambda_h)
    solution = solve_ufm(counts, lambda_w, lambda_h, len(counts), seed=seed)
    norms = np.linalg.norm(np.asarray(solution.means, dtype=np.float64), axis=1)
    predicted = np.asarray(opt.feature_norms, dtype=np.float64)
    scale = float(predicted.max()) if predicted.max() > 0 else 1.0
    alive_solved = norms > 1e-6 * scale
    return {
        "counts": list(counts),
        "lambda_w": lambda_w,
        "lambda_h": lambda_h,
        "objective": float(solution.objective),
        "optimum": float(opt.objective),
        "objective_gap": float(solution.objective) / float(opt.objective) - 1.0,
        "norm_error": float(np.abs(norms - predicted).max() / scale),
        "alive_agree": bool(np.array_equal(alive_solved, np.asarray(opt.alive))),
        "converged": bool(solution.converged),
        "seconds": time.perf_counter() - started,
    }


# --------------------------------------------------------------------------- the suite


def _plan(preset: Preset, seed: int) -> list[tuple[str, RunSpec]]:
    """Every training run of a preset, in order: (experiment, spec)."""
    plan: list[tuple[str, RunSpec]] = []
    lam = preset.digits_lambda
    most: RunSpec | None = None
    for s in range(seed, seed + preset.seeds):
        for profile, ratio in preset.digits_profiles:
            counts = tuple(imbalance_counts(preset.digits_head, profile, ratio))
            spec = RunSpec(
                _name("digits", profile, ratio),
                "digits",
                profile,
                ratio,
                counts,
                lam,
                lam,
                epochs=preset.digits_epochs,
                width=preset.width,
                evals=preset.evals,
                seed=s,
            )
            plan.append(("a", spec))
            if s == seed and (most is None or imbalance_key(counts) > imbalance_key(most.counts)):
                most = spec
        lw, lh = preset.mnist1d_lambdas
        for profile, ratio in preset.mnist1d_profiles:
            counts = tuple(imbalance_counts(preset.mnist1d_head, profile, ratio))
            spec = RunSpec(
                _name("mnist1d", profile, ratio),
                "mnist1d",
                profile,
                ratio,
                counts,
                lw,
                lh,
                epochs=preset.mnist1d_epochs,
                batch_size=preset.mnist1d_batch,
                lr=0.1,
                width=preset.width,
                evals=preset.evals,
                seed=s,
            )
            plan.append(("a", spec))
    if most is not None and preset.plain_weight_decay > 0:
        plan.append(
            (
                "plain",
                replace(
                    most,
                    name=most.name + " plain weight decay",
                    setting="plain",
                    lambda_w=preset.plain_weight_decay,
                    lambda_h=0.0,
                    warmup=0.0,
                ),
            )
        )
    if most is not None and preset.controlled:
        plan.append(
            (
                "controlled",
                replace(most, name=most.name + " balanced start", balanced_start=BALANCED_START),
            )
        )
    plan += [("sweep/" + group, spec) for group, spec in sweep_plan(preset, seed)]
    return plan


def sweep_groups(preset: Preset) -> list[tuple[str, int, float, str]]:
    """The threshold sweeps of a preset: (group, head count, lambda_W / lambda_H, start).

    Examples
    --------
    >>> [g[0] for g in sweep_groups(PRESETS["full"])]
    ['standard', 'balanced', 'lambda ratio 0.25', 'lambda ratio 4', 'head 85']
    """
    groups = [(start, preset.sweep_head, 1.0, start) for start in preset.sweep_starts]
    groups += [
        (f"lambda ratio {ratio:g}", preset.sweep_head, ratio, "standard")
        for ratio in preset.sweep_lambda_ratios
    ]
    groups += [(f"head {head}", head, 1.0, "standard") for head in preset.sweep_heads]
    return groups


def sweep_plan(preset: Preset, seed: int) -> list[tuple[str, RunSpec]]:
    """The threshold-sweep runs of a preset: (group, spec), seeds outermost.

    Point ``t`` of a group has ``sqrt(lambda_W lambda_H) = t * lambda_c``, with
    ``lambda_c`` the critical lambda of the group's rarest class, and
    ``lambda_W / lambda_H`` the group's ratio.
    """
    plan = []
    for s in range(seed, seed + preset.seeds):
        for group, head, ratio, start in sweep_groups(preset):
            counts = tuple(imbalance_counts(head, "step", preset.sweep_ratio))
            critical = _minority_lambda(counts)
            for factor in preset.sweep_factors:
                lam = critical * factor
                spec = RunSpec(
                    f"sweep {group} x{factor:g}",
                    "digits",
                    "step",
                    preset.sweep_ratio,
                    counts,
                    lam * math.sqrt(ratio),
                    lam / math.sqrt(ratio),
                    epochs=preset.sweep_epochs,
                    lr=preset.sweep_lr,
                    balanced_start=BALANCED_START if start == "balanced" else 0.0,
                    width=preset.width,
                    evals=5,
                    seed=s,
                )
                plan.append((group, spec))
    return plan


def _minority_lambda(counts: tuple[int, ...]) -> float:
    """lambda = lambda_W = lambda_H at which the rarest class reaches its threshold."""
    from ncgeom.theory import critical_regularization

    return math.sqrt(float(np.min(np.asarray(critical_regularization(list(counts))))))


def _name(dataset: str, profile: str, ratio: float) -> str:
    return (
        f"{dataset} {profile}" if profile == "balanced" else f"{dataset} {profile} rho={ratio:g}"
    )


class _Reporter:
    """Progress over all runs: a bar on a terminal, else a log line every 5%."""

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = max(total, 1)
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.bar = Progress(100, self.stream) if enabled else None
        self.done = 0
        self.logged = -1
        self.label = ""
        self.started = time.perf_counter()

    def start(self, label: str) -> None:
        self.label = label

    def to(self, done: int) -> None:
        self.done = done
        if not self.enabled or self.bar is None:
            return
        percent = 100 * self.done // self.total
        if self.bar.active:
            self.bar.update(percent, self.label)
            return
        if percent // 5 > self.logged:
            self.logged = percent // 5
            elapsed = time.perf_counter() - self.started
            self.stream.write(f"[{percent:3d}%] {elapsed:6.0f} s  {self.label}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_reproduce(
    preset: str | Preset = "quick",
    *,
    out: str | Path = "ncgeom-reproduce",
    seed: int = 0,
    device: str = "cpu",
    plots: bool = True,
    progress: bool = True,
    jobs: int = 1,
) -> dict[str, Any]:
    """Run every experiment of a preset and write ``report.json``, ``report.md`` and figures.

    Parameters
    ----------
    preset : {"quick", "full"} or Preset
        (the ``paper`` preset is `ncgeom_torch.reproduce_paper.run_paper`)
    out : str or Path
        Output folder (created if needed).
    seed : int
        First seed; the full preset also uses the next ones.
    device : str
        Torch device, e.g. ``"cuda"``.
    plots : bool
        Write the PNG figures (needs matplotlib).
    progress : bool
        Show progress on stderr.
    jobs : int
        Runs trained at once, each in its own process on one torch thread
        (CPU devices only). The results do not depend on `jobs`: every run is
        seeded by its spec and trains on one thread either way.

    Returns
    -------
    dict
        The content of ``report.json``: ``preset``, ``seed``, ``device``,
        ``machine``, ``criteria`` (the fixed definitions and bands),
        ``threshold`` (the headline fit: ``fitted_over_predicted``, ``ci``,
        ``seeds``, ``method``, and ``by_group``, ``head``), ``alignment``
        (``exponent``, ``ci``, ...), ``claims`` (name, prediction, measured,
        band, verdict), ``not_terminal`` (runs reported apart), ``runs``,
        ``threshold_sweep``, ``ufm``, ``seconds``, ``files``.

    Raises
    ------
    ValueError
        (`ncgeom_torch.demo.FieldError`, naming the argument) Before any
        training: an unknown preset, a seed outside [0, 2**63 - seeds], a
        device this machine does not have, an output folder that is a file,
        is not writable or holds a folder in place of a file it writes.

    Examples
    --------
    >>> tiny = Preset("tiny", digits_head=12, digits_profiles=(("step", 4.0),),
    ...               digits_epochs=3, mnist1d_profiles=(), width=16, controlled=False,
    ...               plain_weight_decay=0, sweep_head=12, sweep_factors=(0.5,), sweep_epochs=3,
    ...               sweep_starts=("standard",), seeds=1)
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     summary = run_reproduce(tiny, out=tmp, plots=False, progress=False)
    >>> len(summary["runs"]), len(summary["threshold_sweep"])
    (1, 1)
    """
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise FieldError("preset", f"must be one of {tuple(PRESETS)}; got {preset!r}")
        preset = PRESETS[preset]
    if not isinstance(preset, Preset):
        msg = f"`preset` must be a preset name or a Preset; got {type(preset).__name__}"
        raise TypeError(msg)
    # Every seed used, seed .. seed + preset.seeds - 1, must suit torch.manual_seed.
    last = 2**63 - preset.seeds
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= last:
        raise FieldError(
            "seed", f"must be an integer in [0, 2**63 - {preset.seeds}]; got {seed!r}"
        )
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise FieldError("jobs", f"must be an integer >= 1; got {jobs!r}")
    import torch

    check_device(device)
    if jobs > 1 and torch.device(device).type != "cpu":
        raise FieldError(
            "jobs", f"must be 1 on device {device!r} (jobs run on the CPU); got {jobs}"
        )
    files = REPORT_FILES + (FIGURE_FILES if plots else ())
    out = check_output_folder(out, "out", files)

    plan = _plan(preset, seed)
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        # One thread: the numbers then do not depend on the machine's core count, and
        # these small layers run faster on one thread than on several sharing a CPU.
        torch.set_num_threads(1)
    try:
        results, seconds = _train_all(plan, preset, seed, device, progress, jobs)
    finally:
        torch.set_num_threads(threads)
    summary = _summarise(preset, seed, device, results, seconds)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.json", out / "report.md"]
    if plots:
        from .reproduce_plots import write_figures

        files += write_figures(out, summary)
    summary["files"] = [str(path) for path in files]
    from .reproduce_report import markdown

    files[0].write_text(json.dumps(jsonable(summary), indent=1) + "\n")
    files[1].write_text(markdown(summary))
    return summary


def _train_all(
    plan: list[tuple[str, RunSpec]],
    preset: Preset,
    seed: int,
    device: str,
    progress: bool,
    jobs: int = 1,
) -> tuple[dict[str, list[dict[str, Any]]], float]:
    reporter = _Reporter(sum(_cost(spec) * spec.epochs for _, spec in plan), enabled=progress)
    started = time.perf_counter()
    if jobs == 1:
        runs = []
        for _, spec in plan:
            reporter.start(spec.name)
            base, cost = reporter.done, _cost(spec)
            runs.append(
                _train_planned(
                    spec, preset, seed, device, lambda e, b=base, c=cost: reporter.to(b + c * e)
                )
            )
    else:
        runs = _train_parallel(plan, preset, seed, jobs, reporter)
    reporter.close()
    results: dict[str, list[dict[str, Any]]] = {
        "a": [],
        "plain": [],
        "controlled": [],
        "sweep": [],
    }
    for (experiment, _), run in zip(plan, runs, strict=True):
        kind, _, group = experiment.partition("/")
        run["experiment"] = kind
        if group:
            run["group"] = group
        results[kind].append(run)
    return results, time.perf_counter() - started


#: Data pools of this process, by (dataset, head, seed): each is loaded once.
_POOLS: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]] = {}


def _train_planned(
    spec: RunSpec,
    preset: Preset,
    seed: int,
    device: str,
    tick: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train one run of the plan on its training subset of the seed's data pool."""
    head = preset.mnist1d_head if spec.dataset == "mnist1d" else max(spec.counts)
    key = (spec.dataset, head, seed)
    if key not in _POOLS:
        _POOLS[key] = load_pool(spec.dataset, head, seed=seed)
    x, y = training_subset(*_POOLS[key], spec.counts, seed=spec.seed)
    return train_run(spec, x, y, device=device, tick=tick)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _train_parallel(
    plan: list[tuple[str, RunSpec]], preset: Preset, seed: int, jobs: int, reporter: _Reporter
) -> list[dict[str, Any]]:
    """Train the plan's runs in `jobs` worker processes, longest first; results in plan order."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    order = sorted(range(len(plan)), key=lambda i: -_cost(plan[i][1]) * plan[i][1].epochs)
    runs: list[dict[str, Any]] = [{} for _ in plan]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_one_thread) as pool:
        futures = {pool.submit(_train_planned, plan[i][1], preset, seed, "cpu"): i for i in order}
        for future in as_completed(futures):
            i = futures[future]
            runs[i] = future.result()
            spec = plan[i][1]
            reporter.start(spec.name)
            reporter.to(reporter.done + _cost(spec) * spec.epochs)
    return runs


def _summarise(
    preset: Preset,
    seed: int,
    device: str,
    results: dict[str, list[dict[str, Any]]],
    seconds: float,
) -> dict[str, Any]:
    import torch

    started = time.perf_counter()
    sweep = [_sweep_point(run) for run in results["sweep"]]
    checks = []
    seen: set[tuple[Any, ...]] = set()
    for run in results["a"]:
        key = (tuple(run["counts"]), run["lambda_w"], run["lambda_h"])
        if key not in seen:
            seen.add(key)
            checks.append({"run": run["name"], **ufm_check(*key[:1], *key[1:], seed=seed)})
    summary: dict[str, Any] = {
        "preset": preset.name,
        "seed": seed,
        "device": device,
        "torch": torch.__version__,
        "runs": results["a"] + results["plain"] + results["controlled"],
        "threshold_sweep": sweep,
        "ufm": checks,
        "machine": machine(),
        "train_seconds": seconds,
    }
    from .reproduce_report import evidence

    summary.update(evidence(summary))
    summary["seconds"] = seconds + time.perf_counter() - started
    return summary


def machine() -> str:
    """The machine in words: processor, cores, OS and Python, for numbers that depend on it."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            names = [
                line.split(":", 1)[1].strip() for line in info if line.startswith("model name")
            ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def _cost(spec: RunSpec) -> int:
    """Relative cost of one epoch: samples, times about 15 for the CNN (measured on a CPU)."""
    return sum(spec.counts) * (15 if spec.dataset == "mnist1d" else 1)


def _sweep_point(run: dict[str, Any]) -> dict[str, Any]:
    from ncgeom.theory import critical_regularization

    return {
        "name": run["name"],
        "group": run.get("group", "standard"),
        "lambda_w": run["lambda_w"],
        "lambda_h": run["lambda_h"],
        "counts": run["counts"],
        "seed": run["seed"],
        "balanced_start": run["balanced_start"],
        "kkt_residual": run.get("kkt_residual"),
        "kkt_parts": run.get("kkt_parts"),
        "grad_norm": run.get("grad_norm"),
        "class_accuracy": run.get("class_accuracy"),
        "alignment": run.get("alignment"),
        "depth": run.get("depth"),
        "scaled_alignment_error": run.get("scaled_alignment_error"),
        "self_duality_error": run.get("self_duality_error"),
        "nc1": run.get("nc1"),
        "critical_products": np.asarray(critical_regularization(run["counts"])).tolist(),
        "predicted_alive": run["predicted_alive"],
        "measured_norms": run["measured_norms"],
        "predicted_norms": run["predicted_norms"],
        "train_accuracy": run["train_accuracy"],
        "objective": run["objective"],
        "optimum": run["optimum"],
        "epochs": run["epochs"],
        "norm_history": [
            {"epoch": entry["epoch"], "measured_norms": entry["measured_norms"]}
            for entry in run["history"]
        ],
    }


# --------------------------------------------------------------------------- command line


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=PRESET_CHOICES,
        default="quick",
        help="quick: the threshold sweep, 2 seeds x 2 starts x 8 points, under 10 CPU-minutes; "
        "full: every experiment, 5 seeds, lambda-ratio and N sweeps (CPU-hours); paper: a "
        "ResNet-18 on long-tailed CIFAR from --data-root (a GPU and hours)",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    parser.add_argument(
        "--out",
        default="ncgeom-reproduce",
        help="output folder, created if missing (checked before any training)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="first seed, >= 0 (quick uses 2 seeds, full 5)"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained at once, one process and one torch thread each (CPU only); the "
        "numbers do not depend on it",
    )
    from .reproduce_paper import add_paper_arguments

    add_paper_arguments(parser)


def _paper_only(args: argparse.Namespace) -> list[str]:
    """The options of the ``paper`` preset that `args` sets away from their defaults.

    Given with another preset they would be ignored silently; the command
    refuses them instead.
    """
    from .reproduce_paper import add_paper_arguments

    defaults = argparse.ArgumentParser(add_help=False)
    for flag in ("--device", "--out", "--seed", "--jobs"):
        defaults.add_argument(flag)
    add_paper_arguments(defaults)
    reference = vars(defaults.parse_args([]))
    return [
        "--" + name.replace("_", "-")
        for name, value in reference.items()
        if name not in ("device", "out", "seed", "jobs") and getattr(args, name, value) != value
    ]


#: Files `run_reproduce` writes into its output folder (with `plots`, the figures of
#: `ncgeom_torch.reproduce_plots.write_figures` too).
REPORT_FILES = ("report.json", "report.md")
FIGURE_FILES = (
    "training.png",
    "per_class.png",
    "threshold.png",
    "exponent.png",
    "controlled.png",
)


def _run(args: argparse.Namespace) -> int:
    if args.preset == "paper":
        if args.jobs != 1:
            msg = f"`--jobs` applies to --preset quick and full only; got {args.jobs} with paper"
            raise ValueError(msg)
        from .reproduce_paper import run_from_args

        return run_from_args(args)
    extra = _paper_only(args)
    if extra:
        msg = (
            f"`{extra[0]}` applies to --preset paper only; got it with --preset "
            f"{args.preset} (drop it, or pass --preset paper)"
        )
        raise ValueError(msg)
    modules = {
        "torch": "training",
        "sklearn": "the digits data set",
        "mnist1d": "the MNIST-1D data set",
    }
    if not args.no_plots:
        modules["matplotlib"] = "the figures; or pass --no-plots"
    require_extra("reproduce", modules, needed_by="`ncgeom reproduce`")
    try:
        summary = run_reproduce(
            args.preset,
            out=args.out,
            seed=args.seed,
            device=args.device,
            plots=not args.no_plots,
            jobs=args.jobs,
        )
    except FieldError as err:
        raise err.for_option() from None
    for claim in summary["claims"]:
        print(f"{claim['name']}: {claim['measured']} -> {claim['verdict']}")
    trained = len(summary["runs"]) + len(summary["threshold_sweep"])
    print(
        f"{trained} runs ({len(summary['not_terminal'])} missed the terminal phase) in "
        f"{summary['seconds']:.0f} s on {summary['machine']}"
    )
    print("wrote " + ", ".join(summary["files"]))
    return 0


#: The ``ncgeom reproduce`` subcommand (entry point ``ncgeom.commands: reproduce``).
command = Command(
    "train networks on imbalanced data offline and test the theorem's predictions",
    _add_arguments,
    _run,
)
