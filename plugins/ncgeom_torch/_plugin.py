"""The `FrameworkPlugin` of PyTorch and the cross-process reduction of `ClassStats`.

Importing this module does not import torch: `owns` looks torch up in
`sys.modules`, and the other methods import it when called.
"""

from __future__ import annotations

import sys
from typing import Any

from ncgeom.plugins import (
    ClassShard,
    Collectives,
    class_shards,
    reduce_class_stats,
    reduce_scatter_class_stats,
)
from ncgeom.stats import ClassStats

__all__ = ["TorchPlugin", "all_reduce_stats", "collectives", "plugin", "reduce_scatter_stats"]


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

    def collectives(self, *, group: Any = None) -> Collectives:
        """See `collectives`."""
        return collectives(group=group)

    def reduce_scatter_stats(
        self, stats: ClassStats, *, group: Any = None, step: int = 0
    ) -> ClassShard:
        """See `reduce_scatter_stats`."""
        return reduce_scatter_stats(stats, group=group, step=step)

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

    group_collectives = collectives(group=group)
    return reduce_class_stats(
        stats,
        rank=group_collectives.rank,
        world_size=world_size,
        all_gather=group_collectives.all_gather,
        all_reduce=group_collectives.all_reduce,
        step=step,
    )


def collectives(*, group: Any = None) -> Collectives:
    """The ``torch.distributed`` collectives of `group`, as ncgeom calls them.

    ``all_gather``, ``all_reduce`` (a sum) and ``reduce_scatter`` (a sum;
    rank r receives the rows ``class_shards(len(x), world_size)[r]``, so
    shards may differ by a row). Rank 0 of 1, with collectives that return
    their argument, when ``torch.distributed`` is not initialised.

    Parameters
    ----------
    group : ProcessGroup, optional
        Default: the world.

    Examples
    --------
    >>> import torch
    >>> from ncgeom_torch import plugin
    >>> alone = plugin.collectives()
    >>> alone.rank, alone.world_size, alone.reduce_scatter(torch.ones(2)).tolist()
    (0, 1, [1.0, 1.0])
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return Collectives(0, 1, lambda x: [x], lambda x: x, lambda x: x)
    world_size = dist.get_world_size(group)
    rank = dist.get_rank(group)

    def all_gather(x: torch.Tensor) -> list[torch.Tensor]:
        x = x.contiguous()
        out = [torch.empty_like(x) for _ in range(world_size)]
        dist.all_gather(out, x, group=group)
        return out

    def all_reduce(x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
        return x

    def reduce_scatter(x: torch.Tensor) -> torch.Tensor:
        sizes = [stop - start for start, stop in class_shards(x.shape[0], world_size)]
        parts = [part.contiguous() for part in torch.split(x, sizes)]
        out = torch.empty_like(parts[rank])
        dist.reduce_scatter(out, parts, op=dist.ReduceOp.SUM, group=group)
        return out

    return Collectives(rank, world_size, all_gather, all_reduce, reduce_scatter)


def reduce_scatter_stats(stats: ClassStats, *, group: Any = None, step: int = 0) -> ClassShard:
    """Combine the `ClassStats` of every rank, each rank keeping its shard of the classes.

    Every rank of `group` must call it; rank r returns the classes
    ``class_shards(K, world_size)[r]`` of the samples of all ranks (see
    `ncgeom.plugins.reduce_scatter_class_stats`). The class tables travel by
    ``torch.distributed.reduce_scatter``, so no rank receives all of them.
    Not distributed: the whole table as the one shard.

    Parameters
    ----------
    stats : ClassStats
        This rank's statistics of all K classes (torch backend).
    group : ProcessGroup, optional
        Default: the world.
    step : int
        The caller's count of reductions so far; ranks that disagree on it get
        an error.

    Examples
    --------
    >>> import torch
    >>> from ncgeom import ClassStats
    >>> from ncgeom_torch import plugin
    >>> stats = ClassStats.from_features(torch.eye(3), torch.tensor([0, 1, 1]), 2)
    >>> shard = plugin.reduce_scatter_stats(stats)  # not distributed: one shard
    >>> shard.offset, shard.stats.counts.tolist()
    (0, [1, 2])
    """
    if not isinstance(stats, ClassStats):
        msg = f"`stats` must be a ClassStats; got {type(stats).__name__}"
        raise TypeError(msg)
    return reduce_scatter_class_stats(stats, collectives(group=group), step=step)


#: The plugin object named by the ``ncgeom.plugins`` entry point ``torch``.
plugin = TorchPlugin()
