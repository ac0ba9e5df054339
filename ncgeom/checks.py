"""Input checks for plugins and applications: part of the plugin API.

The validators ncgeom itself uses, so that a plugin raises the same errors
with the same messages as the core: each names the argument in backticks and
shows the bad value or shape. Scalars raise `TypeError` for a wrong type and
`ValueError` for a wrong value; array checks take the array namespace `xp`
(from ``array_api_compat.array_namespace``).

The private module ``ncgeom._validate`` keeps working; new code imports from
here.

Examples
--------
>>> from ncgeom.checks import check_num_classes, check_positive
>>> check_num_classes(10)
10
>>> check_positive(0.5, "lambda_w")
0.5
>>> check_positive(0.0, "lambda_w")
Traceback (most recent call last):
    ...
ValueError: `lambda_w` must be > 0; got 0.0
"""

from __future__ import annotations

from ._lib.validate import (
    check_batch,
    check_columns,
    check_counts,
    check_device,
    check_features,
    check_float_dtype,
    check_integer,
    check_labels,
    check_nonnegative,
    check_num_classes,
    check_positive,
    check_positive_int,
    check_real,
    check_weight_decay,
)

__all__ = [
    "check_batch",
    "check_columns",
    "check_counts",
    "check_device",
    "check_features",
    "check_float_dtype",
    "check_integer",
    "check_labels",
    "check_nonnegative",
    "check_num_classes",
    "check_positive",
    "check_positive_int",
    "check_real",
    "check_weight_decay",
]
