"""Benchmarks of ncgeom against hardware floors measured in the same run.

Run ``python -m benchmarks --backend numpy --size ci`` (see ``--help``). Each
case's median time is divided by the median of floor operations on the same
data, timed in the same rounds: one read of X (``X.sum(axis=0)``), one
``X @ V`` with V of shape (d, min(d, K - 1)), one ``X.T @ X`` and one
scatter-add of X into K rows (the library's own). Memory cases give the peak
extra memory of a call over the size of its input.

The function API, `run_benchmarks`, returns the same dictionary that
``--json`` writes; `format_table` prints it.
"""

from .backends import BACKENDS, BackendUnavailable
from .cases import CASES, FLOORS, SIZES
from .runner import SCHEMA_VERSION, format_table, run_benchmarks

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "CASES",
    "FLOORS",
    "SCHEMA_VERSION",
    "SIZES",
    "format_table",
    "run_benchmarks",
]
