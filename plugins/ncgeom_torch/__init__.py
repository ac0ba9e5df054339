"""ncgeom for PyTorch: capture penultimate features, track neural collapse, regularise.

- `FeatureTap`: hook the classifier layer of a model and capture its input, or
  capture the outputs of several layers (``layers=``, see `match_layers`).
- `NCTracker`: accumulate `ncgeom.ClassStats` batch by batch (on the features'
  device), for one layer or per layer, and report neural-collapse metrics (a
  `ncgeom.DepthReport` through depth), combined across the ranks of a
  ``torch.distributed`` job.
- `UFMRegularizer` / `ufm_penalty`: the regularisation terms of the UFM+
  objective, so that training minimises a stochastic estimate of it.
- `plugin`: the `ncgeom.plugins.FrameworkPlugin` of torch (entry point
  ``torch = ncgeom_torch:plugin`` of the group ``ncgeom.plugins``).

Importing this package does not import torch; the classes above import it
when first accessed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._plugin import TorchPlugin, all_reduce_stats, collectives, plugin, reduce_scatter_stats

if TYPE_CHECKING:
    from .regularizer import UFMRegularizer, classifier_weight, ufm_penalty
    from .tap import FeatureTap, match_layers, resolve_layer, unwrap_model
    from .tracker import NCTracker

__all__ = [
    "FeatureTap",
    "NCTracker",
    "TorchPlugin",
    "UFMRegularizer",
    "all_reduce_stats",
    "classifier_weight",
    "collectives",
    "match_layers",
    "plugin",
    "reduce_scatter_stats",
    "resolve_layer",
    "ufm_penalty",
    "unwrap_model",
]

_LAZY = {
    "FeatureTap": "tap",
    "match_layers": "tap",
    "resolve_layer": "tap",
    "unwrap_model": "tap",
    "NCTracker": "tracker",
    "UFMRegularizer": "regularizer",
    "classifier_weight": "regularizer",
    "ufm_penalty": "regularizer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
