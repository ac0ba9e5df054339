"""ncgeom: the geometry of neural collapse for class-imbalanced classifiers.

Array-API core: `ClassStats` (streaming, mergeable class statistics), the
metrics of `ncgeom.metrics`, `nc_report`, the closed-form optimum of the
unconstrained ReLU feature model (`ncgeom.theory`), its loss and a numerical
solver, on NumPy, CuPy, torch and any array-API library.
"""

import sys as _sys

from ._lib import backend as _backend
from ._lib import jsonable as _jsonable
from ._lib import progress as _progress
from ._lib import validate as _validate
from .integrations import cli, plugins
from .measure import (
    criteria,
    depth,
    layers,
    metrics,
    outofcore,
    report,
    stats,
    verdict,
    vocabulary,
)
from .measure.depth import DepthReport, Progression, depth_report
from .measure.distributed import reduce_class_stats
from .measure.layers import SecondPass, layer_features
from .measure.metrics import NCCAgreement, ncc_agreement
from .measure.outofcore import stats_from_dask
from .measure.report import NCReport, nc_report
from .measure.stats import ClassStats, merge_stats
from .measure.streaming import StreamingClassStats
from .theory import comparison as theory_metrics
from .theory import kkt, loss, plot, solve
from .theory.comparison import (
    classifier_gram_error,
    gof_error,
    logit_structure_error,
    margin_comparison,
    norm_comparison,
)
from .theory.loss import (
    CollapsedGradients,
    UFMGradients,
    collapsed_gradients,
    collapsed_objective,
    ufm_gradients,
    ufm_objective,
)
from .theory.optimum import (
    UFMOptimum,
    collapse_threshold,
    critical_regularization,
    min_samples_to_survive,
    ufm_relu_optimum,
)
from .theory.solve import UFMSolution, solve_ufm

# The flat module paths of version 0.1 (``ncgeom.metrics``, ``ncgeom.loss``, ...)
# stay importable: each names the same module object as its home in a layer
# folder, so ``import ncgeom.metrics`` and ``from ncgeom.solve import solve_ufm``
# keep working, and patching either path patches both.
_SHORT_PATHS = {
    "cli": cli,
    "depth": depth,
    "layers": layers,
    "criteria": criteria,
    "kkt": kkt,
    "loss": loss,
    "metrics": metrics,
    "outofcore": outofcore,
    "plot": plot,
    "plugins": plugins,
    "report": report,
    "solve": solve,
    "stats": stats,
    "theory_metrics": theory_metrics,
    "verdict": verdict,
    "vocabulary": vocabulary,
    "_array": _backend,
    "_json": _jsonable,
    "_progress": _progress,
    "_validate": _validate,
}
for _name, _module in _SHORT_PATHS.items():
    _sys.modules[f"{__name__}.{_name}"] = _module
    globals()[_name] = _module

__version__ = "0.1.0"

__all__ = [
    "ClassStats",
    "CollapsedGradients",
    "DepthReport",
    "NCCAgreement",
    "NCReport",
    "Progression",
    "SecondPass",
    "StreamingClassStats",
    "UFMGradients",
    "UFMOptimum",
    "UFMSolution",
    "__version__",
    "classifier_gram_error",
    "collapse_threshold",
    "collapsed_gradients",
    "collapsed_objective",
    "critical_regularization",
    "depth_report",
    "gof_error",
    "layer_features",
    "logit_structure_error",
    "margin_comparison",
    "merge_stats",
    "metrics",
    "min_samples_to_survive",
    "nc_report",
    "ncc_agreement",
    "norm_comparison",
    "plugins",
    "reduce_class_stats",
    "solve_ufm",
    "stats_from_dask",
    "ufm_gradients",
    "ufm_objective",
    "ufm_relu_optimum",
]
