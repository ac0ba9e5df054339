"""`NCTrainerCallback`: neural collapse of a language model during ``transformers.Trainer.train``.

In a language model the classes are the next tokens: the features are the
input of the LM head (the last hidden state) at position t and the label is
the token at t + 1. A `transformers.TrainerCallback` receives no batch, so the
callback hooks the model: a forward pre-hook on the model reads the batch's
``labels``, ``input_ids`` and ``attention_mask`` (the keyword arguments the
Trainer calls it with), a `FeatureTap` on the head captures the hidden
states, and a forward hook on the model turns the two into (features,
next-token labels) with `next_token_targets` and adds them to an
`NCTracker`. The values go through the Trainer's logging, and the JSON and
markdown reports are written at the end of training, as the Lightning
callback does.

Importing this module imports torch and transformers; importing
`ncgeom_torch` does not.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ncgeom import ClassStats, NCReport, nc_report
from ncgeom.checks import check_num_classes, check_positive_int
from ncgeom.plugins import shard_report
from ncgeom.utils import jsonable

from .tap import FeatureTap, resolve_layer, unwrap_model
from .tracker import NCTracker

__all__ = ["IGNORE_INDEX", "NCTrainerCallback", "next_token_targets"]

#: The label that the Hugging Face losses ignore.
IGNORE_INDEX = -100

_SOURCES = ("train", "eval")
_CLASSIFIERS = ("lm_head", "embeddings")


def next_token_targets(
    hidden: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (features, next-token labels) pairs of a batch of sequences.

    The hidden state at position t predicts the token at t + 1: the rows are
    ``hidden[:, :-1]`` and their labels ``labels[:, 1:]`` (the shift the
    causal-LM losses of ``transformers`` make), or ``input_ids[:, 1:]`` when
    the batch has no labels. A pair is dropped when its label is
    `ignore_index` or when either of its two positions is padding
    (``attention_mask == 0``).

    Parameters
    ----------
    hidden : tensor (B, T, d)
        The input of the LM head.
    labels, input_ids : integer tensor (B, T), optional
        The batch's labels (as given to the model, not yet shifted), else
        its tokens; one of the two is required.
    attention_mask : tensor (B, T), optional
        1 for tokens, 0 for padding.
    ignore_index : int
        The label of positions left out of the loss.

    Returns
    -------
    features : tensor (M, d)
        The kept rows of ``hidden[:, :-1]``, batch-major.
    targets : int64 tensor (M,)
        Their next tokens.

    Raises
    ------
    TypeError
        If a tensor is missing or has the wrong dtype.
    ValueError
        If the shapes disagree.

    Examples
    --------
    >>> import torch
    >>> from ncgeom_torch.hf import next_token_targets
    >>> hidden = torch.arange(8.0).reshape(1, 4, 2)
    >>> labels = torch.tensor([[5, 6, -100, 7]])
    >>> x, y = next_token_targets(hidden, labels=labels)
    >>> x.tolist(), y.tolist()
    ([[0.0, 1.0], [4.0, 5.0]], [6, 7])
    """
    if not isinstance(hidden, torch.Tensor) or not hidden.is_floating_point():
        msg = f"`hidden` must be a floating torch.Tensor (B, T, d); got {_kind(hidden)}"
        raise TypeError(msg)
    if hidden.ndim != 3:
        msg = f"`hidden` must be 3-D (batch, tokens, dim); got shape {tuple(hidden.shape)}"
        raise ValueError(msg)
    name, targets = ("labels", labels) if labels is not None else ("input_ids", input_ids)
    if targets is None:
        msg = "give `labels` or `input_ids` (the next tokens come from one of them); got neither"
        raise TypeError(msg)
    _check_tokens(targets, name, hidden)
    targets = targets.to(hidden.device)
    features, following = hidden[:, :-1], targets[:, 1:]
    keep = following != ignore_index
    if attention_mask is not None:
        _check_tokens(attention_mask, "attention_mask", hidden, integer=False)
        mask = attention_mask.to(hidden.device) != 0
        keep = keep & mask[:, :-1] & mask[:, 1:]
    return features[keep], following[keep].to(torch.int64)


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor"
    return type(value).__name__


