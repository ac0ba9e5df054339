"""``ncgeom demo``: a ReLU network trained on imbalanced data, against the theorem.

A bias-free ReLU MLP is trained on an imbalanced subset of a real data set
(scikit-learn's bundled 8x8 digits by default) with the UFM+ regulariser, so
that training minimises the objective the closed form describes with the same
lambdas. Full-batch training runs into the terminal phase; every few epochs
the penultimate features are measured with `NCTracker` and compared with
`ncgeom.theory.ufm_relu_optimum` for the same counts and lambdas. At the end,
every hidden layer is measured in one pass (`ncgeom_torch.depth_runs.depth_of`,
an `ncgeom.DepthReport`), and the run is checked against the terminal phase of
`ncgeom.criteria` (train accuracy 1 on the classes that did not collapse, KKT
residual of UFM+ within its bound): a run that misses it is flagged in the
report and warned about. The preset ``collapse`` (`PRESETS`) chooses counts and
lambdas for which the theorem collapses the three rarest classes. The output
folder receives ``report.json``, ``report.md``, ``depth.json`` and PNG figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from ncgeom.checks import check_counts
from ncgeom.cli import (
    Command,
    add_counts_option,
    check_interrupted,
    check_output_dir,
    require_extra,
)
from ncgeom.utils import Progress, jsonable

__all__ = [
    "DemoConfig",
    "FIGURE_FILES",
    "FieldError",
    "PRESETS",
    "REPORT_FILES",
    "check_device",
    "check_output_folder",
    "command",
    "cpu_threads",
    "default_counts",
    "flush_denormal",
    "load_dataset",
    "preset_config",
    "run_demo",
    "terminal_check",
]

DATASETS = ("digits", "synthetic")

#: Settings of the named presets (`preset_config`); options given explicitly win.
#: ``collapse``: seven classes of 170 samples and three of 3, with lambdas at
#: which the theorem collapses the three rare classes (n_crit = 9.98 samples)
#: and keeps the others alive, each at least 3x from its critical
#: lambda_W lambda_H; trained long enough to reach the terminal phase
#: (docs/demo.md).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "collapse": {
        "counts": (170,) * 7 + (3,) * 3,
        "lambda_w": 2.5e-3,
        "lambda_h": 2.5e-3,
        "epochs": 12000,
        "eval_every": 200,
    },
}


@dataclass(frozen=True)
class DemoConfig:
    """Settings of one demo run (the command-line options)."""

    preset: str = "default"
    dataset: str = "digits"
    counts: tuple[int, ...] | None = None
    ratio: float = 0.1
    epochs: int = 3000
    eval_every: int = 25
    lambda_w: float = 1e-3
    lambda_h: float = 1e-3
    width: int = 256
    depth: int = 3
    lr: float = 2e-3
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    out: str = "ncgeom-demo"
    plots: bool = True


def preset_config(name: str = "default", **overrides: Any) -> DemoConfig:
    """The `DemoConfig` of the preset `name`, with `overrides` on top.

    Examples
    --------
    >>> from ncgeom_torch.demo import preset_config
    >>> config = preset_config("collapse", epochs=10)
    >>> config.preset, len(config.counts), config.epochs
    ('collapse', 10, 10)
    """
    if name not in PRESETS:
        raise FieldError("preset", f"must be one of {tuple(PRESETS)}; got {name!r}")
    return DemoConfig(preset=name, **{**PRESETS[name], **overrides})


def default_counts(full: int, num_classes: int, ratio: float = 0.1) -> list[int]:
    """Counts falling geometrically from `full` to about ``ratio * full``.

    Examples
    --------
    >>> default_counts(178, 10)
    [178, 138, 107, 83, 64, 50, 38, 30, 23, 18]
    """
    steps = np.arange(num_classes) / max(num_classes - 1, 1)
    return [max(1, round(full * ratio**s)) for s in steps]


def digits_pool(extra: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits: pixels (1797, 64) float32 in [0, 1] and
    labels int64; `extra` names the install extra that brings scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        msg = f"the digits data set needs scikit-learn: pip install 'ncgeom[{extra}]'"
        raise ValueError(msg) from err
    digits = load_digits()
    return digits.data.astype(np.float32) / 16.0, digits.target.astype(np.int64)


def load_dataset(
    name: str, counts: list[int] | tuple[int, ...] | None, ratio: float, seed: int
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Features (N, D) float32, labels (N,) int64 and counts of the training subset.

    ``digits``: scikit-learn's bundled 8x8 digits (1797 images, 10 classes),
    pixels scaled to [0, 1], a random subset of each class. ``synthetic``: a
    Gaussian mixture in 64 dimensions (no extra package needed).
    """
    rng = np.random.default_rng(seed)
    if name == "digits":
        pool_x, pool_y = digits_pool("demo")
    elif name == "synthetic":
        num_classes, dim, per_class = 10, 64, 200
        centres = rng.normal(size=(num_classes, dim))
        pool_y = np.repeat(np.arange(num_classes), per_class)
        pool_x = (centres[pool_y] + 1.5 * rng.normal(size=(pool_y.size, dim))).astype(np.float32)
    else:
        raise FieldError("dataset", f"must be one of {DATASETS}; got {name!r}")
    available = np.bincount(pool_y)
    num_classes = available.size
    if counts is None:
        counts = default_counts(int(available.min()), num_classes, ratio)
    try:
        counts = check_counts(counts).tolist()
    except ValueError as err:
        raise FieldError("counts", str(err).removeprefix("`counts` ")) from None
    if len(counts) != num_classes:
        raise FieldError(
            "counts", f"must give {num_classes} classes for {name!r}; got {len(counts)}"
        )
    for k, (want, have) in enumerate(zip(counts, available, strict=True)):
        if not 1 <= want <= have:
            raise FieldError(
                "counts", f"for class {k} must lie in [1, {have}] for {name!r}; got {want}"
            )
    rows = np.concatenate(
        [rng.permutation(np.flatnonzero(pool_y == k))[:n] for k, n in enumerate(counts)]
    )
    return pool_x[rows], pool_y[rows], counts


