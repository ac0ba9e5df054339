"""`NeuralCollapseCallback`: neural-collapse metrics of a Lightning model, epoch by epoch.

The callback taps a layer of the `LightningModule` (by default the input of
its last ``nn.Linear``: the penultimate features), accumulates
`ncgeom.ClassStats` over the training or validation batches of every n-th
epoch, combines the ranks of a distributed fit through the trainer's
strategy (``strategy.all_gather`` and ``strategy.reduce``), logs every metric
with ``LightningModule.log`` (so TensorBoard, CSV and other loggers get
them), compares with the UFM+ optimum when the weight decays are given, and
writes the last report at the end of the fit.

Importing this module imports torch and lightning; importing `ncgeom_torch`
does not.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import array_api_compat.torch as torch_xp
import lightning.pytorch as pl
import torch
from torch import nn

from ncgeom import ClassStats, NCReport, nc_report
from ncgeom.checks import check_num_classes, check_positive, check_positive_int
from ncgeom.metrics import check_ood_vector
from ncgeom.plugins import reduce_class_stats
from ncgeom.utils import jsonable

from .regularizer import classifier_weight, layer_bias
from .tap import resolve_layer
from .tracker import checked_counts, optimum_for

__all__ = ["NeuralCollapseCallback", "default_labels", "last_linear_layer"]

_LABEL_KEYS = ("labels", "label", "y", "target", "targets")


def last_linear_layer(model: nn.Module) -> nn.Module:
    """The last ``nn.Linear`` registered in `model` (its classifier, by convention).

    Raises
    ------
    ValueError
        If the model has no ``nn.Linear``.

    Examples
    --------
    >>> from torch import nn
    >>> from ncgeom_torch.lightning import last_linear_layer
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> last_linear_layer(net) is net[2]
    True
    """
    found = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not found:
        msg = (
            "`model` has no nn.Linear layer to tap by default; pass "
            "NeuralCollapseCallback(..., layer='<name of the classifier layer>')"
        )
        raise ValueError(msg)
    return found[-1]


class NeuralCollapseCallback(pl.Callback):
    """Track neural collapse during a Lightning fit.

    Parameters
    ----------
    num_classes : int
        K; labels must lie in [0, K).
    layer : str or torch.nn.Module, optional
        The layer whose *input* is captured (dotted name or module of the
        LightningModule). Default: the last ``nn.Linear`` of the module. When
        its weight is (K, d), it is also the classifier of the classifier
        metrics.
    stage : {"train", "validate"}
        Accumulate over the training batches (features as the network sees
        them while it learns, with the weights of each step) or over the
        validation batches (one fixed network a epoch; the sanity check is
        skipped).
    every_n_epochs : int
        Measure epochs ``n-1, 2n-1, ...`` (0-based), like
        ``check_val_every_n_epoch``; with ``stage="validate"`` only epochs
        that run validation are measured.
    lambda_w, lambda_h : float, optional
        The UFM+ weight decays of the fit (conventions of `ncgeom.loss`:
        ``lambda_h`` multiplies the sum of ``||h_i||^2`` over the N training
        samples). Give both to compare with the closed-form optimum
        (`ncgeom.theory.ufm_relu_optimum`): ``gof_error`` and the
        per-class norms and margins are then logged and reported too.
    counts : sequence of int, optional
        Class counts of the training set for the theory, one positive
        integer per class; default the counts observed in the measured
        epoch. A string (e.g. ``"1,2,3"``) is a `TypeError`: pass a
        sequence such as ``[1, 2, 3]``.
    labels : callable, optional
        ``labels(batch)`` returns the batch's integer labels. Default: the
        second item of a tuple or list batch, or the entry ``"labels"``,
        ``"label"``, ``"y"``, ``"target"`` or ``"targets"`` of a dict batch.
    gram : bool
        Keep the (d, d) within-class Gram (NC1 needs it).
    dtype : torch.dtype
        Precision of the accumulated statistics (default float64).
    prefix : str
        Prefix of the logged names (default ``"nc/"``: ``nc/nc1``, ...).
    report_dir : str or Path, optional
        Folder of ``neural_collapse.json`` and ``neural_collapse.md``,
        written by global rank 0 at the end of the fit. Default: the
        trainer's ``log_dir`` (else its ``default_root_dir``).
    ood_mean : tensor (d,), optional
        Mean feature of out-of-distribution samples: adds NC5
        (``ood_deviation``; see `ncgeom.nc_report`).

    Attributes
    ----------
    history : list of (int, dict)
        ``(epoch, NCReport.to_dict())`` for each measured epoch, the same on
        every rank.
    last_report : NCReport or None
        The report of the last measured epoch.
    report_path : Path or None
        Where the JSON report was written (on global rank 0).

    Notes
    -----
    The statistics are sums, so a distributed fit reports exactly the
    statistics of all ranks' samples (`ncgeom.plugins.reduce_class_stats`,
    four collectives an epoch). The statistics stay on the features' device;
    each batch costs one small host read (the label-range check of
    `ncgeom.ClassStats.update`) and each measured epoch one read of the
    report's numbers.

    Examples
    --------
    >>> import torch, lightning.pytorch as pl
    >>> from torch import nn
    >>> from ncgeom_torch.lightning import NeuralCollapseCallback
    >>> class Tiny(pl.LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    ...     def training_step(self, batch, batch_idx):
    ...         x, y = batch
    ...         return nn.functional.cross_entropy(self.net(x), y)
    ...     def configure_optimizers(self):
    ...         return torch.optim.SGD(self.parameters(), lr=0.1)
    >>> x, y = torch.randn(48, 4), torch.arange(48) % 3
    >>> loader = torch.utils.data.DataLoader(list(zip(x, y)), batch_size=16)
    >>> callback = NeuralCollapseCallback(3, report_dir=None)
    >>> trainer = pl.Trainer(
    ...     max_epochs=1, callbacks=[callback], logger=False, enable_progress_bar=False,
    ...     enable_model_summary=False, enable_checkpointing=False,
    ...     default_root_dir=__import__("tempfile").mkdtemp(),
    ... )
    >>> trainer.fit(Tiny(), loader)
    >>> callback.last_report.num_samples, "nc/nc1" in trainer.callback_metrics
    (48, True)
    """

    def __init__(
        self,
        num_classes: int,
        *,
        layer: str | nn.Module | None = None,
        stage: str = "train",
        every_n_epochs: int = 1,
        lambda_w: float | None = None,
        lambda_h: float | None = None,
        counts: Sequence[int] | None = None,
        labels: Callable[[Any], torch.Tensor] | None = None,
        gram: bool = True,
        dtype: torch.dtype = torch.float64,
        prefix: str = "nc/",
        report_dir: str | Path | None = None,
        ood_mean: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        if stage not in ("train", "validate"):
            msg = f"`stage` must be 'train' or 'validate'; got {stage!r}"
            raise ValueError(msg)
        if (lambda_w is None) != (lambda_h is None):
            msg = (
                "`lambda_w` and `lambda_h` must be given together; "
                f"got lambda_w={lambda_w!r}, lambda_h={lambda_h!r}"
            )
            raise ValueError(msg)
        if lambda_w is not None:
            lambda_w = check_positive(lambda_w, "lambda_w")
            lambda_h = check_positive(lambda_h, "lambda_h")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            msg = f"`dtype` must be a floating torch.dtype; got {dtype!r}"
            raise TypeError(msg)
        if labels is not None and not callable(labels):
            msg = f"`labels` must be callable (batch -> labels); got {type(labels).__name__}"
            raise TypeError(msg)
        self.layer_spec = layer
        self.stage = stage
        self.every_n_epochs = check_positive_int(every_n_epochs, "every_n_epochs")
        self.lambda_w, self.lambda_h = lambda_w, lambda_h
        self.counts = None if counts is None else checked_counts(counts, self.num_classes)
        self.labels_of = labels if labels is not None else default_labels
        self.gram = bool(gram)
        self.dtype = dtype
        self.prefix = str(prefix)
        self.report_dir = None if report_dir is None else Path(report_dir)
        self.ood_mean = None if ood_mean is None else _checked_ood_mean(ood_mean)
        self.history: list[tuple[int, dict[str, Any]]] = []
        self.last_report: NCReport | None = None
        self.report_path: Path | None = None
        self.layer: nn.Module | None = None
        self._handle: Any = None
        self._active = False
        self._captured: torch.Tensor | None = None
        self._stats: ClassStats | None = None

    # ------------------------------------------------------------------ wiring
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Find the tapped layer and hook its input."""
        if self._handle is not None:
            return
        if self.layer_spec is None:
            self.layer = last_linear_layer(pl_module)
        else:
            self.layer = resolve_layer(pl_module, self.layer_spec)
        self._handle = self.layer.register_forward_pre_hook(self._hook)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove the hook."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._active = False
        self._captured = None

    def _hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self._active and args and isinstance(args[0], torch.Tensor):
            self._captured = args[0].detach()

    def _due(self, trainer: pl.Trainer) -> bool:
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _start(self, trainer: pl.Trainer) -> None:
        self._stats = None
        self._captured = None
        self._active = self._due(trainer)

    def _observe(self, batch: Any) -> None:
        features, self._captured = self._captured, None
        if not self._active or features is None:
            return
        labels = self.labels_of(batch)
        if not isinstance(labels, torch.Tensor):
            msg = (
                f"the labels of a batch must be a torch.Tensor; got {type(labels).__name__} "
                "(pass NeuralCollapseCallback(..., labels=lambda batch: ...))"
            )
            raise TypeError(msg)
        if features.ndim != 2:
            features = features.flatten(1)
        labels = labels.to(features.device)
        if features.dtype != self.dtype and features.dtype.itemsize < self.dtype.itemsize:
            # Promote first: the batch's class sums are then taken in `dtype` too.
            features = features.to(self.dtype)
        if self._stats is None:
            self._stats = ClassStats.empty(
                self.num_classes,
                int(features.shape[1]),
                gram=self.gram,
                xp=torch_xp,
                device=features.device,
                dtype=self.dtype,
            )
        self._stats = self._stats.update(features, labels)

    # ------------------------------------------------------------------ hooks
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.stage == "train":
            self._start(trainer)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.stage == "train":
            self._observe(batch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.stage == "train" and self._active:
            self._finish(trainer, pl_module)

    def on_validation_epoch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> None:
        if self.stage == "validate":
            if trainer.sanity_checking:
                self._active = False
            else:
                self._start(trainer)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.stage == "validate":
            self._observe(batch)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.stage == "validate" and self._active and not trainer.sanity_checking:
            self._finish(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the last report (global rank 0)."""
        if not self.history or not trainer.is_global_zero:
            return
        folder = self.report_dir
        if folder is None:
            folder = Path(trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        payload = {
            "num_classes": self.num_classes,
            "layer": self._layer_name(pl_module),
            "stage": self.stage,
            "lambda_w": self.lambda_w,
            "lambda_h": self.lambda_h,
            "history": [{"epoch": epoch, "report": report} for epoch, report in self.history],
        }
        self.report_path = folder / "neural_collapse.json"
        self.report_path.write_text(json.dumps(jsonable(payload), indent=2) + "\n")
        epoch = self.history[-1][0]
        text = (
            f"# Neural collapse at epoch {epoch} ({self.stage})\n\n```\n{self.last_report}\n```\n"
        )
        (folder / "neural_collapse.md").write_text(text)

    # ------------------------------------------------------------------ report
    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._active = False
        stats = self._combine(trainer)
        self._stats = None
        if stats is None:
            return
        report = self._report(stats)
        self.last_report = report
        self.history.append((int(trainer.current_epoch), report.to_dict()))
        with warnings.catch_warnings():
            # The values are those of all ranks' samples already: no sync_dist needed.
            warnings.filterwarnings("ignore", message=r".*sync_dist=True.*")
            for name in NCReport.METRICS:
                value = getattr(report, name)
                if value is not None:
                    pl_module.log(
                        f"{self.prefix}{name}", float(value), on_step=False, on_epoch=True
                    )

    def _combine(self, trainer: pl.Trainer) -> ClassStats | None:
        """The statistics of every rank's samples (None when no rank saw a batch)."""
        local = self._stats
        world_size = int(trainer.world_size)
        if world_size == 1:
            return local
        if local is None:  # this rank saw nothing: any dimension will do
            local = ClassStats.empty(
                self.num_classes,
                1,
                gram=self.gram,
                xp=torch_xp,
                device=trainer.strategy.root_device,
                dtype=self.dtype,
            )
        strategy = trainer.strategy

        def all_gather(x: torch.Tensor) -> list[torch.Tensor]:
            return list(strategy.all_gather(x.contiguous()).unbind(0))

        def all_reduce(x: torch.Tensor) -> torch.Tensor:
            return strategy.reduce(x.contiguous().clone(), reduce_op="sum")

        combined = reduce_class_stats(
            local,
            rank=int(trainer.global_rank),
            world_size=world_size,
            all_gather=all_gather,
            all_reduce=all_reduce,
        )
        return combined if int(combined.num_samples) > 0 else None

    def _report(self, stats: ClassStats) -> NCReport:
        weight = bias = None
        layer_weight = getattr(self.layer, "weight", None)
        with_theory = self.lambda_w is not None
        if (
            isinstance(layer_weight, torch.Tensor)
            and layer_weight.ndim == 2
            and tuple(layer_weight.shape) == (self.num_classes, stats.dim)
        ):
            weight = classifier_weight(self.layer, warn=with_theory).detach()
            weight = weight.to(device=stats.device, dtype=stats.dtype)
            bias = layer_bias(self.layer)
            if bias is not None:
                bias = bias.to(device=stats.device, dtype=stats.dtype)
        theory = None
        if with_theory:
            theory = optimum_for(stats, self.counts, self.lambda_w, self.lambda_h)
        ood_mean = self.ood_mean
        if ood_mean is not None:
            ood_mean = ood_mean.to(device=stats.device, dtype=stats.dtype)
        return nc_report(stats, weight, bias, theory=theory, ood_mean=ood_mean)

    def _layer_name(self, pl_module: pl.LightningModule) -> str:
        for name, module in pl_module.named_modules():
            if module is self.layer:
                return name
        return type(self.layer).__name__


def _checked_ood_mean(ood_mean: Any) -> torch.Tensor:
    """A finite, non-zero 1-D floating tensor, checked when the callback is made
    (its width is checked against the features' at the first report)."""
    if not isinstance(ood_mean, torch.Tensor):
        msg = f"`ood_mean` must be a 1-D torch tensor; got {type(ood_mean).__name__}"
        raise TypeError(msg)
    if ood_mean.ndim != 1:
        msg = f"`ood_mean` must be 1-D (one entry per feature); got shape {tuple(ood_mean.shape)}"
        raise ValueError(msg)
    return check_ood_vector(ood_mean, ood_mean.shape[0], like=ood_mean, like_name="ood_mean")


def default_labels(batch: Any) -> Any:
    """The labels of a batch: item 1 of a tuple or list, or a dict's label entry."""
    if isinstance(batch, Mapping):
        for key in _LABEL_KEYS:
            if key in batch:
                return batch[key]
        msg = (
            f"a dict batch needs one of the keys {list(_LABEL_KEYS)} for the labels; got "
            f"{list(batch)} (pass NeuralCollapseCallback(..., labels=lambda batch: ...))"
        )
        raise ValueError(msg)
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[1]
    msg = (
        f"cannot find the labels of a {type(batch).__name__} batch; pass "
        "NeuralCollapseCallback(..., labels=lambda batch: ...)"
    )
    raise ValueError(msg)