def _check_tokens(value: Any, name: str, hidden: torch.Tensor, *, integer: bool = True) -> None:
    """`value` is a (B, T) tensor matching `hidden` (of integers unless `integer` is False)."""
    if not isinstance(value, torch.Tensor) or value.is_complex():
        msg = f"`{name}` must be a torch.Tensor (batch, tokens); got {_kind(value)}"
        raise TypeError(msg)
    if integer and (value.is_floating_point() or value.dtype == torch.bool):
        msg = f"`{name}` must hold integer token ids; got {_kind(value)}"
        raise TypeError(msg)
    if tuple(value.shape) != tuple(hidden.shape[:2]):
        msg = (
            f"`{name}` must have shape (batch, tokens) = {tuple(hidden.shape[:2])} like the "
            f"hidden states; got {tuple(value.shape)}"
        )
        raise ValueError(msg)


class NCTrainerCallback(TrainerCallback):
    """Track neural collapse of a language model's next-token features with ``Trainer``.

    Parameters
    ----------
    num_classes : int, optional
        K, the number of token classes; default the rows of the LM head's
        weight (the vocabulary, padded as the head is).
    every_n_steps : int, optional
        With ``source="train"``: report after every n-th optimizer step,
        from the training batches of the last `window_steps` steps.
    every_n_epochs : int, optional
        With ``source="train"``: report at the end of every n-th epoch, from
        all its training batches. Give at most one of `every_n_steps` and
        `every_n_epochs`; the default is every epoch.
    window_steps : int, optional
        With `every_n_steps`: how many steps before each report are observed
        (default all n, so that every training batch counts; 1 observes only
        the reported step, which costs least).
    source : {"train", "eval"}
        The training stream (the features as the network makes them while it
        learns, every micro-batch of the steps observed) or each evaluation
        pass (``Trainer.evaluate``, scheduled by the Trainer's
        ``eval_strategy``; one fixed network). With "eval", the schedule
        arguments above must be left out.
    min_count : int, optional
        Leave out the token classes with fewer samples; they are counted in
        ``excluded``. NC1 is then unavailable with the reason (the
        within-class Gram pools every class); see `ncgeom.nc_report`.
        Classes with no sample are always left out.
    classifier : {"lm_head", "embeddings"} or None
        The classifier of the classifier metrics: the weight of the LM head
        (the output embeddings; for a tied model they are the input
        embeddings), the input embeddings (the tied alternative of an untied
        model), or none.
    layer : str or torch.nn.Module, optional
        The layer whose input is measured; default the LM head
        (``model.get_output_embeddings()``).
    out : str or Path, optional
        Folder of ``neural_collapse.json`` and ``neural_collapse.md``,
        written at the end of training by the main process; default the
        Trainer's ``output_dir``.
    prefix : str, optional
        Prefix of the logged names; default ``"nc/"`` (``"eval_nc/"`` with
        ``source="eval"``).
    dtype : torch.dtype
        Precision of the statistics (default float64; bf16 and float16
        hidden states are promoted before they are summed).
    gram : bool
        Keep the (d, d) within-class Gram (NC1 needs it).
    ignore_index : int
        The label left out of the loss (default -100).
    pairs : "auto", "exact" or int
        How pair metrics are computed (see `ncgeom.nc_report`).
    shard_classes : bool
        Each rank keeps only its contiguous slice of the token classes
        (``NCTracker(shard_classes=True)``) and the report is made from the
        shards (`ncgeom.plugins.shard_report`), for vocabularies whose class
        table would not fit every rank. The held rows are then handed to their
        owners at the end of every observed optimizer step (``source="train"``)
        or evaluation step (``"eval"``), a collective of all ranks. `pairs`
        works as without shards (the same sampled pairs and intervals),
        `last_stats` stays None, and the tapped layer must have a (K, d)
        weight (it gives d to a rank that has no row to send). Default False.

    Attributes
    ----------
    history : list of (int, dict)
        ``(global_step, NCReport.to_dict())`` for each report.
    last_report : NCReport or None
    last_stats : ClassStats or None
        The statistics (of all ranks) of the last report (None with
        `shard_classes`).
    report_path : Path or None
        Where the JSON report was written.

    Notes
    -----
    *Labels.* The hidden state at position t is labelled with the token at
    t + 1 (`next_token_targets`): ``labels[:, 1:]``, or ``input_ids[:, 1:]``
    when the model is called without labels (the Trainer takes them out of
    the batch with label smoothing or a ``compute_loss_func``). Pairs whose
    label is -100, or with a padding position (``attention_mask == 0``), are
    dropped: the callback measures the pairs that the loss counts.

    *Packed sequences.* When documents are concatenated into one row, the
    pair (last token of a document, first token of the next) is an ordinary
    pair: it is measured as the loss counts it, its class being the first
    token of the next document. To leave these pairs out, label the first
    token of each document -100, as ``DataCollatorWithFlattening`` does.

    *Logging.* The values are added to the logs of the Trainer's next
    ``on_log`` (the callback asks for a log at a measured step) and to
    ``state.log_history``. Callbacks run in order and the Trainer puts its
    reporting integrations (TensorBoard, W&B, ...) before those passed to
    it: `attach` puts this callback first so that they receive the values
    too. In a distributed run the statistics of all ranks are combined
    exactly (`NCTracker`), every rank must measure the same steps.

    *Cost.* Adding rows to the statistics costs O(K d) on a GPU whatever
    their number (on the host, a copy of K d numbers), so the kept rows of the
    observed micro-batches are held (in the hidden states' dtype) until they
    reach K rows, then added as one batch:
    the cost per token is O(d^2) (the Gram) and O(d) (the class sums), and the
    rows held (fewer than K, plus the micro-batch that completes them) take
    about as much memory as the class table of the statistics. Each
    observed micro-batch costs one host read (the selection of the kept
    pairs), each added batch one more (the label-range and finiteness check).

    Examples
    --------
    >>> import tempfile, torch
    >>> from transformers import GPT2Config, GPT2LMHeadModel, PrinterCallback, Trainer
    >>> from transformers import TrainingArguments
    >>> from ncgeom_torch.hf import NCTrainerCallback
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = GPT2LMHeadModel(GPT2Config(vocab_size=16, n_embd=8, n_layer=1, n_head=2))
    >>> ids = torch.randint(0, 16, (8, 12))
    >>> data = [{"input_ids": row, "labels": row} for row in ids]
    >>> folder = tempfile.mkdtemp()
    >>> args = TrainingArguments(
    ...     folder, max_steps=2, per_device_train_batch_size=4, report_to=[],
    ...     save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=100,
    ... )
    >>> callback = NCTrainerCallback(every_n_steps=1)
    >>> trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    >>> trainer.remove_callback(PrinterCallback)  # it would print the logs here
    >>> _ = trainer.train()
    >>> callback.last_report.num_samples, sorted({e["step"] for e in trainer.state.log_history
    ...                                           if "nc/nc1" in e})
    (44, [1, 2])
    """

    def __init__(
        self,
        num_classes: int | None = None,
        *,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = None,
        window_steps: int | None = None,
        source: str = "train",
        min_count: int | None = None,
        classifier: str | None = "lm_head",
        layer: str | nn.Module | None = None,
        out: str | Path | None = None,
        prefix: str | None = None,
        dtype: torch.dtype = torch.float64,
        gram: bool = True,
        ignore_index: int = IGNORE_INDEX,
        pairs: str | int = "auto",
        shard_classes: bool = False,
    ) -> None:
        self.num_classes = None if num_classes is None else check_num_classes(num_classes)
        if source not in _SOURCES:
            msg = f"`source` must be 'train' or 'eval'; got {source!r}"
            raise ValueError(msg)
        if source == "eval" and (
            every_n_steps is not None or every_n_epochs is not None or window_steps is not None
        ):
            msg = (
                "with source='eval' every evaluation pass is measured: leave out "
                "`every_n_steps`, `every_n_epochs` and `window_steps` and schedule the passes "
                "with TrainingArguments(eval_strategy=..., eval_steps=...)"
            )
            raise ValueError(msg)
        if every_n_steps is not None and every_n_epochs is not None:
            msg = (
                "give at most one of `every_n_steps` and `every_n_epochs`; got "
                f"every_n_steps={every_n_steps!r}, every_n_epochs={every_n_epochs!r}"
            )
            raise ValueError(msg)
        if window_steps is not None and every_n_steps is None:
            msg = f"`window_steps` needs `every_n_steps`; got window_steps={window_steps!r}"
            raise ValueError(msg)
        self.source = source
        self.every_n_steps = (
            None if every_n_steps is None else check_positive_int(every_n_steps, "every_n_steps")
        )
        if every_n_epochs is None and every_n_steps is None and source == "train":
            every_n_epochs = 1
        self.every_n_epochs = (
            None
            if every_n_epochs is None
            else check_positive_int(every_n_epochs, "every_n_epochs")
        )
        self.window_steps = self.every_n_steps
        if window_steps is not None:
            self.window_steps = check_positive_int(window_steps, "window_steps")
            if self.window_steps > self.every_n_steps:
                msg = (
                    f"`window_steps` must be at most `every_n_steps` ({self.every_n_steps}); "
                    f"got {self.window_steps}"
                )
                raise ValueError(msg)
        self.min_count = None if min_count is None else check_positive_int(min_count, "min_count")
        if classifier is not None and classifier not in _CLASSIFIERS:
            msg = f"`classifier` must be 'lm_head', 'embeddings' or None; got {classifier!r}"
            raise ValueError(msg)
        self.classifier = classifier
        if layer is not None and not isinstance(layer, (str, nn.Module)):
            msg = f"`layer` must be a dotted name or a torch.nn.Module; got {type(layer).__name__}"
            raise TypeError(msg)
        self.layer_spec = layer
        self.out = None if out is None else Path(out)
        if prefix is None:
            prefix = "nc/" if source == "train" else "eval_nc/"
        if not isinstance(prefix, str):
            msg = f"`prefix` must be a str; got {type(prefix).__name__}"
            raise TypeError(msg)
        self.prefix = prefix
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            msg = f"`dtype` must be a floating torch.dtype; got {dtype!r}"
            raise TypeError(msg)
        self.dtype = dtype
        self.gram = bool(gram)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            msg = f"`ignore_index` must be an int; got {type(ignore_index).__name__}"
            raise TypeError(msg)
        self.ignore_index = ignore_index
        self.pairs = pairs
        self.shard_classes = bool(shard_classes)
        self.history: list[tuple[int, dict[str, Any]]] = []
        self.last_report: NCReport | None = None
        self.last_stats: ClassStats | None = None
        self.report_path: Path | None = None
        self.model: nn.Module | None = None
        self.layer: nn.Module | None = None
        self._tracker: NCTracker | None = None
        self._tap: FeatureTap | None = None
        self._handles: list[Any] = []
        self._batch: dict[str, Any] = {}
        self._forwards = 0
        self._rows: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._num_rows = 0
        self._active = False
        self._pending: dict[str, float] = {}

    # ------------------------------------------------------------------ wiring
    def attach(self, trainer: Any) -> NCTrainerCallback:
        """Add this callback to `trainer` ahead of its other callbacks and hook its model.

        Callbacks run in order and the Trainer lists its reporting
        integrations before the callbacks given to it; placed first, this
        callback's values reach every logger. Returns the callback.
        """
        handler = getattr(trainer, "callback_handler", None)
        if handler is None or not hasattr(trainer, "model"):
            msg = f"`trainer` must be a transformers.Trainer; got {type(trainer).__name__}"
            raise TypeError(msg)
        if self in handler.callbacks:
            handler.callbacks.remove(self)
        handler.callbacks.insert(0, self)
        self.install(trainer.model)
        return self

    def install(self, model: nn.Module) -> None:
        """Hook `model` (idempotent for the same model; the Trainer's events call it)."""
        model = unwrap_model(model)
        if self.model is model:
            return
        self.remove()
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if self.layer_spec is not None:
            layer = resolve_layer(model, self.layer_spec)
        elif isinstance(head, nn.Module):
            layer = head
        else:
            msg = (
                f"the model ({type(model).__name__}) has no output embeddings (LM head) to tap; "
                "pass NCTrainerCallback(..., layer='<name of the head>')"
            )
            raise ValueError(msg)
        if self.num_classes is None:
            weight = getattr(layer, "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
                msg = (
                    "`num_classes` is needed when the tapped layer has no (K, d) weight; "
                    "got num_classes=None"
                )
                raise ValueError(msg)
            self.num_classes = int(weight.shape[0])
        weight = getattr(layer, "weight", None)
        if self.shard_classes and (not isinstance(weight, torch.Tensor) or weight.ndim != 2):
            msg = (
                "shard_classes=True needs a tapped layer with a (K, d) weight (its d is sent by "
                f"ranks without rows); got {type(layer).__name__}"
            )
            raise ValueError(msg)
        self.model, self.layer = model, layer
        self._tracker = NCTracker(
            self.num_classes, gram=self.gram, dtype=self.dtype, shard_classes=self.shard_classes
        )
        self._tap = FeatureTap(model, layer).__enter__()
        self._handles = [
            model.register_forward_pre_hook(self._read_batch, with_kwargs=True),
            model.register_forward_hook(self._observe),
        ]

    def remove(self) -> None:
        """Remove the hooks (the history and reports stay)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._tap is not None:
            self._tap.close()
        self._tap = None
        self.model = None
        self._batch = {}
        self._rows, self._num_rows = [], 0

    def _classifier_weight(self, model: nn.Module, layer: nn.Module) -> torch.Tensor | None:
        if self.classifier is None:
            return None
        if self.classifier == "embeddings":
            source = (
                model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
            )
        else:
            source = layer
        weight = getattr(source, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
            return None
        if self.num_classes is not None and weight.shape[0] != self.num_classes:
            return None
        return weight

    # ------------------------------------------------------------------ hooks on the model
    def _read_batch(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if not self._wanted(module):
            self._batch = {}
            return
        batch = {key: kwargs.get(key) for key in ("labels", "input_ids", "attention_mask")}
        if batch["input_ids"] is None and args and isinstance(args[0], torch.Tensor):
            batch["input_ids"] = args[0]
        self._batch = batch
        self._forwards = self._tap.num_forwards

    def _wanted(self, module: nn.Module) -> bool:
        if self.source == "train":
            return self._active and module.training
        return not module.training

    def _observe(self, module: nn.Module, args: Any, output: Any) -> None:
        batch, self._batch = self._batch, {}
        if not batch or self._tap.num_forwards == self._forwards:
            return  # not measured, or the head did not run
        if batch["labels"] is None and batch["input_ids"] is None:
            return  # e.g. a forward pass from embeddings: no tokens to label
        hidden = self._tap.features
        if hidden.ndim != 3:
            msg = (
                f"the input of the tapped layer must be (batch, tokens, dim); got shape "
                f"{tuple(hidden.shape)}"
            )
            raise ValueError(msg)
        features, targets = next_token_targets(hidden, **batch, ignore_index=self.ignore_index)
        if features.shape[0] == 0:
            return
        self._rows.append((features, targets))
        self._num_rows += int(features.shape[0])
        if self._num_rows >= self.num_classes and not self.shard_classes:
            self._flush()

    def _flush(self) -> None:
        """Add the held rows to the statistics, as one batch (with `shard_classes`,
        a collective: every rank sends its rows, maybe none)."""
        rows, self._rows, self._num_rows = self._rows, [], 0
        if not rows and self.shard_classes:
            weight = self.layer.weight
            rows = [
                (
                    torch.zeros((0, weight.shape[1]), dtype=self.dtype, device=weight.device),
                    torch.zeros((0,), dtype=torch.int64, device=weight.device),
                )
            ]
        if not rows:
            return
        features = torch.cat([x for x, _ in rows])
        targets = torch.cat([y for _, y in rows])
        if features.dtype.itemsize < self.dtype.itemsize:
            features = features.to(self.dtype)  # sum bf16/float16 values in `dtype`
        self._tracker.observe(features, targets)

    def _reset(self) -> None:
        self._rows, self._num_rows = [], 0
        if self._tracker is not None:
            self._tracker.reset()

    # ------------------------------------------------------------------ Trainer events
    def on_init_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if kwargs.get("model") is not None:
            self.install(kwargs["model"])

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if kwargs.get("model") is not None:
            self.install(kwargs["model"])
        self._active = False
        if self.source == "train":
            self._reset()

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.source == "train" and self.every_n_epochs is not None:
            epoch = round(state.epoch or 0)
            self._active = (epoch + 1) % self.every_n_epochs == 0
            self._reset()

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.source == "train" and self.every_n_steps is not None:
            step = state.global_step + 1  # the step about to run
            self._active = (
                step - 1
            ) % self.every_n_steps >= self.every_n_steps - self.window_steps

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.shard_classes and self.source == "train" and self._active:
            self._flush()  # every rank at every observed step
        if self.source != "train" or self.every_n_steps is None:
            return
        if state.global_step % self.every_n_steps == 0:
            self._active = False
            if self._finish(state):
                control.should_log = True

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.source == "train" and self.every_n_epochs is not None and self._active:
            self._active = False
            if self._finish(state):
                control.should_log = True

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.source == "eval" and logs is not None and _is_eval_log(logs):
            self._finish(state)
        if not self._pending or logs is None:
            return
        logs.update(self._pending)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self._pending)
        else:
            state.log_history.append({**self._pending, "step": state.global_step})
        self._pending = {}

    def on_prediction_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.shard_classes and self.source == "eval" and self._tracker is not None:
            self._flush()  # every rank at every evaluation step

    def on_predict(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.source == "eval":
            self._reset()  # Trainer.predict is not an evaluation pass

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._active = False
        if self.history and state.is_world_process_zero:
            self.save(self.out if self.out is not None else Path(args.output_dir))

    # ------------------------------------------------------------------ report
    def _finish(self, state: TrainerState) -> bool:
        """Report the observed samples (of all ranks); False when there were none."""
        tracker = self._tracker
        if tracker is None:
            return False
        self._flush()
        if self.shard_classes:
            return self._finish_shards(state)
        if not tracker._distributed() and tracker.num_batches == 0:
            return False
        try:
            stats = tracker.combined_stats()
        except RuntimeError as error:
            if error.__cause__ is None:  # no labelled token on any rank
                tracker.reset()
                return False
            raise
        tracker.reset()
        weight = self._classifier_weight(self.model, self.layer)
        if weight is not None:
            if weight.shape[1] != stats.dim:
                weight = None
            else:
                weight = weight.detach().to(device=stats.device, dtype=stats.dtype)
        bias = getattr(self.layer, "bias", None) if self.classifier == "lm_head" else None
        if weight is None or not isinstance(bias, torch.Tensor):
            bias = None
        else:
            bias = bias.detach().to(device=stats.device, dtype=stats.dtype)
        with warnings.catch_warnings():
            # Unseen tokens are usual at vocabulary scale: they are counted in `excluded`.
            warnings.filterwarnings("ignore", message=r".*have no samples and are left out.*")
            report = nc_report(stats, weight, bias, min_count=self.min_count, pairs=self.pairs)
        self.last_report, self.last_stats = report, stats
        self._log(report, state)
        return True

    def _finish_shards(self, state: TrainerState) -> bool:
        """`_finish` from the shards of the token classes (``shard_classes``)."""
        tracker = self._tracker
        if tracker.num_batches == 0:
            return False
        shard, group = tracker.shard(), tracker._sharded.collectives
        tracker.reset()
        if shard.num_samples == 0:
            return False
        stats = shard.stats
        rows = slice(shard.offset, shard.offset + stats.num_classes)
        weight = self._classifier_weight(self.model, self.layer)
        bias = getattr(self.layer, "bias", None) if self.classifier == "lm_head" else None
        if weight is not None and weight.shape[1] != stats.dim:
            weight = None
        if weight is not None:
            weight = weight.detach()[rows].to(device=stats.device, dtype=stats.dtype)
        if weight is None or not isinstance(bias, torch.Tensor):
            bias = None
        else:
            bias = bias.detach()[rows].to(device=stats.device, dtype=stats.dtype)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*have no samples and are left out.*")
            report = shard_report(
                shard,
                group,
                weight,
                bias,
                min_count=self.min_count,
                pairs=self.pairs,
            )
        self.last_report, self.last_stats = report, None
        self._log(report, state)
        return True

    def _log(self, report: NCReport, state: TrainerState) -> None:
        """Record `report` and queue its values for the next log."""
        self.history.append((int(state.global_step), report.to_dict()))
        values = {
            f"{self.prefix}{name}": float(getattr(report, name))
            for name in NCReport.METRICS
            if getattr(report, name) is not None
        }
        values[f"{self.prefix}classes_measured"] = float(report.num_classes - len(report.excluded))
        values[f"{self.prefix}classes_excluded"] = float(len(report.excluded))
        values[f"{self.prefix}tokens"] = float(report.num_samples)
        self._pending.update(values)

    def save(self, folder: str | Path) -> Path:
        """Write ``neural_collapse.json`` (every report) and ``neural_collapse.md`` (the last)
        into `folder`; return the JSON path."""
        if not self.history:
            msg = "no report to save yet: the callback has not measured a step"
            raise RuntimeError(msg)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tied = None
        if self.model is not None and hasattr(self.model, "get_input_embeddings"):
            tied = self.model.get_input_embeddings().weight is getattr(self.layer, "weight", None)
        payload = {
            "num_classes": self.num_classes,
            "layer": self._layer_name(),
            "source": self.source,
            "classifier": self.classifier,
            "tied_embeddings": tied,
            "min_count": self.min_count,
            "history": [{"step": step, "report": report} for step, report in self.history],
        }
        self.report_path = folder / "neural_collapse.json"
        self.report_path.write_text(json.dumps(jsonable(payload), indent=2) + "\n")
        step = self.history[-1][0]
        report = self.last_report
        kept = report.num_classes - len(report.excluded)
        text = (
            f"# Neural collapse of the next-token features at step {step} ({self.source})\n\n"
            f"{report.num_samples} tokens; {kept} of {report.num_classes} token classes "
            f"measured, {len(report.excluded)} left out"
            f"{'' if self.min_count is None else f' (min_count={self.min_count})'}.\n\n"
            f"```\n{_summary(report)}\n```\n"
        )
        (folder / "neural_collapse.md").write_text(text)
        return self.report_path

    def _layer_name(self) -> str | None:
        if self.model is None:
            return None
        for name, module in self.model.named_modules():
            if module is self.layer:
                return name
        return type(self.layer).__name__


def _is_eval_log(logs: dict[str, Any]) -> bool:
    """Whether `logs` are the metrics of ``Trainer.evaluate`` (``<prefix>_runtime``)."""
    return any(key.endswith("_runtime") and not key.startswith("train") for key in logs)


def _summary(report: NCReport) -> str:
    """The report's text without its per-class list of left-out classes (one line each)."""
    lines = str(report).splitlines()
    kept = [line for line in lines if not line.startswith("  excluded: ")]
    return "\n".join(kept)