def _build_model(in_dim: int, width: int, depth: int, num_classes: int) -> Any:
    """``linear1, relu1, ..., relu<depth>, classifier``: the depth report's layers are
    the ``relu<i>`` outputs, the last of which is the classifier's input."""
    from torch import nn

    layers: list[tuple[str, nn.Module]] = []
    for index in range(1, depth + 1):
        linear = nn.Linear(in_dim if index == 1 else width, width, bias=False)
        layers += [(f"linear{index}", linear), (f"relu{index}", nn.ReLU())]
    layers.append(("classifier", nn.Linear(width, num_classes, bias=False)))
    return nn.Sequential(OrderedDict(layers))


def _hidden_layers(depth: int) -> list[str]:
    """The names of the hidden layers' outputs, shallow to deep."""
    return [f"relu{index}" for index in range(1, depth + 1)]


def run_demo(config: DemoConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train, measure and write the demo's outputs; return the summary.

    Returns
    -------
    dict
        ``config``, ``counts``, ``theory`` (the predicted optimum),
        ``history`` (metrics per evaluation), ``final`` (the last report),
        ``seconds`` and ``files`` written.
    """
    import torch
    import torch.nn.functional as F

    from ncgeom.criteria import criteria_dict

    from .depth_runs import depth_of
    from .regularizer import ufm_penalty
    from .tap import FeatureTap
    from .tracker import NCTracker

    device, (x_np, y_np, counts), theory = _prepare(config)
    torch.manual_seed(config.seed)
    x = torch.as_tensor(x_np, device=device)
    y = torch.as_tensor(y_np, device=device)
    num, num_classes = len(y_np), len(counts)

    model = _build_model(x.shape[1], config.width, config.depth, num_classes).to(device)
    classifier = model.classifier
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs)
    tracker = NCTracker(num_classes, dtype=torch.float64)
    bar = Progress(config.epochs, log_every=10.0) if progress else None
    evaluations: list[dict[str, Any]] = []
    losses: list[float] = []
    started = time.perf_counter()
    with flush_denormal(), cpu_threads(config.threads if device.type == "cpu" else None):
        for epoch in range(1, config.epochs + 1):
            check_interrupted()
            with FeatureTap(model, classifier, detach=False) as tap:
                logits = model(x)
            loss = F.cross_entropy(logits, y) + ufm_penalty(
                classifier.weight,
                tap.features,
                lambda_w=config.lambda_w,
                lambda_h=config.lambda_h,
                num_samples=num,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                _diverged(config, epoch, f"the objective is {losses[-1]}")
            if epoch % config.eval_every == 0 or epoch in (1, config.epochs):
                with torch.no_grad():
                    outputs = model(x)
                if not bool(torch.isfinite(outputs).all()):
                    _diverged(config, epoch, "the network's outputs hold NaN or Inf")
                accuracy = float((outputs.argmax(dim=1) == y).double().mean())
                # The objective, NCC agreement and geometry after this step.
                report = tracker.evaluate(
                    model,
                    [(x, y)],
                    classifier,
                    lambda_w=config.lambda_w,
                    lambda_h=config.lambda_h,
                    step=epoch,
                )
                evaluations.append(
                    {
                        "epoch": epoch,
                        "loss": losses[-1],  # the training objective before this step
                        "train_accuracy": accuracy,
                        **report.to_dict(),  # "objective": the same after this step
                    }
                )
            if bar is not None:
                last = evaluations[-1]
                bar.update(
                    epoch,
                    f"objective {losses[-1]:.4f}  acc {last['train_accuracy']:.3f}  "
                    f"NC1 {last['nc1']:.2e}",
                )
        depth = depth_of(
            model,
            x,
            y,
            layers=_hidden_layers(config.depth),
            classifier=classifier,
            num_classes=num_classes,
            batch_size=num,
            lambda_w=config.lambda_w,
            lambda_h=config.lambda_h,
        )
        terminal = terminal_check(model, x, y, theory, config.lambda_w, config.lambda_h)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started
    if not terminal.reached:
        warnings.warn(_not_terminal(terminal.to_dict()), stacklevel=2)

    summary = {
        "config": jsonable(asdict(config)),
        "counts": counts,
        "num_samples": num,
        "theory": jsonable(theory.to_dict()),
        "objective_optimum": float(theory.objective),
        "history": jsonable(evaluations),
        "objective_per_epoch": losses,
        "final": jsonable(evaluations[-1]),
        "criteria": criteria_dict(),
        "terminal_phase": jsonable(terminal.to_dict()),
        "depth": jsonable(depth.to_dict()),
        "seconds": seconds,
    }
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.json", out / "report.md", out / "depth.json"]
    depth.save(files[2])
    if config.plots:
        from .demo_plots import write_depth_figure, write_figures

        means = tracker.stats.means.cpu().numpy()
        files += write_figures(
            out,
            evaluations,
            means,
            np.asarray(theory.feature_gram()),
            counts,
            objective=losses,
            optimum=float(theory.objective),
        )
        files.append(write_depth_figure(out, depth))
    summary["files"] = [str(path) for path in files]
    files[0].write_text(json.dumps(summary, indent=2) + "\n")
    files[1].write_text(_markdown(summary))
    return summary


def terminal_check(
    model: Any, x: Any, y: Any, theory: Any, lambda_w: float, lambda_h: float
) -> Any:
    """Whether the trained network is in the terminal phase (`ncgeom.criteria`).

    Measured at the final network on the whole training set: the train
    accuracy on the classes that did not collapse (`ncgeom.criteria.accuracy_classes`:
    a collapsed class cannot be classified without a bias), the relative KKT residual of UFM+ over
    ``(W, H >= 0)`` at the final features and classifier
    (`ncgeom.theory.kkt.ufm_kkt_residual`, float64), and the relative
    gradient norm of the training objective in the network's parameters,
    ``||g|| / (||g_data|| + ||g_penalty||)``.

    Returns
    -------
    ncgeom.criteria.TerminalPhase
    """
    import torch
    import torch.nn.functional as F

    from ncgeom.criteria import accuracy_classes, class_outcomes, terminal_phase
    from ncgeom.theory.kkt import ufm_kkt_residual

    from .regularizer import ufm_penalty
    from .tap import FeatureTap

    classifier = model.classifier
    num_classes = classifier.weight.shape[0]
    with FeatureTap(model, classifier, detach=False) as tap:
        logits = model(x)
    features = tap.features
    params = [p for p in model.parameters() if p.requires_grad]
    data = torch.autograd.grad(F.cross_entropy(logits, y), params, retain_graph=True)
    penalty = ufm_penalty(
        classifier.weight, features, lambda_w=lambda_w, lambda_h=lambda_h, num_samples=len(y)
    )
    regular = torch.autograd.grad(penalty, params)
    total = _norm([a + b for a, b in zip(data, regular, strict=True)])
    grad_norm = total / max(_norm(data) + _norm(regular), 1e-300)
    # Accuracy on the classes that did not collapse (whatever the prediction):
    # a collapsed class cannot be classified without a bias.
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64, device=y.device)
    sums.index_add_(0, y, features.detach().double())
    counts = torch.bincount(y, minlength=num_classes).clamp(min=1).double()
    measured = (sums / counts[:, None]).norm(dim=1).tolist()
    kept = accuracy_classes(class_outcomes(measured, list(theory.feature_norms)))
    rows = torch.isin(y, torch.as_tensor(kept, dtype=y.dtype, device=y.device))
    hits = (logits.detach().argmax(dim=1) == y)[rows]
    accuracy = float(hits.double().mean()) if bool(rows.any()) else math.nan
    residual = ufm_kkt_residual(
        classifier.weight.detach().double(),
        features.detach().double(),
        y,
        num_classes,
        lambda_w,
        lambda_h,
    )
    return terminal_phase(accuracy, residual, grad_norm=grad_norm)


def _norm(tensors: Any) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors))


def _not_terminal(terminal: dict[str, Any]) -> str:
    """The warning of a run that missed the terminal phase."""
    reasons = "; ".join(terminal["reasons"])
    return f"training did not reach the terminal phase ({reasons}): {_meaning(terminal)}"


def _meaning(terminal: dict[str, Any]) -> str:
    """What a missed terminal phase means for the verdict, by the condition that failed."""
    from ncgeom.criteria import GRAD_BOUND, TRAIN_ACCURACY

    grad = terminal["grad_norm"]
    if not terminal["train_accuracy_alive"] >= TRAIN_ACCURACY or not grad <= GRAD_BOUND:
        return (
            "the network is still training, so the verdict describes an intermediate point; "
            "train longer (--epochs) or check the learning rate"
        )
    return (
        f"the network is at a stationary point of its own parameters (relative gradient "
        f"norm {grad:.2g}) where its features are not a KKT point of UFM+: they are not "
        "free, so the verdict compares the network with an optimum it does not reach; "
        "read it as indicative"
    )


def _diverged(config: DemoConfig, epoch: int, what: str) -> NoReturn:
    msg = (
        f"training diverged: {what} after epoch {epoch} (float32); lower `lambda_w` "
        f"({config.lambda_w:g}), `lambda_h` ({config.lambda_h:g}) or `lr` ({config.lr:g})"
    )
    raise ValueError(msg)


@contextlib.contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Run torch's CPU operations on `count` threads, restoring the number on exit.

    The demo's model is small (a few hundred rows of width 256), so one
    thread is about as fast as two on an idle machine; on a machine whose
    cores are shared, a second intra-op thread waits for a busy core at every
    operation, and the demo's run time grew from under a minute to many
    minutes. None leaves the setting alone.

    Examples
    --------
    >>> import torch
    >>> from ncgeom_torch.demo import cpu_threads
    >>> before = torch.get_num_threads()
    >>> with cpu_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    import torch

    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def flush_denormal() -> Iterator[bool]:
    """Flush subnormal floats to zero on the CPU while training (a context manager).

    Adam's moment estimates of weights whose gradients have died out decay
    into the subnormal range (below 1.2e-38 in float32): in the default demo
    about 72,000 of its 300,032 entries from epoch 1000 on. Arithmetic on
    subnormals is slow on many x86 CPUs (tens to hundreds of cycles an
    operation); with flush-to-zero they become 0, which changes the
    optimiser's steps by less than 1e-38 relative. PyTorch has no getter for the setting, so it is
    switched off again on exit (its default).

    Yields
    ------
    bool
        Whether this CPU supports flush-to-zero.

    Examples
    --------
    >>> import torch
    >>> from ncgeom_torch.demo import flush_denormal
    >>> with flush_denormal() as supported:
    ...     tiny = torch.tensor([1e-40]) * 1.0
    >>> bool(tiny.item() == 0.0) == supported
    True
    """
    import torch

    supported = torch.set_flush_denormal(True)
    try:
        yield supported
    finally:
        torch.set_flush_denormal(False)


def check_device(name: Any) -> Any:
    """The torch device `name` names, checked to be usable here before any work.

    Raises
    ------
    ValueError
        If `name` is not a torch device, or names one this machine or this
        torch build does not have (e.g. ``cuda`` on a CPU-only build, ``cpu:5``
        or ``cuda:3`` on a machine with one GPU), or ``meta`` (no data).

    Examples
    --------
    >>> from ncgeom_torch.demo import check_device
    >>> check_device("cpu")
    device(type='cpu')
    >>> try:
    ...     check_device("cpu:5")
    ... except ValueError as err:
    ...     print(err)
    `device` 'cpu:5' does not exist: torch has one CPU device, cpu
    """
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise FieldError(
            "device", f"must be a torch device such as cpu, cuda or cuda:1; got {name!r}"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        build = "has no CUDA support" if torch.version.cuda is None else "finds no CUDA device"
        raise FieldError(
            "device", f"{name!r} is not available: this torch {torch.__version__} {build}; use cpu"
        )
    if device.type == "meta":
        raise FieldError("device", f"{name!r} holds no data; use cpu or cuda")
    if device.type == "cpu" and device.index not in (None, 0):
        raise FieldError("device", f"{name!r} does not exist: torch has one CPU device, cpu")
    if device.type == "cuda" and device.index is not None:
        present = torch.cuda.device_count()
        if device.index >= present:
            raise FieldError(
                "device",
                f"{name!r} does not exist: this machine has {present} CUDA device(s), "
                f"cuda:0 to cuda:{present - 1}",
            )
    try:
        torch.empty(1, device=device)
    except Exception as error:  # a missing backend, a device that fails to start
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FieldError("device", f"{name!r} is not usable here: {first}") from None
    return device


class FieldError(ValueError):
    """A bad value of one setting, named by its field (`DemoConfig`, `run_reproduce`).

    The command line reports it under the option's name: ``field`` becomes
    ``--field`` (underscores as dashes).
    """

    def __init__(self, field: str, text: str) -> None:
        self.field, self.text = field, text
        super().__init__(f"`{field}` {text}")

    def for_option(self) -> ValueError:
        """The same error, naming the command-line option."""
        return ValueError(f"`--{self.field.replace('_', '-')}` {self.text}")


#: Files `run_demo` writes into its output folder (``report.json``, ``report.md``,
#: and with `DemoConfig.plots` the figures of `ncgeom_torch.demo_plots.write_figures`).
REPORT_FILES = ("report.json", "report.md", "depth.json")
FIGURE_FILES = ("metrics.png", "gram.png", "classes.png", "depth.png")


def check_output_folder(out: Any, field: str, files: tuple[str, ...]) -> Path:
    """The output folder `out`, checked before any work.

    It must be a non-empty name of a folder (existing or to be created) that
    can be written, and none of the `files` to be written into it may be an
    existing folder. Errors are a `FieldError` naming `field`.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from ncgeom_torch.demo import check_output_folder
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     (Path(folder) / "report.json").mkdir()
    ...     try:
    ...         check_output_folder(folder, "out", ("report.json",))
    ...     except ValueError as err:
    ...         print(str(err).split(";")[0])
    `out` must not hold a folder named 'report.json', a file it writes
    """
    if isinstance(out, str) and not out:
        raise FieldError(field, "must name a folder; got ''")
    try:
        folder = check_output_dir(out, field)
    except ValueError as err:
        text = str(err).removeprefix(f"`{field}` ")
        raise FieldError(field, text) from None
    for name in files:
        target = folder / name
        if target.is_dir() and not target.is_symlink():
            raise FieldError(
                field, f"must not hold a folder named {name!r}, a file it writes; got {str(out)!r}"
            )
    return folder


def _prepare(config: DemoConfig) -> tuple[Any, tuple[np.ndarray, np.ndarray, list[int]], Any]:
    """Every check of `config` before training: device, output folder, data, theory."""
    from ncgeom.theory import ufm_relu_optimum

    _check_config(config)
    device = check_device(config.device)
    files = REPORT_FILES + (FIGURE_FILES if config.plots else ())
    check_output_folder(config.out, "out", files)
    data = load_dataset(config.dataset, config.counts, config.ratio, config.seed)
    counts = data[2]
    theory = ufm_relu_optimum(counts, config.lambda_w, config.lambda_h)
    if config.width < theory.num_alive:
        raise FieldError(
            "width",
            f"(the feature dimension) must be at least {theory.num_alive}, the number of "
            f"classes alive at the optimum for these counts and lambdas; got {config.width}",
        )
    theory = ufm_relu_optimum(counts, config.lambda_w, config.lambda_h, dim=config.width)
    return device, data, theory


def _check_config(config: DemoConfig) -> None:
    if config.preset not in PRESETS:
        raise FieldError("preset", f"must be one of {tuple(PRESETS)}; got {config.preset!r}")
    for name in ("epochs", "eval_every", "width", "depth", "threads"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FieldError(name, f"must be a positive integer; got {value!r}")
    for name in ("lambda_w", "lambda_h", "lr", "ratio"):
        value = getattr(config, name)
        if isinstance(value, bool) or not (
            isinstance(value, (int, float)) and math.isfinite(value) and value > 0
        ):
            raise FieldError(name, f"must be a finite number > 0; got {value!r}")
    if config.ratio > 1:
        raise FieldError(
            "ratio",
            f"(the smallest default class over the largest) must lie in (0, 1]; got "
            f"{config.ratio!r}",
        )
    seed = config.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise FieldError("seed", f"must be an integer in [0, 2**63); got {seed!r}")
    cores = os.cpu_count() or 1
    if config.threads > cores:
        raise FieldError(
            "threads", f"must be at most {cores}, the CPUs of this machine; got {config.threads}"
        )


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}"


def _markdown(summary: dict[str, Any]) -> str:
    """``report.md``: the verdict first, then the run, the per-class table and figures."""
    from ncgeom.vocabulary import METRICS

    config, final, history = summary["config"], summary["final"], summary["history"]
    first = history[0]
    report = _final_report(summary)
    verdict = report.verdict()
    terminal = summary["terminal_phase"]
    lines = [
        "# ncgeom demo",
        "",
        f"Preset `{config['preset']}`. "
        f"Data set `{config['dataset']}`, {summary['num_samples']} samples, counts "
        f"{summary['counts']}; bias-free ReLU MLP, depth {config['depth']}, width "
        f"{config['width']}; lambda_W = {config['lambda_w']:g}, lambda_H = "
        f"{config['lambda_h']:g} (lambda_H multiplies the sum of ||h_i||^2 over all "
        f"samples); {config['epochs']} full-batch epochs ({summary['seconds']:.0f} s). "
        f"Train accuracy {final['train_accuracy']:.3f} (all classes).",
        "",
        _terminal_line(terminal),
        "",
        *_collapse_lines(verdict),
        verdict.markdown().rstrip("\n"),
        "",
        *_depth_lines(summary),
        "## During training",
        "",
        f"| metric | epoch {first['epoch']} | epoch {final['epoch']} |",
        "|---|---|---|",
    ]
    for name, metric in METRICS.items():
        before, after = first.get(name), final.get(name)
        why = final["unavailable"].get(name)
        cell = _fmt(after) if after is not None else f"- ({why})" if why else "-"
        lines.append(f"| {metric.label} | {_fmt(before)} | {cell} |")
    lines += ["", "## Per class (final epoch)", "", verdict.class_table().rstrip("\n")]
    figures = [Path(f).name for f in summary.get("files", []) if f.endswith(".png")]
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{Path(name).stem}]({name})" for name in figures]
    return "\n".join(lines) + "\n"


def _terminal_line(terminal: dict[str, Any]) -> str:
    """The terminal-phase check: one line, a warning when it was not reached."""
    from ncgeom.criteria import GRAD_BOUND, KKT_BOUND

    measured = (
        f"train accuracy {terminal['train_accuracy_alive']:.4g} on the classes that did "
        f"not collapse (needs 1), KKT residual of UFM+ {terminal['kkt_residual']:.2g} (needs <= "
        f"{KKT_BOUND:g}), relative gradient norm {terminal['grad_norm']:.2g} (needs <= "
        f"{GRAD_BOUND:g})"
    )
    if terminal["reached"]:
        return f"Terminal phase reached: {measured}."
    return (
        f"**Warning: training did not reach the terminal phase** ({measured}): "
        f"{_meaning(terminal)}."
    )


def _collapse_lines(verdict: Any) -> list[str]:
    """Minority collapse: the classes predicted to collapse and what became of them."""
    predicted = verdict.predicted_collapsed
    if not predicted:
        return [
            "No class is predicted to collapse at these counts and lambdas "
            f"(n_crit = {verdict.collapse_count:.3g} samples); `--preset collapse` shows "
            "minority collapse.",
            "",
        ]
    outcome = {c.index: c.observed for c in verdict.classes}
    held = [k for k in predicted if outcome.get(k) == "collapsed"]
    text = (
        f"Minority collapse: the theorem collapses classes {_listing(predicted)} "
        f"(n_k <= n_crit = {verdict.collapse_count:.3g}); by the criteria of "
        "`ncgeom.criteria`, "
    )
    if len(held) == len(predicted):
        text += "all of them collapsed"
    else:
        text += f"{_listing(held) if held else 'none'} of them collapsed"
    others = [k for k in outcome if k not in predicted]
    alive = [k for k in others if outcome[k] == "alive"]
    text += f", and {len(alive)} of the {len(others)} classes predicted alive are alive"
    return [text + ".", ""]


def _listing(indices: list[int]) -> str:
    return ", ".join(str(k) for k in indices)


def _depth_lines(summary: dict[str, Any]) -> list[str]:
    """The depth report: the progression sentence and the table of layers x metrics."""
    from ncgeom.measure.depth import DEPTH_METRICS
    from ncgeom.vocabulary import label

    depth, metrics = summary["depth"], DEPTH_METRICS
    modes = sorted(set(depth["reduce"].values()))
    lines = [
        "## Through depth",
        "",
        f"Every hidden layer's output (features: {', '.join(modes)}), measured in one pass "
        "over the training set after training; the last is the classifier's input.",
        "",
        depth["progression"]["sentence"],
        "",
    ]
    rows = [
        "| layer | " + " | ".join(label(m) for m in metrics) + " |",
        "|---" * (len(metrics) + 1) + "|",
    ]
    for layer in depth["layers"]:
        values = depth["values"][layer]
        cells = [_fmt(values.get(m)) for m in metrics]
        rows.append(f"| {layer} | " + " | ".join(cells) + " |")
    notes = [
        f"- {layer}, {label(metric)}: {why}"
        for layer in depth["layers"]
        for metric, why in depth.get("reasons", {}).get(layer, {}).items()
        if depth["values"][layer].get(metric) is None
    ]
    if notes:
        rows += ["", "Why a value is `-`:", "", *notes]
    return [*lines, *rows, ""]


def _final_report(summary: dict[str, Any]) -> Any:
    """The final evaluation as an `NCReport` (for its verdict)."""
    import dataclasses

    from ncgeom.report import NCReport

    final = summary["final"]
    fields = {f.name for f in dataclasses.fields(NCReport)}
    values = {k: v for k, v in final.items() if k in fields}
    for name in NCReport.PER_CLASS:
        if values.get(name) is not None:
            values[name] = tuple(values[name])
    values["counts"] = tuple(values["counts"])
    values["excluded"] = tuple((e["class"], e["reason"]) for e in values["excluded"])
    values["unavailable"] = tuple(values["unavailable"].items())
    return NCReport(**values)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DemoConfig()
    parser.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default=defaults.preset,
        help="named settings; 'collapse': counts and lambdas at which the theorem collapses "
        "the three rarest classes, and 12000 epochs to reach the terminal phase (options "
        "given explicitly win)",
    )
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        default=defaults.dataset,
        help="training data: scikit-learn's 8x8 digits or a Gaussian mixture",
    )
    add_counts_option(
        parser,
        required=False,
        help="samples per class, separated by commas or spaces, or @FILE (default: "
        "geometric, from the full class down to --ratio of it)",
    )
    parser.add_argument(
        "--ratio",
        type=float,
        default=defaults.ratio,
        help="smallest class over largest, in (0, 1], for the default geometric counts",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="full-batch training epochs, Adam with cosine learning-rate decay "
        f"(default {defaults.epochs}, or the preset's)",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=None,
        help="epochs between evaluations of the metrics, the NCC agreement and the objective "
        f"(default {defaults.eval_every}, or the preset's)",
    )
    parser.add_argument(
        "--lambda-w",
        type=float,
        default=None,
        help="lambda_W of the UFM+ objective: (lambda_W/2)||W||_F^2 on the classifier "
        f"(default {defaults.lambda_w:g}, or the preset's)",
    )
    parser.add_argument(
        "--lambda-h",
        type=float,
        default=None,
        help="lambda_H of the UFM+ objective: (lambda_H/2) sum_i ||h_i||^2, summed over "
        f"the penultimate features of all N samples (default {defaults.lambda_h:g}, or the "
        "preset's)",
    )
    parser.add_argument(
        "--width",
        type=int,
        default=defaults.width,
        help="width of each hidden layer (the feature dimension d)",
    )
    parser.add_argument(
        "--depth", type=int, default=defaults.depth, help="number of bias-free hidden ReLU layers"
    )
    parser.add_argument("--lr", type=float, default=defaults.lr, help="initial Adam learning rate")
    parser.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="seed of the data subset and the initial weights",
    )
    parser.add_argument(
        "--device", default=defaults.device, help="torch device, e.g. cpu, cuda, cuda:1"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=defaults.threads,
        help="torch CPU threads while training (1 keeps the run time steady on shared cores)",
    )
    parser.add_argument("--out", default=defaults.out, help="output folder, created if missing")
    parser.add_argument(
        "--no-plots",
        action="store_true",
        help="skip the PNG figures (report.md and report.json only)",
    )


def _run(args: argparse.Namespace) -> int:
    given = {
        "counts": None if args.counts is None else tuple(args.counts),
        "lambda_w": args.lambda_w,
        "lambda_h": args.lambda_h,
        "epochs": args.epochs,
        "eval_every": args.eval_every,
    }
    preset = {**DemoConfig().__dict__, **PRESETS[args.preset]}
    chosen = {name: preset[name] if value is None else value for name, value in given.items()}
    config = DemoConfig(
        preset=args.preset,
        dataset=args.dataset,
        ratio=args.ratio,
        **chosen,
        width=args.width,
        depth=args.depth,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        out=args.out,
        plots=not args.no_plots,
    )
    modules = {"torch": "training"}
    if config.dataset == "digits":
        modules["sklearn"] = "the digits data set"
    if config.plots:
        modules["matplotlib"] = "the figures; or pass --no-plots"
    require_extra("demo", modules, needed_by="`ncgeom demo`")
    try:
        with warnings.catch_warnings():
            # Reported in report.md instead: the reasons of undefined metrics (every
            # evaluation of a run with collapsed classes has some) and the terminal phase.
            warnings.filterwarnings("ignore", message="degenerate class geometry")
            warnings.filterwarnings("ignore", message="training did not reach")
            summary = run_demo(config)
    except FieldError as err:
        raise err.for_option() from None
    print(Path(summary["files"][1]).read_text())
    if not summary["terminal_phase"]["reached"]:
        print("warning: " + _not_terminal(summary["terminal_phase"]), file=sys.stderr)
    print("wrote " + ", ".join(summary["files"]))
    return 0


#: The ``ncgeom demo`` subcommand (entry point ``ncgeom.commands: demo``).
command = Command(
    "train a ReLU network on imbalanced data and compare its geometry with the theorem",
    _add_arguments,
    _run,
)
