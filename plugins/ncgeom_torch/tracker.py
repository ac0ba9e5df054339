"""`NCTracker`: neural-collapse statistics of a PyTorch model, batch by batch and across ranks."""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import array_api_compat.torch as torch_xp
import torch
from torch import nn

from ncgeom.checks import check_container, check_counts, check_num_classes, check_positive
from ncgeom.metrics import ncc_agreement
from ncgeom.report import NCReport, nc_report
from ncgeom.stats import ClassStats
from ncgeom.theory import UFMOptimum, ufm_relu_optimum
from ncgeom.utils import jsonable

from ._plugin import all_reduce_stats
from .regularizer import classifier_weight, layer_bias
from .tap import FeatureTap, unwrap_model

__all__ = ["NCTracker"]


class NCTracker:
    """Accumulate `ClassStats` of penultimate features and report neural collapse.

    `observe` adds a batch of features and labels to statistics kept on the
    features' device (torch backend, `dtype` precision); `report` turns them
    into an `ncgeom.NCReport`, combining all ranks first when
    ``torch.distributed`` is initialised; `evaluate` runs a whole evaluation
    pass of a model. Each report is appended to `history`.

    Parameters
    ----------
    num_classes : int
        K; labels must lie in [0, K).
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
        gram: bool = True,
        dtype: torch.dtype = torch.float64,
        check_finite: bool = True,
        sync: bool = True,
        group: Any = None,
    ) -> None:
        self.num_classes = check_num_classes(num_classes)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            msg = f"`dtype` must be a floating torch.dtype; got {dtype!r}"
            raise TypeError(msg)
        self.gram = bool(gram)
        self.dtype = dtype
        self.check_finite = bool(check_finite)
        self.sync = bool(sync)
        self.group = group
        self.history: list[tuple[int, dict[str, Any]]] = []
        self._stats: ClassStats | None = None
        self._num_batches = 0
        self._lock = threading.RLock()
        # Cross-rank merges so far: every rank states it, so that a rank that
        # skipped a report (or retried one that failed) is refused, not mixed in.
        self._merges = 0

    # ------------------------------------------------------------------ accumulate
    @property
    def stats(self) -> ClassStats:
        """This rank's statistics (not combined across ranks)."""
        if self._stats is None:
            raise RuntimeError(self._nothing_observed())
        return self._stats

    @property
    def num_batches(self) -> int:
        """Batches observed since construction or the last `reset`."""
        return self._num_batches

    def reset(self) -> None:
        """Forget the accumulated statistics (the history is kept)."""
        with self._lock:
            self._stats = None
            self._num_batches = 0

    def observe(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one batch: features (B, d) and integer labels (B,) in [0, K).

        The features are detached and stay on their device; the labels are
        moved to it if needed (a copy of B integers). Every batch must be on
        the device of the first one.

        Raises
        ------
        TypeError
            If an argument is not a tensor, or has the wrong dtype.
        ValueError
            For a wrong shape, labels outside [0, K), non-finite features,
            a dimension or device other than the first batch's.
        """
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

    def evaluate(
        self,
        model: nn.Module,
        loader: Iterable[Any],
        layer: nn.Module | str,
        *,
        step: int | None = None,
        lambda_w: float | None = None,
        lambda_h: float | None = None,
        device: torch.device | str | None = None,
        ncc: bool = True,
        ood_mean: torch.Tensor | None = None,
    ) -> NCReport:
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

        Parameters
        ----------
        model : torch.nn.Module
            Possibly wrapped in DistributedDataParallel.
        loader : iterable
            Yields ``(inputs, labels, ...)``; inputs are moved to `device`.
        layer : torch.nn.Module or str
            The classifier layer or its dotted name (see `FeatureTap`).
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
        NCReport
            With the verdict's theory context and measured objective when
            the lambdas are given.

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
                    means = self.combined_stats().means
                    agreement = None
                    for batch in loader:
                        inputs, labels = _split_batch(batch)
                        if isinstance(inputs, torch.Tensor):
                            inputs = inputs.to(device, non_blocking=True)
                        model(inputs)
                        found = ncc_agreement(
                            tap.features, tap.layer.weight, means, getattr(tap.layer, "bias", None)
                        )
                        agreement = found if agreement is None else agreement.merge(found)
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
                pair = self._all_sum(torch.stack([agreement.matches, agreement.total]).double())
                matches, total = (float(v) for v in pair.cpu())
                report = _with_metric(report, "ncc_agreement", matches / total, None)
            else:
                report = _with_metric(report, "ncc_agreement", None, why_ncc)
            self._record(report, step, lambda_w, lambda_h)
        return report

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
        with self._lock:
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
                msg = (
                    f"combining the statistics across ranks failed ({type(error).__name__}: "
                    f"{error}); this rank's statistics are unchanged, but other ranks may "
                    "have finished or be waiting in the collective: every rank must call "
                    "report() the same number of times, and the process group needs a "
                    "timeout (init_process_group(timeout=...)) so that a missing rank raises"
                )
                raise RuntimeError(msg) from error
        if int(combined.num_samples) == 0:
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
        """
        with self._lock:
            report = self._report(classifier, lambda_w, lambda_h, counts, objective, ood_mean)
            self._record(report, step, lambda_w, lambda_h)
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
        if (lambda_w is None) != (lambda_h is None):
            msg = (
                "`lambda_w` and `lambda_h` must be given together; "
                f"got lambda_w={lambda_w!r}, lambda_h={lambda_h!r}"
            )
            raise ValueError(msg)
        with_theory = lambda_w is not None
        if with_theory:
            lambda_w = check_positive(lambda_w, "lambda_w")
            lambda_h = check_positive(lambda_h, "lambda_h")
        weight = bias = None
        if classifier is not None:
            weight = classifier_weight(classifier, warn=with_theory).detach()
            bias = layer_bias(classifier)
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

    def _placeholder(self) -> ClassStats:
        """Empty statistics for a rank that saw no batch (the dimension comes from the others)."""
        import torch.distributed as dist

        backend = dist.get_backend(self.group)
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else None
        return ClassStats.empty(
            self.num_classes, 1, gram=self.gram, xp=torch_xp, device=device, dtype=self.dtype
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


_NCC_FROM_STATISTICS = (
    "statistics alone cannot give it (the nearest centre needs the final means): "
    "NCTracker.evaluate measures it with a second pass"
)


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
    if counts is not None:
        counts = checked_counts(counts, stats.num_classes)
    else:
        counts = stats.counts.cpu()
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
    return ufm_relu_optimum(
        counts, lambda_w, lambda_h, xp=torch_xp, device=stats.device, dtype=stats.dtype
    )


def _model_device(model: nn.Module) -> torch.device:
    inner = unwrap_model(model)
    first = next(itertools.chain(inner.parameters(), inner.buffers()), None)
    return torch.device("cpu") if first is None else first.device


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
