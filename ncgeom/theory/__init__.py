"""Theory: the unconstrained ReLU feature model (UFM+) under class imbalance.

- `optimum`: its closed-form minimiser (`ufm_relu_optimum`), the collapse
  threshold and the critical regularization. Its names are importable from
  ``ncgeom.theory`` directly.
- `comparison`: how far measured means and classifiers are from the optimum.
- `loss`: the UFM+ objective and its gradients, as problem data plus `evaluate`.
- `solve`: a numerical minimiser of that objective.
- `plot`: figures of the optimum (matplotlib, imported on use).

Depends only on `ncgeom._lib`.

Examples
--------
>>> from ncgeom.theory import ufm_relu_optimum
>>> ufm_relu_optimum([100, 10], lambda_w=5e-3, lambda_h=5e-3).alive.tolist()
[True, True]
"""

from .optimum import *  # noqa: F403 (the optimum's public names: optimum.__all__)
from .optimum import __all__ as __all__
