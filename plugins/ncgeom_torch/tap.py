"""`FeatureTap`: capture the penultimate features of a model during its forward passes."""

from __future__ import annotations

import difflib
from types import TracebackType
from typing import Any

import torch
from torch import nn

__all__ = ["FeatureTap", "resolve_layer", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers.

    Examples
    --------
    >>> from torch import nn
    >>> from ncgeom_torch import unwrap_model
    >>> net = nn.Linear(2, 2)
    >>> unwrap_model(nn.DataParallel(net)) is net
    True
    """
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def resolve_layer(model: nn.Module, layer: nn.Module | str) -> nn.Module:
    """The submodule `layer` of `model` (a module of the model, or its dotted name).

    Names are looked up in the unwrapped model; a leading ``"module."`` (the
    prefix DistributedDataParallel adds to parameter names) is accepted.

    Raises
    ------
    ValueError
        If the name or module is not part of the model; the message lists
        the closest names.
    TypeError
        If `layer` is neither a module nor a string.

    Examples
    --------
    >>> from torch import nn
    >>> from ncgeom_torch import resolve_layer
    >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> resolve_layer(net, "2") is net[2]
    True
    """
    if not isinstance(model, nn.Module):
        msg = f"`model` must be a torch.nn.Module; got {type(model).__name__}"
        raise TypeError(msg)
    inner = unwrap_model(model)
    names = {name: module for name, module in inner.named_modules() if name}
    if isinstance(layer, nn.Module):
        if any(module is layer for module in inner.modules()):
            return layer
        msg = (
            f"`layer` must be a submodule of `model`; got a {type(layer).__name__} "
            f"that is not part of it (its layers: {_preview(names)})"
        )
        raise ValueError(msg)
    if not isinstance(layer, str):
        msg = f"`layer` must be a torch.nn.Module or a dotted name; got {type(layer).__name__}"
        raise TypeError(msg)
    key = layer
    if key not in names and key.startswith("module.") and inner is not model:
        key = key[len("module.") :]
    if key in names:
        return names[key]
    close = difflib.get_close_matches(layer, list(names), n=5, cutoff=0.4)
    hint = f"did you mean {close}?" if close else f"its layers: {_preview(names)}"
    msg = f"`layer` {layer!r} is not in the model; {hint}"
    raise ValueError(msg)


def _preview(names: dict[str, nn.Module], limit: int = 12) -> str:
    shown = list(names)[:limit]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{shown}{more}"


class FeatureTap:
    """Context manager capturing the input of a layer (the penultimate features).

    On entry a forward pre-hook is put on `layer`; each forward pass of the
    model stores the layer's first input in `features`: the same tensor the
    layer receives (detached unless ``detach=False``), so it stays on the
    model's device and nothing is copied. The hook is removed on exit, also
    when the block raises.

    Parameters
    ----------
    model : torch.nn.Module
        The model, possibly wrapped in DistributedDataParallel or DataParallel.
    layer : torch.nn.Module or str
        The classifier layer (e.g. ``model.fc``) or its dotted name
        (``"fc"``, ``"head.2"``).
    detach : bool
        Store detached features (default). Pass False to keep the autograd
        graph, e.g. to put `UFMRegularizer` on the features during training.

    Attributes
    ----------
    layer : torch.nn.Module
        The resolved layer.
    num_forwards : int
        Forward passes of the layer seen so far.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from ncgeom_torch import FeatureTap
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3, bias=False))
    >>> x = torch.randn(5, 4)
    >>> with FeatureTap(net, "2") as tap:
    ...     logits = net(x)
    >>> torch.equal(tap.features, net[:2](x))
    True
    >>> len(net[2]._forward_pre_hooks)
    0
    """

    def __init__(self, model: nn.Module, layer: nn.Module | str, *, detach: bool = True) -> None:
        self.model = model
        self.layer = resolve_layer(model, layer)
        self.detach = bool(detach)
        self.num_forwards = 0
        self._features: torch.Tensor | None = None
        self._handle: Any = None

    @property
    def features(self) -> torch.Tensor:
        """Input of the layer in the most recent forward pass, (batch, dim)."""
        if self._features is None:
            msg = "no forward pass has been captured yet: call the model inside the `with` block"
            raise RuntimeError(msg)
        return self._features

    @property
    def active(self) -> bool:
        """True while the hook is installed."""
        return self._handle is not None

    def _hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if args:
            x = args[0]
        elif kwargs:
            x = next(iter(kwargs.values()))
        else:
            return
        if not isinstance(x, torch.Tensor):
            msg = f"the input of the tapped layer must be a tensor; got {type(x).__name__}"
            raise TypeError(msg)
        self._features = x.detach() if self.detach else x
        self.num_forwards += 1

    def __enter__(self) -> FeatureTap:
        if self._handle is not None:
            msg = "this FeatureTap is already active; it cannot be entered twice"
            raise RuntimeError(msg)
        self._handle = self.layer.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Remove the hook (idempotent; called on exit)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __repr__(self) -> str:
        state = "active" if self.active else "inactive"
        return (
            f"FeatureTap(layer={type(self.layer).__name__}, {state}, {self.num_forwards} forwards)"
        )
