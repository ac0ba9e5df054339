"""`NCTracker`: neural-collapse statistics of a PyTorch model, batch by batch and across ranks."""

from __future__ import annotations

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

from ncgeom.checks import check_num_classes, check_positive
from ncgeom.report import NCReport, nc_report
from ncgeom.stats import ClassStats
from ncgeom.theory import UFMOptimum, ufm_relu_optimum
from ncgeom.utils import jsonable

from ._plugin import all_reduce_stats
from .regularizer import classifier_weight
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
        features = features.detach()
        if features.ndim != 2:
            msg = f"`features` must be 2-D (batch, dim); got shape {tuple(features.shape)}"
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
    ) -> NCReport:
        """Statistics of one pass of `model` over `loader`, then `report`.

        Clears the accumulated statistics, captures the input of `layer`
        (the classifier) for every batch with gradients off and the model in
        eval mode, and restores each module's train/eval mode afterwards,
        also on errors. The classifier metrics use `layer`'s weight when it
        has one of shape (K, d).

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
            Regularisation of the UFM+ objective, for the theory comparison.
        device : torch.device or str, optional
            Where inputs go; default the device of the model's parameters.

        Returns
        -------
        NCReport
        """
        tap = FeatureTap(model, layer)
        self.reset()
        if device is None:
            device = _model_device(model)
        modes = [(module, module.training) for module in model.modules()]
        model.eval()
        try:
            with torch.no_grad(), tap:
                for batch in loader:
                    inputs, labels = _split_batch(batch)
                    if isinstance(inputs, torch.Tensor):
                        inputs = inputs.to(device, non_blocking=True)
                    model(inputs)
                    self.observe(tap.features, labels)
        finally:
            for module, training in modes:
                module.training = training
        weight = getattr(tap.layer, "weight", None)
        usable = isinstance(weight, torch.Tensor) and weight.ndim == 2
        classifier = tap.layer if usable and weight.shape[0] == self.num_classes else None
        return self.report(classifier, lambda_w=lambda_w, lambda_h=lambda_h, step=step)

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
                combined = all_reduce_stats(local, group=self.group)
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
    ) -> NCReport:
        """Neural-collapse report of the observed samples (of all ranks).

        Parameters
        ----------
        classifier : torch.nn.Module or tensor, optional
            The classifier layer (its ``weight``) or its (K, d) weight; enables
            the classifier metrics.
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

        Returns
        -------
        NCReport
            The same on every rank of a distributed job.

        Raises
        ------
        RuntimeError
            If no batch was observed (on any rank).
        """
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
        weight = None
        if classifier is not None:
            weight = classifier_weight(classifier, warn=with_theory).detach()
        with self._lock:
            stats = self.combined_stats()
            theory = None
            if with_theory:
                theory = self._theory(stats, counts, lambda_w, lambda_h)
            report = nc_report(stats, weight, theory=theory)
            entry = report.to_dict()
            if with_theory:
                entry["lambda_w"] = lambda_w
                entry["lambda_h"] = lambda_h
            self.history.append((len(self.history) if step is None else int(step), entry))
        return report

    def _theory(
        self, stats: ClassStats, counts: Any, lambda_w: float, lambda_h: float
    ) -> UFMOptimum | None:
        """The UFM+ optimum for `counts` (default: the observed counts) and the lambdas."""
        if counts is None:
            counts = stats.counts.cpu()
            if bool((counts == 0).any()):
                missing = torch.nonzero(counts == 0).flatten().tolist()
                warnings.warn(
                    f"classes {missing} were not observed: no theory comparison; pass the "
                    "training counts as `counts` to compare anyway",
                    UserWarning,
                    stacklevel=3,
                )
                return None
            counts = counts.tolist()
        return ufm_relu_optimum(
            counts, lambda_w, lambda_h, xp=torch_xp, device=stats.device, dtype=stats.dtype
        )

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
