"""The depth report of a trained network over in-memory data: `depth_of`.

Used by ``ncgeom demo`` and ``ncgeom reproduce`` for their networks: one
`NCTracker.evaluate(..., layers=...)` over the tensors cut into batches (one
forward pass per batch fills every layer's statistics; a second, replayed,
gives the nearest-class-centre accuracy per layer and NC1 of flattened
layers).
"""

from __future__ import annotations

from typing import Any

__all__ = ["depth_of"]


def depth_of(
    model: Any,
    inputs: Any,
    labels: Any,
    *,
    layers: Any,
    classifier: Any = None,
    num_classes: int | None = None,
    reduce: str | dict[str, str] = "pool",
    batch_size: int = 1024,
    lambda_w: float | None = None,
    lambda_h: float | None = None,
) -> Any:
    """The `ncgeom.DepthReport` of `model`'s `layers` on `inputs`, `labels`.

    Parameters
    ----------
    model : torch.nn.Module
        Evaluated in eval mode under ``torch.no_grad`` (its modes are
        restored afterwards).
    inputs : torch.Tensor, shape (N, ...)
        On the model's device.
    labels : torch.Tensor, shape (N,)
        Integer labels in [0, K).
    layers : str, type, callable or sequence
        The layers whose outputs are measured, in depth order (see
        `ncgeom_torch.match_layers`); the last should be the classifier's input.
    classifier : torch.nn.Module or str, optional
        The classifier layer, for the classifier metrics of the last layer
        (default: the model's last ``nn.Linear`` with K outputs).
    num_classes : int, optional
        K; default the classifier's number of outputs, else ``max(labels) + 1``.
    reduce : str or dict
        ``"pool"``, ``"flatten"`` or ``"tokens"`` for every layer or per layer
        (see `ncgeom.layer_features`).
    batch_size : int
        Rows per forward pass.
    lambda_w, lambda_h : float, optional
        Give both for the UFM+ optimum of the last layer.

    Returns
    -------
    ncgeom.DepthReport

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from ncgeom_torch.depth_runs import depth_of
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
    ...                     nn.Linear(8, 3, bias=False))
    >>> y = torch.arange(30) % 3
    >>> x = torch.eye(3, 4)[y] + 0.1 * torch.randn(30, 4)
    >>> report = depth_of(net, x, y, layers=["1", "3"], batch_size=16)
    >>> report.layers
    ('1', '3')
    """
    import torch

    from .tracker import NCTracker

    if not isinstance(inputs, torch.Tensor) or not isinstance(labels, torch.Tensor):
        msg = (
            "`inputs` and `labels` must be torch tensors; got "
            f"{type(inputs).__name__} and {type(labels).__name__}"
        )
        raise TypeError(msg)
    if labels.ndim != 1 or inputs.ndim < 2 or labels.shape[0] != inputs.shape[0]:
        msg = (
            "`inputs` must be (N, ...) and `labels` (N,); got shapes "
            f"{tuple(inputs.shape)} and {tuple(labels.shape)}"
        )
        raise ValueError(msg)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        msg = f"`batch_size` must be a positive integer; got {batch_size!r}"
        raise ValueError(msg)
    if num_classes is None:
        num_classes = _classes_of(model, classifier, labels)
    loader = [
        (inputs[lo : lo + batch_size], labels[lo : lo + batch_size])
        for lo in range(0, inputs.shape[0], batch_size)
    ]
    tracker = NCTracker(num_classes, reduce=reduce, dtype=torch.float64)
    return tracker.evaluate(
        model, loader, classifier, layers=layers, lambda_w=lambda_w, lambda_h=lambda_h
    )


def _classes_of(model: Any, classifier: Any, labels: Any) -> int:
    """K from the classifier layer when given as a module, else from the labels."""
    from .tap import resolve_layer

    if classifier is not None:
        head = resolve_layer(model, classifier)
        rows = getattr(head, "out_features", None)
        if isinstance(rows, int):
            return rows
    return int(labels.max()) + 1 if labels.numel() else 2
