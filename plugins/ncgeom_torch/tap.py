"""`FeatureTap`: capture the penultimate features of a model, or the outputs of
named layers, during its forward passes."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import nn

__all__ = ["FeatureTap", "LayerSpec", "match_layers", "resolve_layer", "unwrap_model"]

#: What `layers=` accepts: a dotted name, a module type, a predicate
#: ``(name, module) -> bool``, or a sequence of names, modules and types.
LayerSpec = str | type | Callable[[str, nn.Module], bool] | Sequence[Any]


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


def match_layers(model: nn.Module, layers: LayerSpec) -> dict[str, nn.Module]:
    """The submodules of `model` that `layers` selects, by dotted name, in
    ``named_modules()`` order of the unwrapped model.

    Parameters
    ----------
    model : torch.nn.Module
        Possibly wrapped in DistributedDataParallel or DataParallel.
    layers : str, type, callable or sequence
        A dotted name (a leading ``"module."`` is accepted), a module type
        (every submodule of that type), a predicate ``(name, module) -> bool``,
        or a sequence of names, submodules and types. The model itself is
        never matched (its output is the logits).

    Raises
    ------
    TypeError
        If `layers` is none of these.
    ValueError
        If a name is not in the model, or nothing matched; the message lists
        the model's layers.

    Examples
    --------
    >>> from torch import nn
    >>> from ncgeom_torch import match_layers
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> list(match_layers(net, nn.Linear)), list(match_layers(net, ["2", "1"]))
    (['0', '2'], ['1', '2'])
    """
    if not isinstance(model, nn.Module):
        msg = f"`model` must be a torch.nn.Module; got {type(model).__name__}"
        raise TypeError(msg)
    inner = unwrap_model(model)
    named = {name: module for name, module in inner.named_modules() if name}
    if isinstance(layers, (str, type, nn.Module)) or _is_predicate(layers):
        items: list[Any] = [layers]
    elif isinstance(layers, Sequence) and not isinstance(layers, (bytes, bytearray)):
        items = list(layers)
        if not items:
            msg = "`layers` must name at least one layer; got an empty sequence"
            raise ValueError(msg)
    else:
        raise TypeError(_layers_type_message(layers))
    chosen: set[str] = set()
    for item in items:
        chosen |= _matches(model, inner, named, item, layers)
    if not chosen:
        msg = (
            f"`layers` {_show(layers)} matched no layer of the model; "
            f"its layers: {_preview(named)}"
        )
        raise ValueError(msg)
    return {name: module for name, module in named.items() if name in chosen}


def _is_predicate(value: Any) -> bool:
    return callable(value) and not isinstance(value, (type, nn.Module))


def _matches(
    model: nn.Module, inner: nn.Module, named: dict[str, nn.Module], item: Any, layers: Any
) -> set[str]:
    """Names of the layers one item of `layers` selects."""
    if isinstance(item, type):
        if not issubclass(item, nn.Module):
            msg = f"`layers` types must be torch.nn.Module subclasses; got {item.__name__}"
            raise TypeError(msg)
        return {name for name, module in named.items() if isinstance(module, item)}
    if isinstance(item, str):
        key = item
        if key not in named and key.startswith("module.") and inner is not model:
            key = key[len("module.") :]
        if key not in named:
            close = difflib.get_close_matches(item, list(named), n=5, cutoff=0.4)
            hint = f"did you mean {close}?" if close else f"its layers: {_preview(named)}"
            msg = f"`layers` names {item!r}, which is not in the model; {hint}"
            raise ValueError(msg)
        return {key}
    if isinstance(item, nn.Module):
        found = {name for name, module in named.items() if module is item}
        if not found:
            msg = (
                f"`layers` holds a {type(item).__name__} that is not a submodule of `model` "
                f"(its layers: {_preview(named)})"
            )
            raise ValueError(msg)
        return found
    if _is_predicate(item):
        return {name for name, module in named.items() if item(name, module)}
    raise TypeError(_layers_type_message(layers))


def _layers_type_message(layers: Any) -> str:
    return (
        "`layers` must be a dotted name, a torch.nn.Module type, a predicate "
        "(name, module) -> bool, or a sequence of names, modules and types; "
        f"got {type(layers).__name__} {_show(layers)}"
    )


def _show(value: Any, limit: int = 80) -> str:
    text = value.__name__ if isinstance(value, type) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _preview(names: dict[str, nn.Module], limit: int = 12) -> str:
    shown = list(names)[:limit]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{shown}{more}"


class FeatureTap:
    """Context manager capturing the input of a layer, or the outputs of several.

    With `layer` (the classifier), on entry a forward pre-hook is put on it;
    each forward pass of the model stores the layer's first input in
    `features`: the same tensor the layer receives (the penultimate
    features). With ``layers=``, a forward hook on every matched module
    stores its *output* in `outputs` (as depth studies measure a layer),
    under its dotted name. Tensors are detached unless ``detach=False``, so
    they stay on the model's device and nothing is copied. The hooks are
    removed on exit, also when the block raises.

    Parameters
    ----------
    model : torch.nn.Module
        The model, possibly wrapped in DistributedDataParallel or DataParallel.
    layer : torch.nn.Module or str, optional
        The classifier layer (e.g. ``model.fc``) or its dotted name
        (``"fc"``, ``"head.2"``): its input is captured.
    layers : str, type, callable or sequence, optional
        The layers whose outputs are captured (see `match_layers`): a dotted
        name, a module type, a predicate ``(name, module) -> bool``, or a
        sequence of names, modules and types. Give exactly one of `layer`
        and `layers`.
    detach : bool
        Store detached tensors (default). Pass False to keep the autograd
        graph, e.g. to put `UFMRegularizer` on the features during training.

    Attributes
    ----------
    layer : torch.nn.Module or None
        The resolved classifier layer (None with `layers`).
    layers : dict of str to torch.nn.Module
        The matched modules by name, in depth order (empty with `layer`).
    num_forwards : int
        Forward passes seen so far (of the layer; of the model with `layers`).

    Notes
    -----
    The outputs of the last forward pass of the model are kept; a module
    that runs several times in one pass keeps its last output. A captured
    output that an in-place operation changes afterwards (a module followed
    by ``ReLU(inplace=True)``) would no longer be the module's output:
    `outputs` raises then; tap the module that makes the final value.

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
    >>> with FeatureTap(net, layers=nn.ReLU) as tap:
    ...     logits = net(x)
    >>> tap.names, torch.equal(tap.outputs["1"], net[:2](x))
    (('1',), True)
    """

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None = None,
        *,
        layers: LayerSpec | None = None,
        detach: bool = True,
    ) -> None:
        if (layer is None) == (layers is None):
            which = "both" if layer is not None else "neither"
            msg = (
                "give exactly one of `layer` (the classifier, whose input is captured) and "
                f"`layers` (modules whose outputs are captured); got {which}"
            )
            raise TypeError(msg)
        self.model = model
        self.detach = bool(detach)
        self.num_forwards = 0
        self._features: torch.Tensor | None = None
        self._handle: Any = None
        self._handles: list[Any] = []
        self._outputs: dict[str, tuple[torch.Tensor, int]] = {}
        if layers is None:
            self.layer: nn.Module | None = resolve_layer(model, layer)
            self.layers: dict[str, nn.Module] = {}
        else:
            self.layer = None
            self.layers = match_layers(model, layers)

    @property
    def features(self) -> torch.Tensor:
        """Input of the layer in the most recent forward pass, (batch, dim)."""
        if self.layer is None:
            msg = "this FeatureTap captures the outputs of `layers`: read `outputs`"
            raise RuntimeError(msg)
        if self._features is None:
            msg = "no forward pass has been captured yet: call the model inside the `with` block"
            raise RuntimeError(msg)
        return self._features

    @property
    def names(self) -> tuple[str, ...]:
        """Dotted names of the tapped layers, in depth order."""
        if self.layer is not None:
            found = [n for n, m in unwrap_model(self.model).named_modules() if m is self.layer]
            return tuple(found[:1])
        return tuple(self.layers)

    @property
    def outputs(self) -> dict[str, torch.Tensor]:
        """Output of each tapped layer in the most recent forward pass (raw shape), by name,
        in the order of `names` (whatever order the modules ran in).

        Raises
        ------
        RuntimeError
            Without ``layers=``, before the first forward pass, or when an
            output was changed in place after it was captured.
        """
        if self.layer is not None:
            msg = "this FeatureTap captures the input of `layer`: read `features`"
            raise RuntimeError(msg)
        if not self._outputs:
            msg = "no forward pass has been captured yet: call the model inside the `with` block"
            raise RuntimeError(msg)
        for name, (tensor, version) in self._outputs.items():
            if tensor._version != version:
                msg = (
                    f"the output of layer {name!r} was changed in place after it was captured "
                    "(an in-place operation such as ReLU(inplace=True) follows it): tap the "
                    "module that makes the final value instead"
                )
                raise RuntimeError(msg)
        return {name: self._outputs[name][0] for name in self.layers if name in self._outputs}

    @property
    def active(self) -> bool:
        """True while the hooks are installed."""
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

    def _start_pass(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._outputs = {}
        self.num_forwards += 1

    def _output_hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                msg = (
                    f"the output of layer {name!r} ({type(module).__name__}) must be a tensor "
                    f"to be tapped; got {type(output).__name__}"
                )
                raise TypeError(msg)
            tensor = output.detach() if self.detach else output
            self._outputs[name] = (tensor, tensor._version)

        return hook

    def __enter__(self) -> FeatureTap:
        if self._handle is not None:
            msg = "this FeatureTap is already active; it cannot be entered twice"
            raise RuntimeError(msg)
        if self.layer is not None:
            self._handle = self.layer.register_forward_pre_hook(self._hook, with_kwargs=True)
            return self
        self._handles = [
            module.register_forward_hook(self._output_hook(name))
            for name, module in self.layers.items()
        ]
        self._handle = unwrap_model(self.model).register_forward_pre_hook(self._start_pass)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Remove the hooks (idempotent; called on exit)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __repr__(self) -> str:
        state = "active" if self.active else "inactive"
        if self.layer is None:
            return f"FeatureTap(layers={list(self.layers)}, {state}, {self.num_forwards} forwards)"
        return (
            f"FeatureTap(layer={type(self.layer).__name__}, {state}, {self.num_forwards} forwards)"
        )
