"""The ``paper`` preset of ``ncgeom reproduce``: a CIFAR ResNet-18 on long-tailed CIFAR.

A `ncgeom_torch.resnet.resnet18` (bias-free last layer ``fc``, non-negative
pooled features) is trained on a long-tailed subset of CIFAR-10 or CIFAR-100
(`ncgeom_torch.cifar`, read from a local copy: nothing is downloaded) by SGD
with momentum on the UFM+ objective

    f = (1/N) sum_i CE(W h_i, y_i) + (lambda_W/2)||W||_F^2 + (lambda_H/2) sum_i ||h_i||^2,

as the other presets do: the feature penalty of a batch of B samples is
scaled by N/B (`ncgeom_torch.ufm_penalty`), it ramps in linearly over the
first `PaperConfig.warmup` fraction of the epochs, and the backbone's own
weights are not decayed. lambda = lambda_W = lambda_H is set as a multiple
(`PaperConfig.factors`) of the critical lambda of the rarest class, so that
factors below 1 predict every class alive and factors above 1 predict the
rarest classes to collapse. The images are scaled by the per-channel mean and
standard deviation of the training subset; there is no data augmentation
(the theory speaks of the features of a fixed training set).

After training, the features of the whole training subset (eval mode) are
measured with `NCTracker` against `ncgeom.theory.ufm_relu_optimum`, each
class is judged alive, collapsed or partial by the fixed criteria of
`ncgeom.criteria`, and the terminal phase is checked (train accuracy on the
classes that did not collapse, the relative KKT residual of the UFM+ objective at
the final features and classifier, and the gradient norm of the network's
parameters). Runs that miss the terminal phase are reported apart and kept
out of the tallies.

A full run needs a GPU and hours (CIFAR-10-LT with imbalance 100 is 12,406
images; the default 200 epochs are 2.5 million images a run).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ncgeom.utils import jsonable

from .demo import FieldError, check_device, check_output_folder

__all__ = [
    "PAPER_FILES",
    "RUN_METRICS",
    "PaperConfig",
    "add_paper_arguments",
    "config_from_args",
    "paper_markdown",
    "run_from_args",
    "run_paper",
    "synthetic_throughput",
    "train_paper_run",
]

#: Files `run_paper` writes into its output folder.
PAPER_FILES = ("report.json", "report.md")


@dataclass(frozen=True)
class PaperConfig:
    """Settings of the ``paper`` preset.

    Attributes
    ----------
    data_root : str
        Folder holding ``cifar-10-batches-py/`` or ``cifar-100-python/``.
    dataset : {"cifar10", "cifar100"}
    profile : {"exp", "step"}
        Long-tail profile (`ncgeom_torch.cifar.long_tailed_counts`).
    imbalance : float
        Largest class count over the smallest.
    max_per_class : int
        Cap on ``n_max`` (0: the full class, 5000 or 500); smaller values give
        shorter runs with the same profile.
    factors : tuple of float
        lambda = lambda_W = lambda_H of each run, as multiples of the critical
        lambda of the rarest class.
    seeds : int
        Runs per factor (seed, seed + 1, ...); the subset is drawn once.
    epochs, batch_size : int
    lr : float
        Peak learning rate (SGD, momentum 0.9, cosine decay to 0).
    warmup : float
        Fraction of the epochs over which the feature penalty ramps in.
    balanced_start : float
        Fraction of the epochs with class-balanced cross-entropy (sample
        weights ``N / (K n_k)``), the plain mean afterwards: the objective and
        its minimiser are the same, only the path differs (0: the standard
        start).
    width : int
        Channels of the first stage of the ResNet-18 (64: the standard one).
    seed : int
        Seed of the subset and the first run.
    device : str
    mixed_precision : bool
        bfloat16 autocast for the backbone on CUDA (the penalty and the
        classifier stay float32); ignored on the CPU.
    depth : bool
        Also report collapse through depth: the metrics of the pooled output
        of every block (`ncgeom_torch.resnet.BLOCK_NAMES`) on the training
        subset, with the progression criterion of `ncgeom.depth`.
    """

    data_root: str = "data"
    dataset: str = "cifar10"
    profile: str = "exp"
    imbalance: float = 100.0
    max_per_class: int = 0
    factors: tuple[float, ...] = (0.5, 2.0)
    seeds: int = 1
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    warmup: float = 0.3
    balanced_start: float = 0.0
    width: int = 64
    seed: int = 0
    device: str = "cpu"
    mixed_precision: bool = True
    depth: bool = True


# --------------------------------------------------------------------------- training


def _channel_stats(images: Any) -> tuple[Any, Any]:
    """Per-channel mean and standard deviation of uint8 images (N, 3, H, W), as (1, C, 1, 1)."""
    import torch

    total = torch.zeros(images.shape[1], dtype=torch.float64, device=images.device)
    square = torch.zeros_like(total)
    for chunk in torch.split(images, 2048):
        values = chunk.to(torch.float64)
        total += values.sum(dim=(0, 2, 3))
        square += values.pow(2).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (square / count - mean.pow(2)).clamp_min(1e-12).sqrt()
    return mean.float()[None, :, None, None], std.float()[None, :, None, None]


class _Step:
    """One SGD step on a batch of uint8 images: CE + the UFM+ penalty (train mode)."""

    def __init__(
        self,
        model: Any,
        *,
        mean: Any,
        std: Any,
        num_samples: int,
        lambda_w: float,
        lambda_h: float,
        lr: float,
        total_steps: int,
        mixed_precision: bool,
    ) -> None:
        import torch

        self.model, self.mean, self.std = model, mean, std
        self.num_samples = num_samples
        self.lambda_w, self.lambda_h = lambda_w, lambda_h
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, max(total_steps, 1)
        )
        device = mean.device
        self.autocast = mixed_precision and device.type == "cuda"
        self.device_type = device.type

    def inputs(self, images: Any) -> Any:
        return (images.float() - self.mean) / self.std

    def __call__(self, images: Any, labels: Any, ramp: float, weight: Any = None) -> Any:
        import torch
        import torch.nn.functional as F

        from .regularizer import ufm_penalty

        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.autocast):
            features = self.model.features(self.inputs(images))
        features = features.float()
        loss = F.cross_entropy(self.model.fc(features), labels, weight=weight) + ufm_penalty(
            self.model.fc.weight,
            features,
            lambda_w=self.lambda_w,
            lambda_h=self.lambda_h * ramp,
            num_samples=self.num_samples,
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        return loss.detach()


def _epoch(
    step: _Step,
    images: Any,
    labels: Any,
    batch: int,
    generator: Any,
    ramp: float,
    weight: Any = None,
) -> Any:
    """One pass in a random order; returns the mean batch loss (a tensor, no host read).

    `weight`: class weights of the cross-entropy (None: the plain mean).
    """
    import torch

    step.model.train()
    order = torch.randperm(images.shape[0], generator=generator).to(images.device)
    losses = []
    for start in range(0, images.shape[0], batch):
        rows = order[start : start + batch]
        if rows.shape[0] < 2 and start > 0:
            break  # batch norm needs two samples; the remainder waits for the next epoch
        losses.append(step(images[rows], labels[rows], ramp, weight))
    return torch.stack(losses).mean()


def _features(model: Any, images: Any, mean: Any, std: Any, chunk: int = 1000) -> Any:
    """float64 pooled features of the images in eval mode, without gradients."""
    import torch

    model.eval()
    with torch.no_grad():
        parts = [
            model.features((part.float() - mean) / std).double()
            for part in torch.split(images, chunk)
        ]
    return torch.cat(parts)


def _gradient_norm(
    model: Any,
    images: Any,
    labels: Any,
    mean: Any,
    std: Any,
    lambda_w: float,
    lambda_h: float,
    chunk: int = 500,
) -> tuple[float, float]:
    """Gradient norm of the UFM+ objective in the network's parameters (eval mode).

    Returns ``||grad f||`` and the relative norm of `ncgeom.criteria`:
    ``||grad f|| / (||grad data term|| + ||grad penalties||)``, over every
    parameter, with the cross-entropy averaged and the feature penalty summed
    over the whole training set.
    """
    import torch
    import torch.nn.functional as F

    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    data = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    penalty = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    num = images.shape[0]
    for part, ys in zip(torch.split(images, chunk), torch.split(labels, chunk), strict=True):
        features = model.features((part.float() - mean) / std)
        cross_entropy = F.cross_entropy(model.fc(features), ys, reduction="sum") / num
        feature_term = 0.5 * lambda_h * features.pow(2).sum()
        for total, term, retain in ((data, cross_entropy, True), (penalty, feature_term, False)):
            grads = torch.autograd.grad(term, params, retain_graph=retain, allow_unused=True)
            for acc, grad in zip(total, grads, strict=True):
                if grad is not None:
                    acc += grad.double()
    index = next(i for i, p in enumerate(params) if p is model.fc.weight)
    penalty[index] += lambda_w * model.fc.weight.detach().double()

    def norm(tensors: list[Any]) -> Any:
        return torch.stack([t.pow(2).sum() for t in tensors]).sum().sqrt()

    full = float(norm([a + b for a, b in zip(data, penalty, strict=True)]))
    scale = float(norm(data) + norm(penalty))
    return full, full / scale if scale > 0 else 0.0


# --------------------------------------------------------------------------- one run


def _minority_lambda(counts: Sequence[int]) -> float:
    """lambda = lambda_W = lambda_H at which the rarest class reaches its threshold."""
    from ncgeom.theory import critical_regularization

    return math.sqrt(float(min(critical_regularization(list(counts)).tolist())))


def _per_class_accuracy(logits: Any, labels: Any, num_classes: int) -> list[float | None]:
    import torch

    hits = (logits.argmax(dim=1) == labels).double()
    correct = torch.zeros(num_classes, dtype=torch.float64, device=labels.device)
    correct.index_add_(0, labels, hits)
    seen = torch.bincount(labels, minlength=num_classes).double()
    return [
        None if n == 0 else c / n for c, n in zip(correct.tolist(), seen.tolist(), strict=True)
    ]


def train_paper_run(
    config: PaperConfig,
    factor: float,
    seed: int,
    train: tuple[Any, Any],
    test: tuple[Any, Any] | None,
    counts: Sequence[int],
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train one ResNet-18 at lambda = factor x the minority critical lambda and judge it.

    `train` and `test` are (uint8 images, labels) on the run's device;
    `progress`, when given, receives a line every tenth of the epochs.
    Returns the run's entry of ``report.json``.
    """
    import torch
    import torch.nn.functional as F

    from ncgeom.measure import criteria
    from ncgeom.theory import critical_regularization, ufm_relu_optimum
    from ncgeom.theory.kkt import ufm_kkt_residual

    from .resnet import resnet18
    from .tracker import NCTracker

    num_classes = len(counts)
    images, labels = train
    num = images.shape[0]
    lam = factor * _minority_lambda(counts)
    torch.manual_seed(seed)
    model = resnet18(num_classes, width=config.width).to(images.device)
    mean, std = _channel_stats(images)
    batch = min(config.batch_size, num)
    steps = math.ceil(num / batch) * config.epochs
    step = _Step(
        model,
        mean=mean,
        std=std,
        num_samples=num,
        lambda_w=lam,
        lambda_h=lam,
        lr=config.lr,
        total_steps=steps,
        mixed_precision=config.mixed_precision,
    )
    generator = torch.Generator().manual_seed(seed)
    warm = config.warmup * config.epochs
    balanced = torch.as_tensor(
        [num / (num_classes * n) for n in counts], dtype=torch.float32, device=images.device
    )
    losses = []
    started = time.perf_counter()
    for epoch in range(config.epochs):
        ramp = 1.0 if warm <= 0 else min(1.0, epoch / warm)
        weight = balanced if epoch < config.balanced_start * config.epochs else None
        losses.append(_epoch(step, images, labels, batch, generator, ramp, weight))
        if progress is not None and (epoch + 1) % max(1, config.epochs // 10) == 0:
            progress(f"epoch {epoch + 1}/{config.epochs}: loss {float(losses[-1]):.4g}")
    train_seconds = time.perf_counter() - started

    theory = ufm_relu_optimum(list(counts), lam, lam)
    features = _features(model, images, mean, std)
    weight = model.fc.weight.detach().double()
    with torch.no_grad():
        logits = features @ weight.T
        cross_entropy = float(F.cross_entropy(logits, labels))
    objective = (
        cross_entropy
        + 0.5 * lam * float(weight.pow(2).sum())
        + 0.5 * lam * float(features.pow(2).sum())
    )
    alive = [bool(a) for a in theory.alive.tolist()]
    tracker = NCTracker(num_classes, dtype=torch.float64)
    tracker.observe(features, labels)
    metrics, metrics_error = _metrics(tracker, model.fc, lam)
    measured = tracker.stats.means.double().norm(dim=1).tolist()
    predicted = [float(v) for v in theory.feature_norms.tolist()]
    outcomes = list(criteria.class_outcomes(measured, predicted))

    # the terminal phase asks for 100% train accuracy on the classes that did not collapse
    train_acc = _per_class_accuracy(logits, labels, num_classes)
    kept = criteria.accuracy_classes(outcomes)
    kept_rows = torch.isin(labels, torch.as_tensor(kept, device=labels.device))
    accuracy_kept = (
        float((logits.argmax(dim=1) == labels)[kept_rows].double().mean()) if kept else None
    )
    kkt = float(ufm_kkt_residual(weight, features, labels, num_classes, lam, lam))
    grad_norm, relative_grad = _gradient_norm(model, images, labels, mean, std, lam, lam)
    phase = criteria.terminal_phase(
        math.nan if accuracy_kept is None else accuracy_kept, kkt, grad_norm=relative_grad
    )

    depth = _depth(model, images, labels, mean, std, lam) if config.depth else None
    test_acc = None
    if test is not None:
        test_logits = _features(model, test[0], mean, std) @ weight.T
        test_acc = _per_class_accuracy(test_logits, test[1], num_classes)
    return {
        "name": f"lambda={factor:g}x seed={seed}",
        "factor": factor,
        "seed": seed,
        "balanced_start": config.balanced_start,
        "lambda_w": lam,
        "lambda_h": lam,
        "counts": list(counts),
        "critical_products": [float(v) for v in critical_regularization(list(counts)).tolist()],
        "predicted_alive": alive,
        "predicted_norms": predicted,
        "measured_norms": measured,
        "outcomes": outcomes,
        "agree": [_agreement(a, o) for a, o in zip(alive, outcomes, strict=True)],
        "train_accuracy": float((logits.argmax(dim=1) == labels).double().mean()),
        "train_accuracy_not_collapsed": accuracy_kept,
        "train_accuracy_per_class": train_acc,
        "test_accuracy_per_class": test_acc,
        "objective": objective,
        "optimum": float(theory.objective),
        "gap": objective / float(theory.objective) - 1.0,
        "kkt_residual": kkt,
        "grad_norm": grad_norm,
        "relative_grad_norm": relative_grad,
        "terminal_phase": phase.to_dict(),
        "terminal_sentence": phase.sentence(),
        "terminal": phase.reached,
        "metrics": metrics,
        "metrics_error": metrics_error,
        "depth": depth,
        "loss_history": torch.stack(losses).tolist(),
        "train_seconds": train_seconds,
        "seconds": time.perf_counter() - started,
    }


def _depth(
    model: Any, images: Any, labels: Any, mean: Any, std: Any, lam: float
) -> dict[str, Any]:
    """Collapse through depth: the pooled output of every block (`BLOCK_NAMES`), eval mode.

    As in `_metrics`, a report that cannot be made (every feature zero) leaves
    the reason instead.
    """
    import torch

    from .depth_runs import depth_of
    from .resnet import BLOCK_NAMES

    inputs = torch.cat([(part.float() - mean) / std for part in torch.split(images, 2048)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # collapsed classes, as in _metrics
        try:
            report = depth_of(
                model,
                inputs,
                labels,
                layers=BLOCK_NAMES,
                classifier=model.fc,
                lambda_w=lam,
                lambda_h=lam,
            )
        except ValueError as err:
            return {"error": str(err)}
    return {
        "table": report.table(),
        "progression": report.progression().sentence,
        "report": report.to_dict(),
    }


#: The tracker's metrics kept in each run of ``report.json``.
RUN_METRICS = (
    "nc1",
    "gof_error",
    "classifier_gram_error",
    "orthogonality_error",
    "etf_error",
    "scaled_alignment_error",
)


def _metrics(tracker: Any, classifier: Any, lam: float) -> tuple[dict[str, Any], str | None]:
    """`RUN_METRICS` of the tracker's report, and why they are missing if the report failed.

    Collapsed (zero) class means are an expected outcome here: the metrics they
    leave undefined are None. When every feature is zero the report cannot be
    made at all; the run keeps its norms and outcomes and says why.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            report = tracker.report(classifier, lambda_w=lam, lambda_h=lam).to_dict()
        except ValueError as err:
            return dict.fromkeys(RUN_METRICS), str(err)
    return {key: report.get(key) for key in RUN_METRICS}, None


def _agreement(predicted_alive: bool, outcome: str) -> str:
    """'agree', 'disagree' or 'inconclusive' (a partial class) for one class."""
    if outcome == "partial":
        return "inconclusive"
    return "agree" if (outcome == "alive") == predicted_alive else "disagree"


# --------------------------------------------------------------------------- the preset


def _check_config(config: PaperConfig) -> PaperConfig:
    from .cifar import DATASETS, PROFILES

    if config.dataset not in DATASETS:
        raise FieldError("dataset", f"must be one of {tuple(DATASETS)}; got {config.dataset!r}")
    if config.profile not in PROFILES:
        raise FieldError("profile", f"must be one of {PROFILES}; got {config.profile!r}")
    for name in ("epochs", "batch_size", "width", "seeds"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FieldError(name, f"must be a positive integer; got {value!r}")
    if (
        isinstance(config.max_per_class, bool)
        or not isinstance(config.max_per_class, int)
        or config.max_per_class < 0
    ):
        raise FieldError("max_per_class", f"must be an integer >= 0; got {config.max_per_class!r}")
    if not (isinstance(config.imbalance, (int, float)) and config.imbalance >= 1):
        raise FieldError("imbalance", f"must be a number >= 1; got {config.imbalance!r}")
    if not (isinstance(config.lr, (int, float)) and math.isfinite(config.lr) and config.lr > 0):
        raise FieldError("lr", f"must be a finite number > 0; got {config.lr!r}")
    for name in ("warmup", "balanced_start"):
        value = getattr(config, name)
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise FieldError(name, f"must lie in [0, 1); got {value!r}")
    factors = tuple(config.factors)
    if not factors or not all(
        isinstance(f, (int, float)) and math.isfinite(f) and f > 0 for f in factors
    ):
        raise FieldError("factors", f"must be one or more finite numbers > 0; got {factors!r}")
    last = 2**63 - config.seeds
    if isinstance(config.seed, bool) or not isinstance(config.seed, int):
        raise FieldError(
            "seed", f"must be an integer in [0, 2**63 - {config.seeds}]; got {config.seed!r}"
        )
    if not 0 <= config.seed <= last:
        raise FieldError(
            "seed", f"must be an integer in [0, 2**63 - {config.seeds}]; got {config.seed!r}"
        )
    return replace(config, factors=factors)


def _subset(config: PaperConfig) -> tuple[tuple[Any, Any], tuple[Any, Any], list[int]]:
    """The long-tailed training subset and the (balanced) test split, on the device."""
    import numpy as np
    import torch

    from .cifar import DATASETS, load_cifar, long_tailed_indices

    num_classes = DATASETS[config.dataset][4]
    images, labels = load_cifar(config.data_root, dataset=config.dataset, train=True)
    if config.max_per_class > 0:
        # the first max_per_class images of each class, in file order
        host = labels.numpy()
        keep = np.sort(
            np.concatenate(
                [np.flatnonzero(host == k)[: config.max_per_class] for k in range(num_classes)]
            )
        )
        images, labels = images[keep], labels[keep]
    rows = long_tailed_indices(
        labels, num_classes, imbalance=config.imbalance, profile=config.profile, seed=config.seed
    )
    images, labels = images[rows], labels[rows]
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    test_images, test_labels = load_cifar(config.data_root, dataset=config.dataset, train=False)
    device = torch.device(config.device)
    return (
        (images.to(device), labels.to(device)),
        (test_images.to(device), test_labels.to(device)),
        counts,
    )


def run_paper(
    config: PaperConfig | None = None,
    *,
    out: str | Path = "ncgeom-reproduce-paper",
    progress: bool = True,
    **settings: Any,
) -> dict[str, Any]:
    """Train the ``paper`` preset's ResNet-18 runs and write ``report.json`` and ``report.md``.

    Parameters
    ----------
    config : PaperConfig, optional
        Settings; fields may also be given as keywords (``data_root=...``,
        ``epochs=...``), which replace those of `config`.
    out : str or Path
        Output folder (created if needed; checked before any training).
    progress : bool
        On stderr: the loss every tenth of the epochs, and one line per
        finished run (its outcomes and whether it reached the terminal phase).

    Returns
    -------
    dict
        The content of ``report.json``: ``preset``, ``config``, ``counts``,
        ``machine``, ``criteria``, ``claims``, ``runs`` (terminal phase
        reached), ``runs_not_terminal``, ``seconds``, ``files``.

    Raises
    ------
    FileNotFoundError
        If `data_root` holds no copy of the data set (the message says what to
        put where); checked before any training.
    ValueError
        (`ncgeom_torch.demo.FieldError`, naming the setting) For a bad setting,
        a device this machine does not have, or an unusable output folder.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     run_paper(data_root=tmp, out=tmp, progress=False)
    Traceback (most recent call last):
        ...
    FileNotFoundError: `data_root` has no cifar10 copy: expected the files data_batch_1, ...
    """
    import sys

    import torch

    from .cifar import check_cifar_copy

    config = replace(config or PaperConfig(), **settings)
    config = _check_config(config)
    check_device(config.device)
    folder = check_output_folder(out, "out", PAPER_FILES)
    check_cifar_copy(config.data_root, config.dataset, field="data_root")
    started = time.perf_counter()
    train, test, counts = _subset(config)
    runs = []
    total = len(config.factors) * config.seeds
    for factor in config.factors:
        for seed in range(config.seed, config.seed + config.seeds):
            label = f"run {len(runs) + 1}/{total} (lambda={factor:g}x seed={seed})"

            def say(line: str, label: str = label) -> None:
                sys.stderr.write(f"{label} {line}\n")
                sys.stderr.flush()

            run = train_paper_run(
                config, factor, seed, train, test, counts, say if progress else None
            )
            runs.append(run)
            if progress:
                say(
                    f"done in {run['seconds']:.0f} s: outcomes {run['outcomes']}; "
                    f"{run['terminal_sentence']}"
                )
    summary = _summarise(config, counts, runs, time.perf_counter() - started)
    summary["torch"] = torch.__version__
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / name for name in PAPER_FILES]
    summary["files"] = [str(path) for path in files]
    files[0].write_text(json.dumps(jsonable(summary), indent=1) + "\n")
    files[1].write_text(paper_markdown(summary))
    return summary


def _machine(device: str) -> str:
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (CUDA {torch.version.cuda})"
    return f"{_cpu_name()}, {torch.get_num_threads()} torch threads"


def _cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} CPU"


def _summarise(
    config: PaperConfig, counts: list[int], runs: list[dict[str, Any]], seconds: float
) -> dict[str, Any]:
    from ncgeom.measure import criteria

    terminal = [run for run in runs if run["terminal"]]
    claims = [
        _claim(
            "predicted-alive classes end alive",
            "every class predicted alive keeps at least "
            f"{criteria.ALIVE_FRACTION:g} x its predicted norm",
            [
                outcome
                for run in terminal
                for outcome, alive in zip(run["outcomes"], run["predicted_alive"], strict=True)
                if alive
            ],
            "alive",
        ),
        _claim(
            "predicted-dead classes end collapsed",
            f"every class predicted dead ends at most {criteria.COLLAPSED_FRACTION:g} x the "
            "largest alive norm",
            [
                outcome
                for run in terminal
                for outcome, alive in zip(run["outcomes"], run["predicted_alive"], strict=True)
                if not alive
            ],
            "collapsed",
        ),
    ]
    return {
        "preset": "paper",
        "config": asdict(config),
        "counts": counts,
        "machine": _machine(config.device),
        "criteria": criteria.criteria_dict(),
        "claims": claims,
        "runs": terminal,
        "runs_not_terminal": [run for run in runs if not run["terminal"]],
        "seconds": seconds,
    }


def _claim(name: str, prediction: str, outcomes: list[str], expected: str) -> dict[str, Any]:
    """pass: every class meets it; fail: a class ends on the other side; else inconclusive."""
    opposite = "collapsed" if expected == "alive" else "alive"
    met = sum(outcome == expected for outcome in outcomes)
    if not outcomes:
        verdict = "inconclusive"
    elif any(outcome == opposite for outcome in outcomes):
        verdict = "fail"
    elif met == len(outcomes):
        verdict = "pass"
    else:
        verdict = "inconclusive"
    return {
        "name": name,
        "prediction": prediction,
        "measured": f"{met} of {len(outcomes)} (class, run) pairs {expected}",
        "band": f"all {expected}, in runs that reach the terminal phase",
        "verdict": verdict,
    }


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def paper_markdown(summary: dict[str, Any]) -> str:
    """``report.md`` of the ``paper`` preset: the claims first, then every run class by class."""
    config = summary["config"]
    start = (
        "standard start"
        if config["balanced_start"] == 0
        else f"class-balanced cross-entropy over the first {config['balanced_start']:.0%} "
        "of the epochs"
    )
    total = len(summary["runs"]) + len(summary["runs_not_terminal"])
    lines = [
        f"# ncgeom reproduce --preset paper: ResNet-18 on {config['dataset']}-LT",
        "",
        f"Profile {config['profile']}, imbalance {config['imbalance']:g}, counts "
        f"{summary['counts']}; lambda_W = lambda_H = {_fmt_list(config['factors'])} x the "
        f"critical lambda of the rarest class, {config['seeds']} seed(s) each; "
        f"{config['epochs']} epochs, batch {config['batch_size']}, peak learning rate "
        f"{config['lr']:g}, width {config['width']}, {start}; measured on "
        f"{summary['machine']} in {summary['seconds']:.0f} s.",
        "",
        "## Claims",
        "",
        f"{len(summary['runs'])} of {total} runs reached the terminal phase; only they count.",
        "",
        "| claim | prediction | measured | band | verdict |",
        "|---|---|---|---|---|",
    ]
    for claim in summary["claims"]:
        lines.append(
            f"| {claim['name']} | {claim['prediction']} | {claim['measured']} | "
            f"{claim['band']} | {claim['verdict']} |"
        )
    crit = summary["criteria"]
    lines += [
        "",
        f"Criteria fixed in advance: alive >= {crit['alive_fraction']:g} x the predicted norm; "
        f"collapsed <= {crit['collapsed_fraction']:g} x the largest norm of a class predicted "
        f"alive; terminal phase: train accuracy >= {crit['train_accuracy']:g} on the classes "
        f"that did not collapse, relative KKT residual <= {crit['kkt_bound']:g} and relative "
        f"gradient norm <= {crit['grad_bound']:g}.",
        "",
    ]
    for title, runs in (
        ("Runs in the terminal phase", summary["runs"]),
        (
            "Runs that missed the terminal phase (kept out of the claims)",
            summary["runs_not_terminal"],
        ),
    ):
        lines += [f"## {title}", ""]
        if not runs:
            lines += ["None.", ""]
        for run in runs:
            lines += _run_lines(run)
    return "\n".join(lines) + "\n"


def _depth_lines(depth: dict[str, Any] | None) -> list[str]:
    if depth is None:
        return []
    if "error" in depth:
        return [f"Collapse through depth: not measured ({depth['error']}).", ""]
    return [
        "Collapse through depth (pooled output of each block):",
        "",
        depth["table"],
        "",
        depth["progression"],
        "",
    ]


def _fmt_list(values: Sequence[float]) -> str:
    return ", ".join(f"{v:g}" for v in values)


def _run_lines(run: dict[str, Any]) -> list[str]:
    lines = [
        f"### {run['name']} (lambda_W = lambda_H = {run['lambda_w']:.4g})",
        "",
        f"Train accuracy {_fmt(run['train_accuracy'])} (classes not collapsed: "
        f"{_fmt(run['train_accuracy_not_collapsed'])}); objective over f* - 1: "
        f"{_fmt(run['gap'])}; "
        f"relative KKT residual {_fmt(run['kkt_residual'])}; relative gradient norm "
        f"{_fmt(run['relative_grad_norm'])}; NC1 {_fmt(run['metrics'].get('nc1'))}; scaled "
        f"alignment error {_fmt(run['metrics'].get('scaled_alignment_error'))}.",
        "",
        run["terminal_sentence"],
        "",
        *_depth_lines(run.get("depth")),
        "| class | n_k | predicted | predicted norm | measured norm | outcome | "
        "train acc | test acc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    test = run["test_accuracy_per_class"] or [None] * len(run["counts"])
    for k, n in enumerate(run["counts"]):
        lines.append(
            f"| {k} | {n} | {'alive' if run['predicted_alive'][k] else 'dead'} | "
            f"{_fmt(run['predicted_norms'][k])} | {_fmt(run['measured_norms'][k])} | "
            f"{run['outcomes'][k]} | {_fmt(run['train_accuracy_per_class'][k])} | "
            f"{_fmt(test[k])} |"
        )
    return [*lines, ""]


# --------------------------------------------------------------------------- throughput


def synthetic_throughput(
    *,
    num_images: int = 2048,
    batch_size: int = 128,
    num_classes: int = 10,
    width: int = 64,
    device: str = "cpu",
    mixed_precision: bool = True,
    threads: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Training images a second of one short epoch on synthetic data of the CIFAR format.

    The images are uniform random uint8 rows of 3072 values (the python-pickle
    layout), reshaped to (N, 3, 32, 32) as `ncgeom_torch.cifar.load_cifar`
    does; the step is the ``paper`` preset's (ResNet-18, CE + UFM+ penalty,
    SGD with momentum, batch norm in train mode). One warm-up batch runs first
    and is not timed; the timed epoch ends when the device has finished.

    Parameters
    ----------
    num_images, batch_size : int
        Images of the epoch (>= 2) and a step.
    num_classes, width : int
        Of the ResNet-18 (`ncgeom_torch.resnet.resnet18`).
    device : str
        Torch device.
    mixed_precision : bool
        bfloat16 autocast of the backbone on CUDA, as the preset does.
    threads : int, optional
        torch CPU threads during the measurement (restored after); None keeps
        the current setting.
    seed : int

    Returns
    -------
    dict
        ``images_per_second``, ``images``, ``seconds``, ``batch_size``,
        ``width``, ``device``, ``mixed_precision``, ``machine`` (the CPU or
        GPU model and the torch threads), ``torch``.

    Examples
    --------
    >>> result = synthetic_throughput(num_images=8, batch_size=4, width=2, threads=1)
    >>> result["images"], result["images_per_second"] > 0
    (8, True)
    """
    import torch

    from ncgeom.checks import check_int_at_least, check_positive_int

    num_images = check_int_at_least(num_images, "num_images", 2)
    batch_size = check_int_at_least(batch_size, "batch_size", 2)
    num_classes = check_positive_int(num_classes, "num_classes")
    width = check_positive_int(width, "width")
    dev = check_device(device)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(check_positive_int(threads, "threads"))
    try:
        seconds, batch = _time_epoch(
            num_images, batch_size, num_classes, width, dev, mixed_precision, seed
        )
        machine = _machine(str(dev))
    finally:
        torch.set_num_threads(previous)
    return {
        "images_per_second": num_images / seconds,
        "images": num_images,
        "seconds": seconds,
        "batch_size": batch,
        "width": width,
        "device": str(dev),
        "mixed_precision": bool(mixed_precision and dev.type == "cuda"),
        "machine": machine,
        "torch": torch.__version__,
    }


def _time_epoch(
    num_images: int,
    batch_size: int,
    num_classes: int,
    width: int,
    dev: Any,
    mixed_precision: bool,
    seed: int,
) -> tuple[float, int]:
    import torch

    from .resnet import resnet18

    generator = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, 256, (num_images, 3072), dtype=torch.uint8, generator=generator)
    images = rows.reshape(-1, 3, 32, 32).to(dev)
    labels = torch.randint(0, num_classes, (num_images,), generator=generator).to(dev)
    torch.manual_seed(seed)
    model = resnet18(num_classes, width=width).to(dev)
    mean, std = _channel_stats(images)
    batch = min(batch_size, num_images)
    step = _Step(
        model,
        mean=mean,
        std=std,
        num_samples=num_images,
        lambda_w=5e-4,
        lambda_h=5e-4,
        lr=0.05,
        total_steps=math.ceil(num_images / batch) + 1,
        mixed_precision=mixed_precision,
    )
    model.train()
    step(images[:batch], labels[:batch], 1.0)  # warm-up: kernels, allocator
    _sync(dev)
    started = time.perf_counter()
    loss = _epoch(step, images, labels, batch, generator, 1.0)
    float(loss)  # waits for the device
    _sync(dev)
    return time.perf_counter() - started, batch


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- command line


def add_paper_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``paper`` preset's options to `parser` (those it does not have yet).

    ``--data-root``, ``--dataset``, ``--profile``, ``--imbalance``,
    ``--max-per-class``, ``--factors``, ``--paper-seeds``, ``--epochs``,
    ``--batch-size``, ``--lr``, ``--balanced-start``, ``--width``; ``--device``, ``--out`` and
    ``--seed`` too when the parser has none (``ncgeom reproduce`` has them).
    Defaults are those of `PaperConfig`, except ``--epochs`` whose default
    None means "the preset's own".
    """
    defaults = PaperConfig()
    have = set(parser._option_string_actions)  # argparse has no public query

    def add(flag: str, **kwargs: Any) -> None:
        if flag not in have:
            parser.add_argument(flag, **kwargs)

    add(
        "--data-root",
        default=None,
        help="with --preset paper (required): folder holding cifar-10-batches-py/ or "
        "cifar-100-python/, the python-pickle archives unpacked (never downloaded)",
    )
    add(
        "--dataset",
        choices=("cifar10", "cifar100"),
        default=defaults.dataset,
        help="paper preset: CIFAR-10 or CIFAR-100",
    )
    add(
        "--profile",
        choices=("exp", "step"),
        default=defaults.profile,
        help="paper preset: long-tail profile",
    )
    add(
        "--imbalance",
        type=float,
        default=defaults.imbalance,
        help="paper preset: largest class count over the smallest",
    )
    add(
        "--max-per-class",
        type=int,
        default=defaults.max_per_class,
        help="paper preset: cap on the largest class (0: all of it)",
    )
    add(
        "--factors",
        type=float,
        nargs="+",
        default=list(defaults.factors),
        help="paper preset: lambda_W = lambda_H, as multiples of the critical lambda of the "
        "rarest class",
    )
    add("--paper-seeds", type=int, default=defaults.seeds, help="paper preset: runs per factor")
    add(
        "--epochs",
        type=int,
        default=None,
        help=f"training epochs of the paper preset (default {defaults.epochs})",
    )
    add("--batch-size", type=int, default=defaults.batch_size, help="paper preset: batch size")
    add("--lr", type=float, default=defaults.lr, help="paper preset: peak learning rate")
    add(
        "--balanced-start",
        type=float,
        default=defaults.balanced_start,
        help="paper preset: fraction of the epochs with class-balanced cross-entropy",
    )
    add(
        "--width",
        type=int,
        default=defaults.width,
        help="paper preset: ResNet-18 width (64: the standard network)",
    )
    add("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    add("--out", default="ncgeom-reproduce-paper", help="output folder")
    add("--seed", type=int, default=0, help="seed of the subset and the first run")


def config_from_args(args: argparse.Namespace) -> PaperConfig:
    """The `PaperConfig` the parsed options of `add_paper_arguments` describe."""
    if getattr(args, "data_root", None) is None:
        raise ValueError(
            "`--data-root` is required by the paper preset: a folder holding "
            "cifar-10-batches-py/ or cifar-100-python/ (nothing is downloaded)"
        )
    defaults = PaperConfig()
    return PaperConfig(
        data_root=args.data_root,
        dataset=args.dataset,
        profile=args.profile,
        imbalance=args.imbalance,
        max_per_class=args.max_per_class,
        factors=tuple(args.factors),
        seeds=args.paper_seeds,
        epochs=defaults.epochs if args.epochs is None else args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        balanced_start=args.balanced_start,
        width=args.width,
        seed=args.seed,
        device=args.device,
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run the ``paper`` preset from parsed options; prints the claims; returns 0."""
    try:
        summary = run_paper(config_from_args(args), out=args.out)
    except FieldError as err:
        raise err.for_option() from None
    except FileNotFoundError as err:
        raise FileNotFoundError(str(err).replace("`data_root`", "`--data-root`", 1)) from None
    for claim in summary["claims"]:
        print(f"{claim['name']}: {claim['measured']} -> {claim['verdict']}")
    print(
        f"{len(summary['runs'])} runs in the terminal phase, "
        f"{len(summary['runs_not_terminal'])} not, in {summary['seconds']:.0f} s "
        f"on {summary['machine']}"
    )
    print("wrote " + ", ".join(summary["files"]))
    return 0
