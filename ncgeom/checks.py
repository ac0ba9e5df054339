"""Input checks for plugins and applications: part of the plugin API.

The validators ncgeom itself uses, so that a plugin raises the same errors
with the same messages as the core: each names the argument in backticks and
shows the bad value or shape. Scalars raise `TypeError` for a wrong type and
`ValueError` for a wrong value; array checks take the array namespace `xp`
(the array-API namespace of the arrays, as array-api-compat's
``array_namespace`` returns it).

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
>>> from ncgeom.checks import check_choice, check_index, check_instance
>>> check_choice("full", "form", ("collapsed", "full"))
'full'
>>> check_index(3, "rank", 2)
Traceback (most recent call last):
    ...
ValueError: `rank` must lie in [0, 2); got 3
>>> check_index(1.0, "rank", 2)
Traceback (most recent call last):
    ...
TypeError: `rank` must be an integer; got 1.0
>>> check_instance([1, 2], tuple, "shape")
Traceback (most recent call last):
    ...
TypeError: `shape` must be a tuple; got list
"""

from __future__ import annotations

from ._lib.validate import *  # noqa: F403 (the public checks: validate.__all__)
from ._lib.validate import __all__ as __all__
