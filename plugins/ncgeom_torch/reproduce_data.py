"""Data and models of ``ncgeom reproduce``: imbalanced subsets of two offline data sets.

* ``digits``: the 8x8 handwritten digits bundled with scikit-learn (1797
  images, 10 classes, at least 174 a class), pixels scaled to [0, 1].
* ``mnist1d``: MNIST-1D (Greydanus, "Scaling down deep learning"), generated
  procedurally from the ten templates bundled with the ``mnist1d`` package by
  its ``make_dataset``: 40-sample 1-D signals, 10 classes, as many samples a
  class as asked for. Nothing is downloaded.

Both are drawn from fixed seeds; the imbalance profiles are ``balanced``,
``step`` (the second half of the classes reduced by a ratio) and
``longtail`` (counts falling geometrically by a ratio from the first class
to the last).
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np

__all__ = [
    "DATASETS",
    "PROFILES",
    "build_model",
    "imbalance_counts",
    "load_pool",
    "training_subset",
]

DATASETS = ("digits", "mnist1d")
PROFILES = ("balanced", "step", "longtail")
NUM_CLASSES = 10
MNIST1D_LENGTH = 40


def imbalance_counts(
    head: int, profile: str, ratio: float = 1.0, num_classes: int = 10
) -> list[int]:
    """Samples per class for an imbalance profile.

    Parameters
    ----------
    head : int
        Samples of the largest class (>= 1).
    profile : {"balanced", "step", "longtail"}
        ``balanced``: every class has `head`. ``step``: the first
        ``K - K // 2`` classes have `head`, the others ``head / ratio``.
        ``longtail``: class k has ``head * ratio ** (-k / (K - 1))``.
        Counts are rounded and at least 1.
    ratio : float
        rho, the ratio of the largest to the smallest count (>= 1; ignored
        when balanced).
    num_classes : int
        K >= 2.

    Returns
    -------
    list of int

    Examples
    --------
    >>> imbalance_counts(170, "step", 10)
    [170, 170, 170, 170, 170, 17, 17, 17, 17, 17]
    >>> imbalance_counts(1000, "longtail", 100, num_classes=5)
    [1000, 316, 100, 32, 10]
    """
    if isinstance(head, bool) or not isinstance(head, int) or head < 1:
        msg = f"`head` must be a positive integer; got {head!r}"
        raise ValueError(msg)
    if profile not in PROFILES:
        msg = f"`profile` must be one of {PROFILES}; got {profile!r}"
        raise ValueError(msg)
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio >= 1):
        msg = f"`ratio` must be a finite number >= 1; got {ratio!r}"
        raise ValueError(msg)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        msg = f"`num_classes` must be an integer >= 2; got {num_classes!r}"
        raise ValueError(msg)
    if profile == "balanced":
        return [head] * num_classes
    if profile == "step":
        minority = max(1, round(head / ratio))
        return [head] * (num_classes - num_classes // 2) + [minority] * (num_classes // 2)
    return [max(1, round(head * ratio ** (-k / (num_classes - 1)))) for k in range(num_classes)]


def load_pool(dataset: str, per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The pool to draw training subsets from: inputs (P, D) float32, labels (P,) int64.

    Parameters
    ----------
    dataset : {"digits", "mnist1d"}
        See the module docstring.
    per_class : int
        Samples a class that the pool must hold. MNIST-1D is generated with
        exactly this many a class; digits has at least 174 a class.
    seed : int
        Seed of the MNIST-1D generator (digits is fixed). The global NumPy and
        `random` states, which ``make_dataset`` reseeds, are restored afterwards.

    Examples
    --------
    >>> x, y = load_pool("mnist1d", 3, seed=0)  # doctest: +SKIP
    >>> x.shape, np.bincount(y).tolist()  # doctest: +SKIP
    ((30, 40), [3, 3, 3, 3, 3, 3, 3, 3, 3, 3])
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        msg = f"`per_class` must be a positive integer; got {per_class!r}"
        raise ValueError(msg)
    if dataset == "digits":
        from .demo import digits_pool

        x, y = digits_pool("reproduce")
        available = int(np.bincount(y).min())
        if per_class > available:
            msg = f"`per_class` must be at most {available} for 'digits'; got {per_class}"
            raise ValueError(msg)
        return x, y
    if dataset == "mnist1d":
        try:
            from mnist1d.data import get_dataset_args, make_dataset
        except ImportError as err:
            msg = "the mnist1d data set needs the mnist1d package: pip install 'ncgeom[reproduce]'"
            raise ValueError(msg) from err
        args = get_dataset_args()
        args.num_samples = per_class * NUM_CLASSES
        args.train_split = 1.0
        args.seed = int(seed)
        # make_dataset reseeds the legacy global generators: give them back as found
        np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
        try:
            data = make_dataset(args)  # procedural, from the bundled templates
        finally:
            np.random.set_state(np_state)  # noqa: NPY002
            random.setstate(py_state)
        return np.asarray(data["x"], dtype=np.float32), np.asarray(data["y"], dtype=np.int64)
    msg = f"`dataset` must be one of {DATASETS}; got {dataset!r}"
    raise ValueError(msg)


def training_subset(
    x: np.ndarray, y: np.ndarray, counts: list[int] | tuple[int, ...], seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A random subset with ``counts[k]`` samples of class k, in class order.

    Examples
    --------
    >>> x, y = np.arange(12.0)[:, None], np.arange(12) % 3
    >>> sub_x, sub_y = training_subset(x, y, [2, 1, 3])
    >>> np.bincount(sub_y).tolist()
    [2, 1, 3]
    """
    available = np.bincount(y, minlength=len(counts))
    if len(counts) != available.size:
        msg = f"`counts` must give {available.size} classes; got {len(counts)}"
        raise ValueError(msg)
    for k, (want, have) in enumerate(zip(counts, available, strict=True)):
        if not 1 <= want <= have:
            msg = f"`counts` for class {k} must lie in [1, {have}]; got {want}"
            raise ValueError(msg)
    rng = np.random.default_rng(seed)
    rows = np.concatenate(
        [rng.permutation(np.flatnonzero(y == k))[:n] for k, n in enumerate(counts)]
    )
    return x[rows], y[rows]


