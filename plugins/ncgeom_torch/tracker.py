"""`NCTracker`: neural-collapse statistics of a PyTorch model, batch by batch and across ranks."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import array_api_compat.torch as torch_xp
import torch
from torch import nn

from ncgeom.checks import (
    check_batch,
    check_container,
    check_counts,
    check_features,
    check_labels,
    check_num_classes,
    check_positive,
)
from ncgeom.layers import LAYOUTS, REDUCE_MODES, SecondPass, layer_features
from ncgeom.metrics import NCCAgreement, ncc_agreement
from ncgeom.plugins import (
    ClassShard,
    Collectives,
    ShardedClassStats,
    shard_counts,
    shard_ncc_agreement,
    shard_report,
)
from ncgeom.report import NCReport, nc_report
from ncgeom.stats import ClassStats, class_moments
from ncgeom.theory import UFMOptimum, ufm_relu_optimum
from ncgeom.utils import jsonable, to_host

from ._plugin import all_reduce_stats, collectives
from .regularizer import classifier_weight, layer_bias
from .tap import FeatureTap, LayerSpec, resolve_layer, unwrap_model

if TYPE_CHECKING:
    from ncgeom.depth import DepthReport

__all__ = ["NCTracker"]


class NCTracker:
    """Accumulate `ClassStats` of penultimate features and report neural collapse.

    `observe` adds a batch of features and labels to statistics kept on the
    features' device (torch backend, `dtype` precision); `report` turns them
    into an `ncgeom.NCReport`, combining all ranks first when
    ``torch.distributed`` is initialised; `evaluate` runs a whole evaluation
    pass of a model. Each report is appended to `history`.

    Through depth, ``observe({name: features}, labels)`` fills one
    `ClassStats` per layer (`layer_stats`) from one batch, and `report` and
    ``evaluate(model, loader, layers=...)`` return an `ncgeom.DepthReport`.

    Parameters
    ----------
    num_classes : int
        K; labels must lie in [0, K).
    reduce : {"pool", "flatten", "tokens"} or dict of str to str
        How a layer's output of rank > 2 becomes rows of features
        (`ncgeom.layer_features`): average pooling over the spatial or
        sequence axes (default), flattening (d = C H W; no Gram is kept for
        such a layer, and `evaluate`'s second pass gives its NC1), or every
        token a sample. A dict gives the mode per layer name (``"pool"`` for
        the names it leaves out). 2-D features are taken as they are.
    layout : {"channels_first", "channels_last"}
        Where the channel axis of a layer's output is: torch's (N, C, H, W)
        and (N, C, L) (default), or (N, *spatial, C) such as tokens (N, T, d).
    gram : bool
        Keep the (d, d) within-class Gram (needed for NC1 from streamed
        statistics; costs d^2 numbers and one (B, d) x (d, B) product per batch).
    dtype : torch.dtype
        Precision of the accumulated statistics (default float64); float32
        features are promoted, half precision accumulates at least in float32.
    check_finite : bool
        Scan each batch for NaN/Inf (one small device-to-host read per batch,
        shared with the label-range check).
    sync : bool
        Combine the statistics of all ranks in `report` when
        ``torch.distributed`` is initialised (default). False reports this
        rank's samples only.
    group : ProcessGroup, optional
        Process group to combine over (default: the world).
    shard_classes : bool
        Keep on each rank only its contiguous slice of the classes
        (`ncgeom.plugins.ShardedClassStats`), for vocabulary-sized K: every
        `observe` then hands the batch to the owners of its classes, so it is
        a collective (every rank of the group calls it the same number of
        times; an empty (0, d) batch is allowed), `report` is computed from
        the shards (`ncgeom.plugins.shard_report`, equal to the report of the
        whole table), `evaluate`'s second pass scores each batch against the
        shards (`ncgeom.plugins.shard_ncc_agreement`), and `stats`,
        `combined_stats` and statistics per layer are unavailable (`shard`
        gives this rank's classes). Default False.

    Notes
    -----
    Safe to use from several threads: a lock serialises `observe`, `reset`,
    `report` and `combined_stats`, so no batch is lost and `num_batches`
    counts exactly the batches held. If combining across ranks fails (a rank
    disagrees, or a collective times out), the statistics of this rank are
    left unchanged and nothing is added to `history`; the error says so.
    Every rank must call `report` (or `combined_stats`) the same number of
    times; give the process group a timeout
    (``torch.distributed.init_process_group(..., timeout=...)``) so that a
    rank that never arrives raises instead of blocking the others forever.

    Attributes
    ----------
    history : list of (step, dict)
        One entry per `report`: the step (given, or the report's index) and
        ``NCReport.to_dict()`` (with the theory fields when lambdas were
        given), plus the lambdas.

    Examples
    --------
    >>> import torch
    >>> from ncgeom_torch import NCTracker
    >>> tracker = NCTracker(3)
    >>> g = torch.Generator().manual_seed(0)
    >>> for _ in range(4):
    ...     y = torch.randint(0, 3, (50,), generator=g)
    ...     h = 5 * torch.eye(3)[y] + 0.1 * torch.randn(50, 3, generator=g)
    ...     tracker.observe(h, y)
    >>> report = tracker.report(step=1)
    >>> report.num_samples, report.nc1 < 1e-2
    (200, True)
    >>> tracker.history[0][0]
    1
    """

    def __init__(
        self,
        num_classes: int,
        *,
        reduce: str | Mapping[str, str] = "pool",
        layout: str = "channels_first",
        gram: bool = True,
        dtype: torch.dtype = torch.float64,
        check_finite: bool = True,
        sync: bool = True,
        group: Any = None,
        shard_classes: bool = False,
    ) -> None:
        self.num_classes = check_num_classes(num_classes)
        self.reduce = _checked_reduce(reduce)
        self.layout = _checked_choice(layout, "layout", LAYOUTS)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            msg = f"`dtype` must be a floating torch.dtype; got {dtype!r}"
            raise TypeError(msg)
        self.gram = bool(gram)
        self.dtype = dtype
        self.check_finite = bool(check_finite)
        self.sync = bool(sync)
        self.group = group
        self.shard_classes = bool(shard_classes)
        self.history: list[tuple[int, dict[str, Any]]] = []
        self._stats: ClassStats | None = None
        self._sharded: ShardedClassStats | None = None
        self._layer_stats: dict[str, ClassStats] = {}
        self._layer_names: tuple[str, ...] | None = None
        self._num_batches = 0
        self._lock = threading.RLock()
        # Cross-rank merges so far: every rank states it, so that a rank that
        # skipped a report (or retried one that failed) is refused, not mixed in.
        self._merges = 0

    # ------------------------------------------------------------------ accumulate
    @property
    def stats(self) -> ClassStats:
        """This rank's statistics (not combined across ranks)."""
        if self.shard_classes:
            raise RuntimeError(_SHARDED)
        if self._stats is None:
            if self._layer_names is not None:
                msg = "this tracker holds statistics per layer: read `layer_stats`"
                raise RuntimeError(msg)
            raise RuntimeError(self._nothing_observed())
        return self._stats

    @property
    def layer_stats(self) -> dict[str, ClassStats]:
        """This rank's statistics of each layer, in depth order (not combined across ranks).

        Empty until ``observe({name: features}, labels)`` (or ``evaluate(...,
        layers=...)``) has seen a batch.

        Examples
        --------
        >>> import torch
        >>> from ncgeom_torch import NCTracker
        >>> tracker = NCTracker(2)
        >>> maps = torch.ones(4, 3, 5, 5)  # (N, C, H, W): pooled over H, W
        >>> tracker.observe({"conv": maps, "fc": torch.eye(4)}, torch.tensor([0, 1, 0, 1]))
        >>> {name: s.dim for name, s in tracker.layer_stats.items()}
        {'conv': 3, 'fc': 4}
        """
        with self._lock:
            return dict(self._layer_stats)

    def layer_mode(self, name: str) -> str:
        """The reduce mode (`reduce`) taken for layer `name`."""
        if isinstance(self.reduce, str):
            return self.reduce
        return self.reduce.get(name, "pool")

    @property
    def num_batches(self) -> int:
        """Batches observed since construction or the last `reset`."""
        return self._num_batches

    def reset(self) -> None:
        """Forget the accumulated statistics (the history is kept)."""
        with self._lock:
            self._stats = None
            self._sharded = None
            self._layer_stats = {}
            self._layer_names = None
            self._num_batches = 0

    def observe(
        self, features: torch.Tensor | Mapping[str, torch.Tensor], labels: torch.Tensor
    ) -> None:
        """Add one batch: features (B, d) and integer labels (B,) in [0, K).

        The features are detached and stay on their device; the labels are
        moved to it if needed (a copy of B integers). Every batch must be on
        the device of the first one.

        `features` may also map layer names to their outputs (e.g.
        `FeatureTap.outputs`): each is reduced to rows with
        `ncgeom.layer_features` (`reduce`, `layout`) and added to that
        layer's statistics (`layer_stats`; no Gram in flatten mode). The
        label range and the finiteness of every layer cost one host read
        together. Every batch must name the same layers; the first batch's
        order is the depth order. On the CPU, the statistics of a batch of
        fewer than `SMALL_WORK` entries (all layers, after reduction) are
        computed on one intra-op thread, restored afterwards: their many
        small operations only pay the thread pool's synchronisation.

        Raises
        ------
        TypeError
            If an argument is not a tensor, or has the wrong dtype.
        ValueError
            For a wrong shape, labels outside [0, K), non-finite features,
            a dimension or device other than the first batch's.
        """
        if isinstance(features, Mapping):
            self._observe_layers(features, labels)
            return
        for name, value in (("features", features), ("labels", labels)):
            if not isinstance(value, torch.Tensor):
                msg = f"`{name}` must be a torch.Tensor; got {type(value).__name__}"
                raise TypeError(msg)
        for name, value in (("features", features), ("labels", labels)):
            check_container(value, name)  # sparse or meta tensors hold no readable values
        features = features.detach()
        if features.ndim != 2 or features.shape[1] == 0:
            msg = (
                "`features` must be 2-D (batch, dim) with at least one column; "
                f"got shape {tuple(features.shape)}"
            )
            raise ValueError(msg)
        if labels.device != features.device:
            labels = labels.to(features.device, non_blocking=True)
        with self._lock:  # read, update and write back as one step
            self._observe(features, labels)

    def _observe(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if self._layer_names is not None:
            raise ValueError(_MIXED)
        if self.shard_classes:
            self._observe_shard(features, labels)
            return
        if self._stats is None:
            stats = ClassStats.empty(
                self.num_classes,
                int(features.shape[1]),
                gram=self.gram,
                xp=torch_xp,
                device=features.device,
                dtype=self.dtype,
            )
        else:
            stats = self._stats
            if features.device != stats.device:
                msg = (
                    f"`features` must be on {stats.device} like the earlier batches; "
                    f"got {features.device}"
                )
                raise ValueError(msg)
        self._stats = stats.update(features, labels, check_finite=self.check_finite)
        self._num_batches += 1

    def _observe_shard(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Every rank's batch into this rank's classes (a collective)."""
        if self._sharded is None:
            self._sharded = ShardedClassStats(
                self.num_classes,
                int(features.shape[1]),
                self._collectives(),
                gram=self.gram,
                xp=torch_xp,
                device=features.device,
                dtype=self.dtype,
            )
        elif features.device != self._sharded._device:
            msg = (
                f"`features` must be on {self._sharded._device} like the earlier batches; "
                f"got {features.device}"
            )
            raise ValueError(msg)
        self._sharded.update(features, labels, check_finite=self.check_finite)
        self._num_batches += 1

    def shard(self) -> ClassShard:
        """This rank's classes over the samples of all ranks (``shard_classes=True``);
        every rank of the group must call it.

        Examples
        --------
        >>> import torch
        >>> from ncgeom_torch import NCTracker
        >>> tracker = NCTracker(3, shard_classes=True)  # one process: one shard of all classes
        >>> tracker.observe(torch.eye(3), torch.tensor([0, 1, 1]))
        >>> shard = tracker.shard()
        >>> shard.offset, shard.stats.counts.tolist()
        (0, [1, 2, 0])
        """
        if not self.shard_classes:
            msg = "`shard` needs NCTracker(..., shard_classes=True); read `stats` instead"
            raise RuntimeError(msg)
        with self._lock:
            if self._sharded is None:
                raise RuntimeError(self._nothing_observed())
            return self._sharded.shard()

    def _observe_layers(self, batch: Mapping[str, Any], labels: Any) -> None:
        """``observe({name: features}, labels)``: one `ClassStats` per layer, one host read."""
        if self.shard_classes:
            msg = (
                "statistics per layer are not sharded: with shard_classes=True observe one "
                "(batch, dim) tensor of features"
            )
            raise ValueError(msg)
        if not isinstance(labels, torch.Tensor):
            msg = f"`labels` must be a torch.Tensor; got {type(labels).__name__}"
            raise TypeError(msg)
        check_container(labels, "labels")
        reduced = self._reduced(batch, labels)
        with self._lock:  # read, update and write back as one step
            if self._stats is not None:
                raise ValueError(_MIXED)
            names = tuple(reduced) if self._layer_names is None else self._layer_names
            if set(reduced) != set(names):
                msg = (
                    f"`features` must name the layers of the earlier batches, "
                    f"{list(names)}; got {list(reduced)}"
                )
                raise ValueError(msg)
            with _one_thread_if_small(x for x, _ in reduced.values()):
                self._check_layers(reduced)
                updated = {name: self._add(name, *reduced[name]) for name in names}
            self._layer_names = names
            self._layer_stats.update(updated)
            self._num_batches += 1

    def _reduced(
        self, batch: Mapping[str, Any], labels: torch.Tensor
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's rows (M, d) and labels (M,), validated without a host read."""
        if not batch:
            msg = "`features` must map at least one layer name to its output; got an empty dict"
            raise ValueError(msg)
        reduced = {}
        device = None
        for name, value in batch.items():
            if not isinstance(name, str):
                msg = f"`features` must be keyed by layer names (str); got {name!r}"
                raise TypeError(msg)
            label = f"features[{name!r}]"
            if not isinstance(value, torch.Tensor):
                msg = f"`{label}` must be a torch.Tensor; got {type(value).__name__}"
                raise TypeError(msg)
            check_container(value, label)
            value = value.detach()
            if device is None:
                device = value.device
            elif value.device != device:
                msg = f"`{label}` must be on {device} like the other layers; got {value.device}"
                raise ValueError(msg)
            if labels.device != device:
                labels = labels.to(device, non_blocking=True)
            with _naming(label):
                rows, rows_labels = layer_features(
                    value, labels, reduce=self.layer_mode(name), layout=self.layout
                )
                check_features(rows, torch_xp)
                check_labels(rows_labels, rows.shape[0], torch_xp)
                if rows.shape[1] == 0:
                    msg = (
                        "`features` must have at least one column; "
                        f"got shape {tuple(rows.shape)} from {tuple(value.shape)}"
                    )
                    raise ValueError(msg)
            if rows_labels.dtype != torch.int64:
                rows_labels = rows_labels.to(torch.int64)
            reduced[name] = (rows, rows_labels)
        return reduced

    def _check_layers(self, reduced: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Label range of the batch and finiteness of every layer: one host read."""
        filled = [(name, x, y) for name, (x, y) in reduced.items() if x.shape[0] > 0]
        if not filled:
            return
        _, x0, y0 = filled[0]
        parts = [y0.min(), y0.max()]
        if self.check_finite:
            for _, x, _ in filled:
                suspect = torch.logical_not(torch.isfinite(x.sum(dim=1)))
                parts.append(suspect.sum(dtype=torch.int64))
        low, high, *bad = (int(v) for v in to_host(torch.stack(parts)))
        if low < 0 or high >= self.num_classes:
            check_batch(x0, y0, self.num_classes, torch_xp, check_finite=False)  # raises
        for (name, x, y), count in zip(filled, bad, strict=False):
            if count:
                with _naming(f"features[{name!r}]"):
                    check_batch(x, y, self.num_classes, torch_xp, check_finite=True)

    def _add(self, name: str, features: torch.Tensor, labels: torch.Tensor) -> ClassStats:
        """The statistics of layer `name` with one validated batch added (no host read
        on a device: `class_moments` of the batch, merged in)."""
        stats = self._layer_stats.get(name)
        if stats is None:
            stats = ClassStats.empty(
                self.num_classes,
                int(features.shape[1]),
                gram=self.gram and self.layer_mode(name) != "flatten",
                xp=torch_xp,
                device=features.device,
                dtype=self.dtype,
            )
            fresh = True
        else:
            fresh = False
            label = f"features[{name!r}]"
            if features.device != stats.device:
                msg = (
                    f"`{label}` must be on {stats.device} like the earlier batches; "
                    f"got {features.device}"
                )
                raise ValueError(msg)
            if features.shape[1] != stats.dim:
                msg = (
                    f"`{label}` must give {stats.dim} columns like the earlier batches; "
                    f"got {features.shape[1]}"
                )
                raise ValueError(msg)
        if features.shape[0] == 0:
            return stats
        with _naming(f"features[{name!r}]"):
            batch, _ = class_moments(
                features,
                labels,
                self.num_classes,
                dtype=stats.dtype,
                gram=stats.gram is not None,
                check_finite=self.check_finite,
                pilot=None if fresh else stats,
            )
        return batch if fresh else stats.merge(batch)

    def evaluate(
        self,
        model: nn.Module,
        loader: Iterable[Any],
        layer: nn.Module | str | None = None,
        *,
        layers: LayerSpec | None = None,
        step: int | None = None,
        lambda_w: float | None = None,
        lambda_h: float | None = None,
        device: torch.device | str | None = None,
        ncc: bool = True,
        ood_mean: torch.Tensor | None = None,
    ) -> NCReport | DepthReport:
        """Statistics of one pass of `model` over `loader`, then `report`.

        Clears the accumulated statistics, captures the input of `layer`
        (the classifier) for every batch with gradients off and the model in
        eval mode, and restores each module's train/eval mode afterwards,
        also on errors. The classifier metrics use `layer`'s weight when it
        has one of shape (K, d).

        With such a classifier, `evaluate` also measures what statistics
        alone cannot give:

        - the UFM+ objective at the evaluated features, ``(1/N) sum_i CE_i +
          (lambda_w/2)||W||_F^2 + (lambda_h/2) sum_i ||h_i||^2`` (logits
          ``W h_i + b`` from `layer`'s weight and bias), when the lambdas are
          given: the verdict's gap to the optimum;
        - the NCC agreement (``ncc_agreement``): the nearest class centre
          needs the final class means, so a second pass over `loader`
          compares each sample's nearest centre with the classifier's
          argmax. It costs one more forward pass; ``ncc=False`` skips it, and
          a one-shot iterator (``iter(loader) is loader``) cannot be
          replayed, so there the report says why the value is missing.

        Both sums are combined across ranks like the statistics.

        With ``layers=`` (see `FeatureTap`), one forward pass per batch fills
        the statistics of every matched layer (their *outputs*, reduced by
        `reduce`), and the result is an `ncgeom.DepthReport`. The classifier
        (`layer`, else the model's last ``nn.Linear`` with K outputs) gives
        the classifier metrics of the last layer when its weight is (K, d) for
        that layer's d. The replayed pass fills an `ncgeom.SecondPass` per
        layer in the same forward pass as the NCC agreement: the
        nearest-class-centre accuracy of every layer, and NC1 of flattened
        layers (which keep no Gram). The UFM+ objective is not measured
        there; the lambdas give the theory of the last layer.

        Parameters
        ----------
        model : torch.nn.Module
            Possibly wrapped in DistributedDataParallel.
        loader : iterable
            Yields ``(inputs, labels, ...)``; inputs are moved to `device`.
        layer : torch.nn.Module or str, optional
            The classifier layer or its dotted name (see `FeatureTap`);
            required without `layers`.
        layers : str, type, callable or sequence, optional
            The layers whose outputs are measured (see `match_layers`), in
            depth order; the last should be the classifier's input.
        step : int, optional
            Recorded in `history` (e.g. the epoch).
        lambda_w, lambda_h : float, optional
            Regularisation of the UFM+ objective, for the theory comparison
            (the conventions of `ncgeom.loss`: lambda_h multiplies the sum of
            ``||h_i||^2`` over all N samples).
        device : torch.device or str, optional
            Where inputs go; default the device of the model's parameters.
        ncc : bool
            Make the second pass for the NCC agreement (default True).
        ood_mean : tensor (d,), optional
            Mean feature of out-of-distribution samples, for NC5
            (``ood_deviation``; see `ncgeom.nc_report`).

        Returns
        -------
        NCReport or DepthReport
            With the verdict's theory context and measured objective when
            the lambdas are given; a `DepthReport` with `layers`.

        Examples
        --------
        >>> import torch
        >>> from torch import nn
        >>> from ncgeom_torch import NCTracker
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(60, 5, generator=g), torch.arange(60) % 3
        >>> model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3, bias=False))
        >>> report = NCTracker(3).evaluate(
        ...     model, [(x, y)], model[2], lambda_w=1e-3, lambda_h=1e-3
        ... )
        >>> 0 <= report.ncc_agreement <= 1, report.objective > 0
        (True, True)
        """
        if layers is not None:
            if self.shard_classes:
                msg = "`layers` needs statistics per layer, which shard_classes=True does not keep"
                raise ValueError(msg)
            return self._evaluate_layers(
                model,
                loader,
                layer,
                layers,
                step=step,
                lambda_w=lambda_w,
                lambda_h=lambda_h,
                device=device,
                ncc=ncc,
                ood_mean=ood_mean,
            )
        if layer is None:
            msg = (
                "`layer` (the classifier, whose input is measured) is required without "
                "`layers`; got None"
            )
            raise TypeError(msg)
        tap = FeatureTap(model, layer)
        self.reset()
        if device is None:
            device = _model_device(model)
        modes = [(module, module.training) for module in model.modules()]
        with_theory = lambda_w is not None and lambda_h is not None
        sums: list[torch.Tensor] = []
        classifier = None
        model.eval()
        try:
            with torch.no_grad(), tap:
                for batch in loader:
                    inputs, labels = _split_batch(batch)
                    if isinstance(inputs, torch.Tensor):
                        inputs = inputs.to(device, non_blocking=True)
                    model(inputs)
                    self.observe(tap.features, labels)
                    classifier = self._classifier_of(tap.layer)
                    if classifier is not None and with_theory:
                        sums.append(_objective_sums(tap.features, labels, tap.layer))
                replay = ncc and classifier is not None and iter(loader) is not loader
                if replay:
                    agreement = self._agreement(model, loader, tap, device)
        finally:
            for module, training in modes:
                module.training = training
        objective = None
        if sums:
            total = self._all_sum(torch.stack(sums).sum(dim=0))
            ce_sum, sq_sum, count = (float(v) for v in total.cpu())
            weight = tap.layer.weight.detach()
            objective = (
                ce_sum / count
                + 0.5 * lambda_w * float((weight.double() ** 2).sum())
                + 0.5 * lambda_h * sq_sum
            )
        why_ncc = None
        if classifier is None:
            why_ncc = "no classifier: `layer` has no (K, d) weight"
        elif not ncc:
            why_ncc = "skipped: evaluate(..., ncc=False)"
        elif not replay:
            why_ncc = (
                "`loader` is a one-shot iterator: the second pass that NCC needs is impossible"
            )
        with self._lock:
            report = self._report(classifier, lambda_w, lambda_h, None, objective, ood_mean)
            if why_ncc is None:
                pair = torch.stack([agreement.matches, agreement.total]).double()
                if not self.shard_classes:  # those of the shards count every rank's rows
                    pair = self._all_sum(pair)
                matches, total = (float(v) for v in pair.cpu())
                report = _with_metric(report, "ncc_agreement", matches / total, None)
            else:
                report = _with_metric(report, "ncc_agreement", None, why_ncc)
            self._record(report, step, lambda_w, lambda_h)
        return report

    def _evaluate_layers(
        self,
        model: nn.Module,
        loader: Iterable[Any],
        layer: nn.Module | str | None,
        layers: LayerSpec,
        *,
        step: int | None,
        lambda_w: float | None,
        lambda_h: float | None,
        device: torch.device | str | None,
        ncc: bool,
        ood_mean: torch.Tensor | None,
    ) -> DepthReport:
        """`evaluate` with ``layers=``: a `DepthReport` from one forward pass per
        batch, and a second pass (replayed) for the NCC and flattened layers' NC1."""
        tap = FeatureTap(model, layers=layers)
        head = (
            resolve_layer(model, layer)
            if layer is not None
            else _last_classifier(model, self.num_classes)
        )
        if (lambda_w is None) != (lambda_h is None):
            self._report(None, lambda_w, lambda_h, None, None)  # raises the usual error
        self.reset()
        names = tap.names
        if device is None:
            device = _model_device(model)
        modes = [(module, module.training) for module in model.modules()]
        flattened = any(self.layer_mode(name) == "flatten" for name in names)
        passes: dict[str, SecondPass] = {}
        agreement = None
        replay = False
        model.eval()
        try:
            with torch.no_grad(), tap:
                for batch in loader:
                    inputs, labels = _split_batch(batch)
                    model(_placed(inputs, device))
                    outputs = tap.outputs
                    if len(outputs) != len(names):
                        silent = [name for name in names if name not in outputs]
                        msg = (
                            f"`layers` matched modules that did not run in the forward pass: "
                            f"{silent}; choose modules the model calls"
                        )
                        raise ValueError(msg)
                    self.observe(outputs, labels)
                with self._lock:
                    if self._layer_names is None:
                        self._layer_names = names  # this rank saw no batch
                stats = self.combined_layer_stats()
                classifier = self._depth_classifier(head, stats[names[-1]])
                replay = (ncc or flattened) and iter(loader) is not loader
                if replay:
                    passes = {
                        name: SecondPass(
                            stats[name], scatter=self.layer_mode(name) == "flatten", ncc=ncc
                        )
                        for name in names
                    }
                    means = stats[names[-1]].means
                    for batch in loader:
                        inputs, labels = _split_batch(batch)
                        model(_placed(inputs, device))
                        outputs = tap.outputs
                        rows_of = {}
                        for name in passes:
                            value = outputs[name]
                            if labels.device != value.device:
                                labels = labels.to(value.device, non_blocking=True)
                            rows_of[name] = layer_features(
                                value, labels, reduce=self.layer_mode(name), layout=self.layout
                            )
                        with _one_thread_if_small(x for x, _ in rows_of.values()):
                            for name, second in passes.items():
                                second.update(*rows_of[name])
                        last = rows_of[names[-1]][0]
                        if ncc and classifier is not None:
                            found = ncc_agreement(
                                last, classifier.weight, means, getattr(classifier, "bias", None)
                            )
                            agreement = found if agreement is None else agreement.merge(found)
        finally:
            for module, training in modes:
                module.training = training
        passes, pair = self._all_sum_passes(passes, agreement)
        why_ncc = None
        if classifier is None:
            why_ncc = "no classifier: the model has no (K, d) layer for the last layer's d"
        elif not ncc:
            why_ncc = "skipped: evaluate(..., ncc=False)"
        elif not replay:
            why_ncc = (
                "`loader` is a one-shot iterator: the second pass that NCC needs is impossible"
            )
        with self._lock:
            report = self._depth_report(
                stats, classifier, lambda_w, lambda_h, ood_mean, second=passes
            )
            last_report = report.reports[names[-1]]
            if why_ncc is None and pair is not None:
                matches, total = (float(v) for v in pair.cpu())
                last_report = _with_metric(last_report, "ncc_agreement", matches / total, None)
            elif why_ncc is not None:
                last_report = _with_metric(last_report, "ncc_agreement", None, why_ncc)
            reports = {**report.reports, names[-1]: last_report}
            report = dataclasses.replace(report, reports=reports)
            self._record(report, step, lambda_w, lambda_h)
        return report

    def _depth_classifier(self, head: nn.Module | None, last: ClassStats) -> nn.Module | None:
        """`head` when its weight is (K, d) for the last layer's d, else None (with a
        warning when it exists but does not fit)."""
        if head is None:
            return None
        weight = getattr(head, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
            return None
        if tuple(weight.shape) != (self.num_classes, last.dim):
            warnings.warn(
                f"the classifier's weight is {tuple(weight.shape)}, not ({self.num_classes}, "
                f"{last.dim}) for the last tapped layer: no classifier metrics (tap the "
                "classifier's input as the last layer)",
                UserWarning,
                stacklevel=4,
            )
            return None
        return head

    def _all_sum_passes(
        self, passes: dict[str, SecondPass], agreement: Any
    ) -> tuple[dict[str, SecondPass], torch.Tensor | None]:
        """The second passes and the NCC agreement (matches, total) summed over the
        ranks: one all-reduce per dtype for all layers together."""
        parts: list[torch.Tensor] = [a for second in passes.values() for a in second.arrays]
        pair = None
        if agreement is not None:
            pair = torch.stack([agreement.matches, agreement.total]).double()
            parts.append(pair)
        if not parts or not self._distributed():
            return passes, pair
        summed = list(parts)
        # In order of first appearance: a set's order differs between processes.
        for dtype in dict.fromkeys(part.dtype for part in parts):
            where = [i for i, part in enumerate(parts) if part.dtype == dtype]
            flat = torch.cat([parts[i].reshape(-1) for i in where])
            total = self._all_sum(flat)
            for i, piece in zip(
                where, total.split([parts[i].numel() for i in where]), strict=True
            ):
                summed[i] = piece.reshape(parts[i].shape)
        out, start = {}, 0
        for name, second in passes.items():
            count = len(second.arrays)
            out[name] = second.with_arrays(tuple(summed[start : start + count]))
            start += count
        return out, (summed[-1] if pair is not None else None)

    def _classifier_of(self, layer: nn.Module) -> nn.Module | None:
        weight = getattr(layer, "weight", None)
        usable = isinstance(weight, torch.Tensor) and weight.ndim == 2
        return layer if usable and weight.shape[0] == self.num_classes else None

    def _all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """`values` summed over the ranks (unchanged when not distributed)."""
        if not self._distributed():
            return values
        import torch.distributed as dist

        values = values.clone()
        dist.all_reduce(values, group=self.group)
        return values

    # ------------------------------------------------------------------ report
    def combined_stats(self) -> ClassStats:
        """Statistics of the samples of all ranks (this rank's when not distributed).

        In a distributed job every rank of the group must call it (as with
        `report`), also ranks that observed no batch.
        """
        if self.shard_classes:
            raise RuntimeError(_SHARDED)
        with self._lock:
            if self._layer_names is not None:
                msg = "this tracker holds statistics per layer: use combined_layer_stats()"
                raise RuntimeError(msg)
            if not self._distributed():
                if self._stats is None:
                    raise RuntimeError(self._nothing_observed())
                return self._stats
            local = self._stats if self._stats is not None else self._placeholder()
            try:
                combined = all_reduce_stats(local, group=self.group, step=self._merges)
                self._merges += 1
            except (ValueError, TypeError):
                raise  # raised alike on every rank; nothing changed here
            except Exception as error:
                msg = _COMBINE_FAILED.format(kind=type(error).__name__, error=error)
                raise RuntimeError(msg) from error
        if int(combined.num_samples) == 0:
            raise RuntimeError(self._nothing_observed() + " (on any rank)")
        return combined

    def combined_layer_stats(self) -> dict[str, ClassStats]:
        """Statistics of each layer over the samples of all ranks (this rank's when
        not distributed), in depth order: one cross-rank merge per layer.

        In a distributed job every rank of the group must call it, also ranks
        that observed no batch (they must know the layer names: `evaluate`
        sets them, or observe at least one batch).
        """
        with self._lock:
            names = self._layer_names
            if names is None:
                raise RuntimeError(self._nothing_observed())
            if not self._distributed():
                if not self._layer_stats:
                    raise RuntimeError(self._nothing_observed())
                return {name: self._layer_stats[name] for name in names}
            combined = {}
            try:
                for name in names:
                    local = self._layer_stats.get(name)
                    if local is None:
                        local = self._placeholder(
                            gram=self.gram and self.layer_mode(name) != "flatten"
                        )
                    combined[name] = all_reduce_stats(local, group=self.group, step=self._merges)
                self._merges += 1
            except (ValueError, TypeError):
                raise  # raised alike on every rank
            except Exception as error:
                msg = _COMBINE_FAILED.format(kind=type(error).__name__, error=error)
                raise RuntimeError(msg) from error
        if int(combined[names[-1]].num_samples) == 0:
            raise RuntimeError(self._nothing_observed() + " (on any rank)")
        return combined

    def report(
        self,
        classifier: nn.Module | torch.Tensor | None = None,
        *,
        lambda_w: float | None = None,
        lambda_h: float | None = None,
        counts: Any = None,
        step: int | None = None,
        objective: float | None = None,
        ood_mean: torch.Tensor | None = None,
    ) -> NCReport:
        """Neural-collapse report of the observed samples (of all ranks).

        Parameters
        ----------
        classifier : torch.nn.Module or tensor, optional
            The classifier layer (its ``weight``, and its ``bias`` for
            ``bias_collapse``) or its (K, d) weight; enables the classifier
            metrics.
        lambda_w, lambda_h : float, optional
            Regularisation of the UFM+ objective (give both or neither); when
            given, the report adds the comparison with the closed-form optimum
            (`ncgeom.theory.ufm_relu_optimum`: ``gof_error``,
            ``classifier_gram_error``, ``logit_structure_error``, per-class
            norms and margins), and a classifier layer with a bias triggers a
            warning, since the theorem is bias-free.
        counts : sequence of int, optional
            Class counts of the training set the theory describes; default
            the observed counts.
        step : int, optional
            Recorded in `history`; default the number of earlier reports.
        objective : float, optional
            The UFM+ objective measured at these features (e.g. the training
            loss with `ufm_penalty`); with the lambdas, the verdict gives its
            gap to the optimum.
        ood_mean : tensor (d,), optional
            Mean feature of out-of-distribution samples, for NC5
            (``ood_deviation``; see `ncgeom.nc_report`).

        Returns
        -------
        NCReport
            The same on every rank of a distributed job. Its
            ``ncc_agreement`` is None with a reason: statistics alone cannot
            give it (the nearest centre needs the final means);
            `evaluate` measures it with a second pass.

        Raises
        ------
        RuntimeError
            If no batch was observed (on any rank).

        Notes
        -----
        After ``observe({name: features}, labels)`` the result is an
        `ncgeom.DepthReport` of every layer (the classifier, theory and
        `ood_mean` for the last layer); `objective` is not used there, and
        the NCC accuracy and the NC1 of flattened layers need the second
        pass of `evaluate`.
        """
        with self._lock:
            if self._layer_names is not None:
                stats = self.combined_layer_stats()
                depth = self._depth_report(stats, classifier, lambda_w, lambda_h, ood_mean, counts)
                self._record(depth, step, lambda_w, lambda_h)
                return depth
            report = self._report(classifier, lambda_w, lambda_h, counts, objective, ood_mean)
            self._record(report, step, lambda_w, lambda_h)
        return report

    def _depth_report(
        self,
        stats: dict[str, ClassStats],
        classifier: nn.Module | torch.Tensor | None,
        lambda_w: float | None,
        lambda_h: float | None,
        ood_mean: torch.Tensor | None,
        counts: Any = None,
        *,
        second: Mapping[str, SecondPass] | None = None,
    ) -> DepthReport:
        """The `DepthReport` of combined statistics (classifier metrics on the last layer)."""
        from ncgeom.depth import depth_report

        with_theory, lambda_w, lambda_h = _checked_lambdas(lambda_w, lambda_h)
        last = stats[next(reversed(stats))]
        weight = bias = None
        if classifier is not None:
            weight = classifier_weight(classifier, warn=with_theory).detach()
            weight = weight.to(device=last.device, dtype=last.dtype)
            bias = layer_bias(classifier)
            if bias is not None:
                bias = bias.to(device=last.device, dtype=last.dtype)
        theory = optimum_for(last, counts, lambda_w, lambda_h) if with_theory else None
        if ood_mean is not None and isinstance(ood_mean, torch.Tensor):
            ood_mean = ood_mean.to(device=last.device, dtype=last.dtype)
        report = depth_report(
            stats,
            second=second,
            classifier=weight,
            bias=bias,
            reduce={name: self.layer_mode(name) for name in stats},
            theory=theory,
            ood_mean=ood_mean,
        )
        if weight is not None and second is None:
            name = report.layers[-1]
            reports = dict(report.reports)
            reports[name] = _with_metric(
                reports[name], "ncc_agreement", None, _NCC_FROM_STATISTICS
            )
            report = dataclasses.replace(report, reports=reports)
        return report

    def _report(
        self,
        classifier: nn.Module | torch.Tensor | None,
        lambda_w: float | None,
        lambda_h: float | None,
        counts: Any,
        objective: float | None,
        ood_mean: torch.Tensor | None = None,
    ) -> NCReport:
        """The report (with the verdict's context), not yet in `history`."""
        with_theory, lambda_w, lambda_h = _checked_lambdas(lambda_w, lambda_h)
        weight = bias = None
        if classifier is not None:
            weight = classifier_weight(classifier, warn=with_theory).detach()
            bias = layer_bias(classifier)
        if self.shard_classes:
            report = self._shard_report(
                weight, bias, (lambda_w, lambda_h), counts, objective, ood_mean
            )
            if weight is not None:
                report = _with_metric(report, "ncc_agreement", None, _NCC_FROM_STATISTICS)
            return report
        with self._lock:
            stats = self.combined_stats()
            theory = None
            if with_theory:
                theory = self._theory(stats, counts, lambda_w, lambda_h)
            if bias is not None:
                bias = bias.to(device=stats.device, dtype=stats.dtype)
            report = nc_report(
                stats, weight, bias, theory=theory, objective=objective, ood_mean=ood_mean
            )
        if weight is not None:
            report = _with_metric(report, "ncc_agreement", None, _NCC_FROM_STATISTICS)
        return report

    def _shard_report(
        self,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        lambdas: tuple[float | None, float | None],
        counts: Any,
        objective: float | None,
        ood_mean: torch.Tensor | None,
    ) -> NCReport:
        """`shard_report` of every rank's shard, with this rank's rows of W and b."""
        lambda_w, lambda_h = lambdas
        with self._lock:
            shard = self.shard()
            stats = shard.stats
            if int(shard.num_samples) == 0:
                raise RuntimeError(self._nothing_observed() + " (on any rank)")
            rows = slice(shard.offset, shard.offset + stats.num_classes)
            if weight is not None:
                if weight.shape[0] != self.num_classes:
                    msg = (
                        f"`classifier` must have {self.num_classes} rows (one per class); "
                        f"got shape {tuple(weight.shape)}"
                    )
                    raise ValueError(msg)
                weight = weight[rows].to(device=stats.device, dtype=stats.dtype)
            if bias is not None:
                bias = bias.detach()[rows].to(device=stats.device, dtype=stats.dtype)
            theory = None
            if lambda_w is not None:
                observed = torch.as_tensor(shard_counts(shard, self._sharded.collectives))
                theory = _optimum(
                    observed,
                    counts,
                    lambda_w,
                    lambda_h,
                    self.num_classes,
                    stats.device,
                    stats.dtype,
                )
            if isinstance(ood_mean, torch.Tensor):
                ood_mean = ood_mean.to(device=stats.device, dtype=stats.dtype)
            return shard_report(
                shard,
                self._sharded.collectives,
                weight,
                bias,
                theory=theory,
                objective=objective,
                ood_mean=ood_mean,
            )

    def _agreement(
        self, model: nn.Module, loader: Iterable[Any], tap: FeatureTap, device: Any
    ) -> NCCAgreement:
        """The NCC agreement of a second pass over `loader`: of this rank's rows
        against the combined means, or with `shard_classes` of every rank's rows
        against the shards (`shard_ncc_agreement`, a collective per batch)."""
        layer = tap.layer
        if self.shard_classes:
            shard = self.shard()
            stats, group = shard.stats, self._sharded.collectives
            rows = slice(shard.offset, shard.offset + stats.num_classes)
            like = {"device": stats.device, "dtype": stats.dtype}
            weight = layer.weight.detach()[rows].to(**like)
            bias = getattr(layer, "bias", None)
            bias = None if bias is None else bias.detach()[rows].to(**like)

            def score(features: torch.Tensor) -> NCCAgreement:
                return shard_ncc_agreement(features.to(**like), shard, group, weight, bias)

        else:
            means = self.combined_stats().means

            def score(features: torch.Tensor) -> NCCAgreement:
                return ncc_agreement(features, layer.weight, means, getattr(layer, "bias", None))

        agreement = None
        for batch in loader:
            inputs, _ = _split_batch(batch)
            if isinstance(inputs, torch.Tensor):
                inputs = inputs.to(device, non_blocking=True)
            model(inputs)
            found = score(tap.features)
            agreement = found if agreement is None else agreement.merge(found)
        return agreement

    def _collectives(self) -> Collectives:
        """The group's collectives, or those of a world of one without `sync`."""
        if self._distributed():
            return collectives(group=self.group)
        return Collectives(0, 1, lambda x: [x], lambda x: x, lambda x: x)

    def _record(
        self, report: NCReport, step: int | None, lambda_w: float | None, lambda_h: float | None
    ) -> None:
        entry = report.to_dict()
        if lambda_w is not None:
            entry["lambda_w"] = lambda_w
            entry["lambda_h"] = lambda_h
        self.history.append((len(self.history) if step is None else int(step), entry))

    def _theory(
        self, stats: ClassStats, counts: Any, lambda_w: float, lambda_h: float
    ) -> UFMOptimum | None:
        """The UFM+ optimum for `counts` (default: the observed counts) and the lambdas."""
        return optimum_for(stats, counts, lambda_w, lambda_h)

    def save(self, path: str | Path) -> Path:
        """Write the history to a JSON file and return its path.

        Non-finite numbers are written as null. In a distributed job call it
        on one rank (every rank holds the same history).

        Examples
        --------
        >>> import json, tempfile, torch
        >>> from ncgeom_torch import NCTracker
        >>> tracker = NCTracker(2)
        >>> tracker.observe(torch.eye(2).repeat(3, 1), torch.tensor([0, 1] * 3))
        >>> _ = tracker.report(step=0)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     saved = json.loads(tracker.save(f"{folder}/nc.json").read_text())
        >>> saved["num_classes"], saved["history"][0]["step"]
        (2, 0)
        """
        path = Path(path)
        payload = {
            "num_classes": self.num_classes,
            "history": [{"step": step, "report": entry} for step, entry in self.history],
        }
        path.write_text(json.dumps(jsonable(payload), indent=2) + "\n")
        return path

    # ------------------------------------------------------------------ helpers
    def _distributed(self) -> bool:
        if not self.sync:
            return False
        import torch.distributed as dist

        return (
            dist.is_available() and dist.is_initialized() and dist.get_world_size(self.group) > 1
        )

    def _placeholder(self, *, gram: bool | None = None) -> ClassStats:
        """Empty statistics for a rank that saw no batch (the dimension comes from the others)."""
        import torch.distributed as dist

        backend = dist.get_backend(self.group)
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else None
        return ClassStats.empty(
            self.num_classes,
            1,
            gram=self.gram if gram is None else gram,
            xp=torch_xp,
            device=device,
            dtype=self.dtype,
        )

    def _nothing_observed(self) -> str:
        return (
            "no batch has been observed yet: call observe(features, labels) or "
            "evaluate(model, loader, layer) before report()"
        )

    def __repr__(self) -> str:
        return (
            f"NCTracker(num_classes={self.num_classes}, dtype={self.dtype}, "
            f"{self._num_batches} batches, {len(self.history)} reports)"
        )


_COMBINE_FAILED = (
    "combining the statistics across ranks failed ({kind}: {error}); this rank's "
    "statistics are unchanged, but other ranks may have finished or be waiting in the "
    "collective: every rank must call report() the same number of times, and the process "
    "group needs a timeout (init_process_group(timeout=...)) so that a missing rank raises"
)

_SHARDED = (
    "this tracker keeps a shard of the classes (shard_classes=True): read `shard()`, "
    "or call `report()`"
)

_NCC_FROM_STATISTICS = (
    "statistics alone cannot give it (the nearest centre needs the final means): "
    "NCTracker.evaluate measures it with a second pass"
)


def _checked_lambdas(
    lambda_w: float | None, lambda_h: float | None
) -> tuple[bool, float | None, float | None]:
    """Whether the theory is asked for, and the lambdas checked (both or neither)."""
    if (lambda_w is None) != (lambda_h is None):
        msg = (
            "`lambda_w` and `lambda_h` must be given together; "
            f"got lambda_w={lambda_w!r}, lambda_h={lambda_h!r}"
        )
        raise ValueError(msg)
    if lambda_w is None:
        return False, None, None
    return True, check_positive(lambda_w, "lambda_w"), check_positive(lambda_h, "lambda_h")


def _with_metric(report: NCReport, name: str, value: float | None, why: str | None) -> NCReport:
    """`report` with metric `name` set to `value`, or None with reason `why`."""
    unavailable = tuple((k, v) for k, v in report.unavailable if k != name)
    if why is not None:
        unavailable += ((name, why),)
    return dataclasses.replace(report, unavailable=unavailable, **{name: value})


def _objective_sums(
    features: torch.Tensor, labels: torch.Tensor, layer: nn.Module
) -> torch.Tensor:
    """(sum of cross-entropies, sum of ||h_i||^2, rows) of one batch, in float64."""
    import torch.nn.functional as F

    h = features.double()
    bias = getattr(layer, "bias", None)
    logits = F.linear(h, layer.weight.double(), None if bias is None else bias.double())
    ce = F.cross_entropy(logits, labels.to(logits.device), reduction="sum")
    return torch.stack(
        [ce, (h * h).sum(), torch.tensor(float(len(h)), dtype=h.dtype, device=h.device)]
    )


def checked_counts(counts: Any, num_classes: int) -> list[int]:
    """Training counts: K positive integers (`check_counts`; a string is a TypeError)."""
    host = check_counts(counts)
    if host.shape[0] != num_classes:
        msg = (
            f"`counts` must give one training count per class ({num_classes}); got {host.shape[0]}"
        )
        raise ValueError(msg)
    return host.tolist()


def optimum_for(
    stats: ClassStats, counts: Any, lambda_w: float, lambda_h: float
) -> UFMOptimum | None:
    """The UFM+ optimum for `counts` (default: the counts of `stats`) and the
    lambdas, on the statistics' device and dtype; None, with a warning, when
    a class was not observed and no counts were given."""
    return _optimum(
        stats.counts, counts, lambda_w, lambda_h, stats.num_classes, stats.device, stats.dtype
    )


def _optimum(
    observed: torch.Tensor,
    counts: Any,
    lambda_w: float,
    lambda_h: float,
    num_classes: int,
    device: Any,
    dtype: torch.dtype,
) -> UFMOptimum | None:
    """`optimum_for` of the observed counts (K,) of all classes."""
    if counts is not None:
        counts = checked_counts(counts, num_classes)
    else:
        counts = observed.cpu()
        if bool((counts == 0).any()):
            missing = torch.nonzero(counts == 0).flatten().tolist()
            warnings.warn(
                f"classes {missing} were not observed: no theory comparison; pass the "
                "training counts as `counts` to compare anyway",
                UserWarning,
                stacklevel=4,
            )
            return None
        counts = counts.tolist()
    return ufm_relu_optimum(counts, lambda_w, lambda_h, xp=torch_xp, device=device, dtype=dtype)


def _last_classifier(model: nn.Module, num_classes: int) -> nn.Module | None:
    """The last ``nn.Linear`` of `model` with `num_classes` outputs (None if there is none)."""
    found = [
        module
        for module in unwrap_model(model).modules()
        if isinstance(module, nn.Linear) and module.out_features == num_classes
    ]
    return found[-1] if found else None


def _model_device(model: nn.Module) -> torch.device:
    inner = unwrap_model(model)
    first = next(itertools.chain(inner.parameters(), inner.buffers()), None)
    return torch.device("cpu") if first is None else first.device


def _placed(inputs: Any, device: torch.device | str) -> Any:
    """`inputs` moved to `device` when it is a tensor elsewhere (no call when it is there)."""
    if isinstance(inputs, torch.Tensor) and inputs.device != torch.device(device):
        return inputs.to(device, non_blocking=True)
    return inputs


def _split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping) and {"inputs", "labels"} <= set(batch):
        return batch["inputs"], batch["labels"]
    msg = (
        "each batch of `loader` must be (inputs, labels, ...) or a mapping with "
        f"'inputs' and 'labels'; got {type(batch).__name__}"
    )
    raise TypeError(msg)


#: Below this many feature entries in a batch (all layers together), the
#: statistics of a CPU batch are computed on one thread: their many small
#: operations gain nothing from more, and each pays the thread pool's
#: synchronisation (milliseconds apiece on a loaded machine).
SMALL_WORK = 2**20


@contextlib.contextmanager
def _one_thread_if_small(features: Iterable[torch.Tensor]) -> Iterator[None]:
    """Run the block on one intra-op thread when `features` are small CPU tensors."""
    parts = list(features)
    small = all(x.device.type == "cpu" for x in parts) and sum(x.numel() for x in parts) < (
        SMALL_WORK
    )
    threads = torch.get_num_threads()
    if not small or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


_MIXED = (
    "this tracker holds the statistics of one layer (observe(features, labels)) or of "
    "several (observe({name: features}, labels)), not both: use one tracker for each, "
    "or reset() it"
)


@contextlib.contextmanager
def _naming(label: str) -> Iterator[None]:
    """Re-raise a TypeError or ValueError about `features` as one about `label`."""
    try:
        yield
    except (TypeError, ValueError) as error:
        text = str(error)
        if "`features`" not in text:
            raise
        raise type(error)(text.replace("`features`", f"`{label}`", 1)) from error


def _checked_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        msg = f"`{name}` must be one of {list(choices)}; got {value!r}"
        raise ValueError(msg)
    return value


def _checked_reduce(reduce: Any) -> str | dict[str, str]:
    """A mode of `REDUCE_MODES`, or a dict of layer name to such a mode."""
    if isinstance(reduce, Mapping):
        checked = {}
        for name, mode in reduce.items():
            if not isinstance(name, str):
                msg = f"`reduce` must be keyed by layer names (str); got {name!r}"
                raise TypeError(msg)
            checked[name] = _checked_choice(mode, f"reduce[{name!r}]", REDUCE_MODES)
        return checked
    return _checked_choice(reduce, "reduce", REDUCE_MODES)
