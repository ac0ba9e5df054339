"""The `FrameworkPlugin` of PyTorch and the cross-process reduction of `ClassStats`.

Importing this module does not import torch: `owns` looks torch up in
`sys.modules`, and the other methods import it when called.
"""

from __future__ import annotations

import sys
from typing import Any

from ncgeom.plugins import reduce_class_stats
from ncgeom.stats import ClassStats

__all__ = ["TorchPlugin", "all_reduce_stats", "plugin"]


class TorchPlugin:
    """ncgeom's plugin for PyTorch tensors (registered as ``"torch"``).

    Examples
    --------
    >>> import torch
    >>> from ncgeom_torch import plugin
    >>> x = torch.ones(3, 2)
    >>> plugin.owns(x), plugin.owns([1.0, 2.0])
    (True, False)
    >>> plugin.to_array(x) is x
    True
    """

    name = "torch"

    def owns(self, obj: Any) -> bool:
        """True for a `torch.Tensor`; never imports torch to decide."""
        torch = sys.modules.get("torch")
        return torch is not None and isinstance(obj, torch.Tensor)

    def to_array(self, tensor: Any) -> Any:
        """The tensor itself (detached if it requires grad): torch tensors are
        array-API arrays through ``array_api_compat.torch``. No copy, same device.

        Raises
        ------
        TypeError
            If `tensor` is not a dense (strided) torch tensor.
        """
        if not self.owns(tensor):
            msg = f"`tensor` must be a torch.Tensor; got {type(tensor).__name__}"
            raise TypeError(msg)
        import torch

        if tensor.layout is not torch.strided:
            msg = f"`tensor` must be a dense (strided) tensor; got layout {tensor.layout}"
            raise TypeError(msg)
        return tensor.detach() if tensor.requires_grad else tensor

    def all_reduce_stats(self, stats: ClassStats, *, group: Any = None) -> ClassStats:
        """See `all_reduce_stats`."""
        return all_reduce_stats(stats, group=group)

    def __repr__(self) -> str:
        return "TorchPlugin(name='torch')"


def all_reduce_stats(stats: ClassStats, *, group: Any = None, step: int = 0) -> ClassStats:
    """Combine the `ClassStats` of every rank of a ``torch.distributed`` job.

    Returns `stats` unchanged when ``torch.distributed`` is not initialised
    or the group has one process. Otherwise every rank of `group` must call
    it; every rank returns the statistics of all ranks' samples (see
    `ncgeom.plugins.reduce_class_stats` for the algorithm: agree on the
    layout, agree on shifts, one all-reduce of the packed sums). The
    statistics must be torch tensors on a device the process group's backend
    handles (CPU for gloo, the rank's GPU for NCCL).

    Parameters
    ----------
    stats : ClassStats
        This rank's statistics (torch backend).
    group : ProcessGroup, optional
        Default: the world.
    step : int
        The caller's count of reductions so far; ranks that disagree on it
        (one skipped a report, or retried after a failure) get an error.

    Raises
    ------
    ValueError
        On every rank, if the ranks' statistics differ in number of classes,
        dimension, dtype or Gram setting, or the ranks differ in `step`.

    Examples
    --------
    >>> import torch
    >>> from ncgeom import ClassStats
    >>> from ncgeom_torch import all_reduce_stats
    >>> stats = ClassStats.from_features(torch.eye(3), torch.tensor([0, 1, 1]), 2)
    >>> all_reduce_stats(stats) is stats  # not distributed: nothing to combine
    True
    """
    import torch
    import torch.distributed as dist

    if not isinstance(stats, ClassStats):
        msg = f"`stats` must be a ClassStats; got {type(stats).__name__}"
        raise TypeError(msg)
    if not (dist.is_available() and dist.is_initialized()):
        return stats
    world_size = dist.get_world_size(group)
    if world_size == 1:
        return stats
    if not isinstance(stats.shift, torch.Tensor):
        msg = (
            "`stats` must hold torch tensors to be reduced with torch.distributed; "
            f"got {type(stats.shift).__name__}"
        )
        raise TypeError(msg)

    def all_gather(x: torch.Tensor) -> list[torch.Tensor]:
        x = x.contiguous()
        out = [torch.empty_like(x) for _ in range(world_size)]
        dist.all_gather(out, x, group=group)
        return out

    def all_reduce(x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
        return x

    return reduce_class_stats(
        stats,
        rank=dist.get_rank(group),
        world_size=world_size,
        all_gather=all_gather,
        all_reduce=all_reduce,
        step=step,
    )


#: The plugin object named by the ``ncgeom.plugins`` entry point ``torch``.
plugin = TorchPlugin()
