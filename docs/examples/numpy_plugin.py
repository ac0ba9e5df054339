"""A complete ncgeom plugin for NumPy, optionally distributed with mpi4py.

This file is the example of the "Writing a plugin" guide and is tested
against `ncgeom.testing.conformance`. A plugin for another framework follows
the same shape: detect the framework's tensors through `sys.modules`, view
them as array-API arrays without copying, and hand the framework's two
collectives to `ncgeom.plugins.reduce_class_stats`.

To ship it, name the plugin object in the package's metadata::

    [project.entry-points."ncgeom.plugins"]
    numpy = "numpy_plugin:plugin"
"""

from __future__ import annotations

import sys
from typing import Any

from ncgeom import ClassStats
from ncgeom.plugins import reduce_class_stats

__all__ = ["NumpyPlugin", "plugin"]


class NumpyPlugin:
    """ncgeom plugin for NumPy arrays.

    Parameters
    ----------
    comm : mpi4py communicator, optional
        When given (and of size > 1), `all_reduce_stats` combines the
        statistics of its processes. Only ``Get_rank``, ``Get_size``,
        ``allgather`` and ``allreduce`` are used.

    Examples
    --------
    >>> import numpy as np
    >>> from numpy_plugin import plugin
    >>> plugin.owns(np.zeros(3)), plugin.owns([0.0, 0.0])
    (True, False)
    """

    name = "numpy"

    def __init__(self, comm: Any = None) -> None:
        self.comm = comm

    def owns(self, obj: Any) -> bool:
        # Never import the framework to answer: if it is not imported yet,
        # `obj` cannot be one of its arrays.
        np = sys.modules.get("numpy")
        return np is not None and type(obj) is np.ndarray

    def to_array(self, tensor: Any) -> Any:
        # NumPy arrays are array-API arrays already (through array-api-compat):
        # return the array itself, no copy.
        if not self.owns(tensor):
            msg = f"`tensor` must be a numpy.ndarray; got {type(tensor).__name__}"
            raise TypeError(msg)
        return tensor

    def all_reduce_stats(self, stats: ClassStats) -> ClassStats:
        if self.comm is None or self.comm.Get_size() == 1:
            return stats
        return reduce_class_stats(
            stats,
            rank=self.comm.Get_rank(),
            world_size=self.comm.Get_size(),
            all_gather=self.comm.allgather,  # list of every rank's array, in rank order
            all_reduce=self.comm.allreduce,  # element-wise sum (MPI.SUM is the default op)
        )


#: The object an entry point names.
plugin = NumpyPlugin()