def build_model(dataset: str, width: int, num_classes: int = NUM_CLASSES) -> Any:
    """``nn.Sequential(body, classifier)``: ReLU features and a bias-free linear classifier.

    ``digits``: an MLP, three hidden layers of `width` ReLU units.
    ``mnist1d``: a 1-D CNN, three convolution blocks (64 channels, ReLU; the
    last two with stride 2), global max pooling, then a linear layer of
    `width` ReLU units. The features (the classifier's input) are the output
    of the last ReLU, so they are non-negative, as in the UFM+.

    Examples
    --------
    >>> import torch
    >>> model = build_model("mnist1d", 64)
    >>> tuple(model(torch.zeros(5, 40)).shape), model[1].bias is None
    ((5, 10), True)
    """
    from torch import nn

    if isinstance(width, bool) or not isinstance(width, int) or width < num_classes:
        msg = f"`width` must be an integer >= the number of classes {num_classes}; got {width!r}"
        raise ValueError(msg)
    if dataset == "digits":
        body = nn.Sequential(
            nn.Linear(64, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
        )
    elif dataset == "mnist1d":
        channels = 64
        body = nn.Sequential(
            nn.Unflatten(1, (1, MNIST1D_LENGTH)),
            nn.Conv1d(1, channels, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveMaxPool1d(1),
            nn.Flatten(),
            nn.Linear(channels, width),
            nn.ReLU(),
        )
    else:
        msg = f"`dataset` must be one of {DATASETS}; got {dataset!r}"
        raise ValueError(msg)
    return nn.Sequential(body, nn.Linear(width, num_classes, bias=False))
