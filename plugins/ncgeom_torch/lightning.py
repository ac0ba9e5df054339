"""`NeuralCollapseCallback`: neural-collapse metrics of a Lightning model, epoch by epoch.

The callback taps a layer of the `LightningModule` (by default the input of
its last ``nn.Linear``: the penultimate features), or the outputs of several
layers (``layers=``: collapse through depth), accumulates
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
from ncgeom.depth import DEPTH_METRICS, DepthReport
from ncgeom.metrics import check_ood_vector
from ncgeom.plugins import reduce_class_stats
from ncgeom.utils import jsonable

from .regularizer import classifier_weight, layer_bias
from .tap import LayerSpec, match_layers, resolve_layer
from .tracker import NCTracker, checked_counts, optimum_for

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
    layers : str, type, callable or sequence, optional
        Measure collapse through depth: the *outputs* of these modules of
        the LightningModule (dotted names, module types, a predicate
        ``(name, module) -> bool``, or a sequence; see
        `ncgeom_torch.match_layers`), in depth order, the last being the
        classifier's input. Each measured epoch gives an `ncgeom.DepthReport`
        and logs ``nc/<layer>/<metric>`` for the depth metrics
        (`ncgeom.depth.DEPTH_METRICS`; the NCC accuracy, which needs a second
        pass over the data, is left out). `layer` (default: the last
        ``nn.Linear``) is then the classifier of the last layer's metrics,
        used when its weight is (K, d) for that layer's d.
    reduce : {"pool", "flatten", "tokens"} or dict of str to str
        How a layer's output of rank > 2 becomes features (see
        `ncgeom_torch.NCTracker`); with `layers` only.

    Attributes
    ----------
    history : list of (int, dict)
        ``(epoch, NCReport.to_dict())`` for each measured epoch, the same on
        every rank (``DepthReport.to_dict()`` with `layers`).
    last_report : NCReport, DepthReport or None
        The report of the last measured epoch.
    report_path : Path or None
        Where the JSON report was written (on global rank 0). With `layers`,
        ``neural_collapse_depth.json`` (`DepthReport.save`) and the figure
        ``neural_collapse_depth.png`` (`DepthReport.plot`, when matplotlib is
        installed) are written beside it, and ``neural_collapse.md`` holds
        the table of layers x metrics and the progression sentence.

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
        layers: LayerSpec | None = None,
        reduce: str | Mapping[str, str] = "pool",
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
        # Through depth: the matched modules, their hooks and captured outputs,
        # and a tracker (this rank only) holding the statistics of each layer.
        self.layers_spec = layers
        self._depth = NCTracker(
            self.num_classes, reduce=reduce, gram=gram, dtype=dtype, sync=False
        )
        self.reduce = self._depth.reduce
        self.layer_names: tuple[str, ...] = ()
        self._layer_handles: list[Any] = []
        self._outputs: dict[str, tuple[torch.Tensor, int]] = {}

    # ------------------------------------------------------------------ wiring
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Find the tapped layer and hook its input."""
        if self._handle is not None or self._layer_handles:
            return
        if self.layers_spec is not None:
            self._setup_layers(pl_module)
            return
        if self.layer_spec is None:
            self.layer = last_linear_layer(pl_module)
        else:
            self.layer = resolve_layer(pl_module, self.layer_spec)
        self._handle = self.layer.register_forward_pre_hook(self._hook)

    def _setup_layers(self, pl_module: pl.LightningModule) -> None:
        """Hook the output of every matched layer; find the classifier (optional)."""
        matched = match_layers(pl_module, self.layers_spec)
        self.layer_names = tuple(matched)
        self._layer_handles = [
            module.register_forward_hook(self._output_hook(name))
            for name, module in matched.items()
        ]
        if self.layer_spec is not None:
            self.layer = resolve_layer(pl_module, self.layer_spec)
        else:
            linear = [m for m in pl_module.modules() if isinstance(m, nn.Linear)]
            self.layer = linear[-1] if linear else None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove the hooks."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        for handle in self._layer_handles:
            handle.remove()
        self._layer_handles = []
        self._active = False
        self._captured = None
        self._outputs = {}

    def _output_hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not self._active:
                return
            if not isinstance(output, torch.Tensor):
                msg = (
                    f"the output of layer {name!r} ({type(module).__name__}) must be a tensor "
                    f"to be measured; got {type(output).__name__}"
                )
                raise TypeError(msg)
            tensor = output.detach()
            self._outputs[name] = (tensor, tensor._version)

        return hook

    def _hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self._active and args and isinstance(args[0], torch.Tensor):
            self._captured = args[0].detach()

    def _due(self, trainer: pl.Trainer) -> bool:
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _start(self, trainer: pl.Trainer) -> None:
        self._stats = None
        self._captured = None
        self._outputs = {}
        self._depth.reset()
        self._active = self._due(trainer)

    def _observe(self, batch: Any) -> None:
        if self.layers_spec is not None:
            self._observe_layers(batch)
            return
        features, self._captured = self._captured, None
        if not self._active or features is None:
            return
        labels = self._labels(batch)
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

    def _observe_layers(self, batch: Any) -> None:
        outputs, self._outputs = self._outputs, {}
        if not self._active or not outputs:
            return
        for name, (tensor, version) in outputs.items():
            if tensor._version != version:
                msg = (
                    f"the output of layer {name!r} was changed in place after it was captured "
                    "(an in-place operation such as ReLU(inplace=True) follows it): measure "
                    "the module that makes the final value instead"
                )
                raise RuntimeError(msg)
        self._depth.observe({name: outputs[name][0] for name in outputs}, self._labels(batch))

    def _labels(self, batch: Any) -> torch.Tensor:
        labels = self.labels_of(batch)
        if not isinstance(labels, torch.Tensor):
            msg = (
                f"the labels of a batch must be a torch.Tensor; got {type(labels).__name__} "
                "(pass NeuralCollapseCallback(..., labels=lambda batch: ...))"
            )
            raise TypeError(msg)
        return labels

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
        if isinstance(self.last_report, DepthReport):
            self._write_depth(folder)
            return
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

    def _write_depth(self, folder: Path) -> None:
        """The depth outputs: history (JSON), last report (JSON), table (markdown), figure."""
        report = self.last_report
        payload = {
            "num_classes": self.num_classes,
            "layers": list(report.layers),
            "reduce": dict(report.reduce),
            "stage": self.stage,
            "lambda_w": self.lambda_w,
            "lambda_h": self.lambda_h,
            "history": [{"epoch": epoch, "report": entry} for epoch, entry in self.history],
        }
        self.report_path = folder / "neural_collapse.json"
        self.report_path.write_text(json.dumps(jsonable(payload), indent=2) + "\n")
        report.save(folder / "neural_collapse_depth.json")
        epoch = self.history[-1][0]
        text = (
            f"# Collapse through depth at epoch {epoch} ({self.stage})\n\n{report.table()}\n\n"
            f"{report.progression().sentence}\n"
        )
        (folder / "neural_collapse.md").write_text(text)
        try:
            report.plot(folder / "neural_collapse_depth.png")
        except ImportError:
            pass  # matplotlib is optional: the JSON and the table hold the values

    # ------------------------------------------------------------------ report
    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.layers_spec is not None:
            self._finish_layers(trainer, pl_module)
            return
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

    def _finish_layers(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._active = False
        local = self._depth.layer_stats
        self._depth.reset()
        stats = {}
        for name in self.layer_names:
            gram = self.gram and self._depth.layer_mode(name) != "flatten"
            stats[name] = self._combine(trainer, local.get(name), gram=gram)
        if any(value is None for value in stats.values()):
            return
        last = stats[self.layer_names[-1]]
        classifier = None
        weight = getattr(self.layer, "weight", None)
        if isinstance(weight, torch.Tensor) and tuple(weight.shape) == (
            self.num_classes,
            last.dim,
        ):
            classifier = self.layer
        report = self._depth._depth_report(
            stats, classifier, self.lambda_w, self.lambda_h, self.ood_mean, self.counts
        )
        self.last_report = report
        self.history.append((int(trainer.current_epoch), report.to_dict()))
        with warnings.catch_warnings():
            # The values are those of all ranks' samples already: no sync_dist needed.
            warnings.filterwarnings("ignore", message=r".*sync_dist=True.*")
            for layer in report.layers:
                for name in DEPTH_METRICS:
                    value = report.value(layer, name)
                    if value is not None:
                        pl_module.log(
                            f"{self.prefix}{layer}/{name}",
                            float(value),
                            on_step=False,
                            on_epoch=True,
                        )

    def _combine(
        self, trainer: pl.Trainer, local: Any = False, *, gram: bool | None = None
    ) -> ClassStats | None:
        """The statistics of every rank's samples (None when no rank saw a batch):
        this rank's `local` ones (default: those of the tapped layer)."""
        if local is False:
            local = self._stats
        world_size = int(trainer.world_size)
        if world_size == 1:
            return local
        if local is None:  # this rank saw nothing: any dimension will do
            local = ClassStats.empty(
                self.num_classes,
                1,
                gram=self.gram if gram is None else gram,
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
