"""ncgeom: the geometry of neural collapse for class-imbalanced classifiers.

Array-API core: `ClassStats` (streaming, mergeable class statistics), the
metrics of `ncgeom.metrics`, `nc_report`, the closed-form optimum of the
unconstrained ReLU feature model (`ncgeom.theory`), its loss and a numerical
solver, on NumPy, CuPy, torch and any array-API library.
"""

from . import metrics, plugins
from .loss import (
    CollapsedGradients,
    UFMGradients,
    collapsed_gradients,
    collapsed_objective,
    ufm_gradients,
    ufm_objective,
)
from .metrics import NCCAgreement, ncc_agreement
from .outofcore import stats_from_dask
from .report import NCReport, nc_report
from .solve import UFMSolution, solve_ufm
from .stats import ClassStats, merge_stats
from .theory import (
    UFMOptimum,
    collapse_threshold,
    critical_regularization,
    min_samples_to_survive,
    ufm_relu_optimum,
)
from .theory_metrics import (
    classifier_gram_error,
    gof_error,
    logit_structure_error,
    margin_comparison,
    norm_comparison,
)

__version__ = "0.1.0"

__all__ = [
    "ClassStats",
    "CollapsedGradients",
    "NCCAgreement",
    "NCReport",
    "UFMGradients",
    "UFMOptimum",
    "UFMSolution",
    "__version__",
    "classifier_gram_error",
    "collapse_threshold",
    "collapsed_gradients",
    "collapsed_objective",
    "critical_regularization",
    "gof_error",
    "logit_structure_error",
    "margin_comparison",
    "merge_stats",
    "metrics",
    "min_samples_to_survive",
    "nc_report",
    "ncc_agreement",
    "norm_comparison",
    "plugins",
    "solve_ufm",
    "stats_from_dask",
    "ufm_gradients",
    "ufm_objective",
    "ufm_relu_optimum",
]
