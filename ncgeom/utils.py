"""Host-side helpers for plugins and applications: part of the plugin API.

- `to_host`: copy an array of any array-API library (a handful of final
  scalars, usually) to NumPy, the one sanctioned device-to-host transfer.
- `jsonable`: a copy of a result that `json.dumps` writes as strict JSON
  (NaN and infinities become null).
- `Progress`: a one-line progress bar, silent when not on a terminal.

The private modules ``ncgeom._array``, ``ncgeom._json`` and
``ncgeom._progress`` keep working; new code imports from here.

Examples
--------
>>> import json
>>> import numpy as np
>>> from ncgeom.utils import jsonable, to_host
>>> to_host(np.arange(3)).tolist()
[0, 1, 2]
>>> json.dumps(jsonable({"nc1": float("nan"), "counts": np.array([3, 1])}))
'{"nc1": null, "counts": [3, 1]}'
"""

from __future__ import annotations

from ._lib.backend import to_host
from ._lib.jsonable import jsonable
from ._lib.progress import Progress

__all__ = ["Progress", "jsonable", "to_host"]
