"""ncgeom: the geometry of neural collapse for class-imbalanced classifiers.

Array-API core: `ClassStats` (streaming, mergeable class statistics), the
metrics of `ncgeom.metrics`, and `nc_report`, on NumPy, CuPy, torch and any
array-API library.
"""

from . import metrics
from .metrics import ncc_agreement
from .report import NCReport, nc_report
from .stats import ClassStats, merge_stats

__version__ = "0.1.0"

__all__ = [
    "ClassStats",
    "NCReport",
    "__version__",
    "merge_stats",
    "metrics",
    "nc_report",
    "ncc_agreement",
]
