"""CIFAR-10 and CIFAR-100 from a local copy in the python-pickle format, and long-tailed subsets.

Nothing is downloaded: `load_cifar` reads the folders that the archives
``cifar-10-python.tar.gz`` and ``cifar-100-python.tar.gz`` of
https://www.cs.toronto.edu/~kriz/cifar.html unpack to, under a root folder:

- ``<root>/cifar-10-batches-py/``: ``data_batch_1`` ... ``data_batch_5`` (train)
  and ``test_batch``; each a pickled dict with ``b"data"`` and ``b"labels"``;
- ``<root>/cifar-100-python/``: ``train`` and ``test``; each a pickled dict
  with ``b"data"`` and ``b"fine_labels"`` (the 100 classes).

``b"data"`` is a uint8 array of shape (N, 3072): each row holds the 1024 red
values of a 32x32 image in row-major order, then the 1024 green, then the
1024 blue values, so it reshapes to channel-first (N, 3, 32, 32) as is.

The files are read with a restricted unpickler that builds only dicts,
lists, strings, numbers and NumPy arrays: a file that asks for anything else
is rejected instead of run.

`long_tailed_indices` draws the long-tailed subsets of the literature:

- ``"exp"`` (Cui et al., 2019; Cao et al., 2019): class k keeps
  ``n_k = floor(n_max * imbalance^(-k / (K - 1)))`` samples, from ``n_max``
  for class 0 down to ``n_max / imbalance`` for class K - 1;
- ``"step"`` (Buda et al., 2018; Cao et al., 2019): the first ``K - K // 2``
  classes keep ``n_max`` samples, the last ``K // 2`` keep
  ``floor(n_max / imbalance)``.

``n_max`` is the count of the largest class of the labels given (5000 for
the CIFAR-10 training set, 500 for CIFAR-100), and every class keeps at least
one sample. CIFAR-10 with ``imbalance=100`` and the exp profile keeps
5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50 samples (12,406 in all).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ncgeom.checks import check_choice, check_integer, check_num_classes, check_real

__all__ = [
    "DATASETS",
    "PROFILES",
    "SOURCES",
    "check_cifar_copy",
    "load_cifar",
    "long_tailed_counts",
    "long_tailed_indices",
]

#: Per data set: (folder under ``root``, train files, test files, label key, classes).
DATASETS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], bytes, int]] = {
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        b"labels",
        10,
    ),
    "cifar100": ("cifar-100-python", ("train",), ("test",), b"fine_labels", 100),
}
#: Where each archive can be fetched by hand (never by this module).
SOURCES = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}
#: Long-tail profiles of `long_tailed_counts`.
PROFILES = ("exp", "step")

_PIXELS = 3 * 32 * 32
_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds only plain containers and NumPy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        msg = f"refusing to load {module}.{name}: a CIFAR file holds only arrays and lists"
        raise pickle.UnpicklingError(msg)


def _read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 3, 32, 32) uint8 and labels (n,) int64 of one pickled batch file."""
    with path.open("rb") as handle:
        try:
            batch = _ArraysOnly(handle, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
            msg = f"`{path}` is not a CIFAR python-pickle batch: {err}"
            raise ValueError(msg) from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        msg = f"`{path}` must hold a dict with b'data' and {label_key!r}; got {keys}"
        raise ValueError(msg)
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        msg = (
            f"`{path}` b'data' must be uint8 of shape (N, {_PIXELS}); "
            f"got {data.dtype} {data.shape}"
        )
        raise ValueError(msg)
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        msg = (
            f"`{path}` {label_key!r} must hold {data.shape[0]} integers; "
            f"got {labels.dtype} {labels.shape}"
        )
        raise ValueError(msg)
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def check_cifar_copy(
    root: str | Path, dataset: str = "cifar10", *, train: bool | None = None, field: str = "root"
) -> Path:
    """The folder `root` as a Path, checked to hold a copy of `dataset` (nothing is read).

    Parameters
    ----------
    root : str or Path
    dataset : {"cifar10", "cifar100"}
    train : bool, optional
        Check only the files of the training (True) or test (False) split;
        None checks both.
    field : str
        The name the error gives `root` (e.g. ``"data_root"``).

    Raises
    ------
    FileNotFoundError
        One line naming `field`, the folder and the files expected in it, and
        the archive that provides them.

    Examples
    --------
    >>> check_cifar_copy("/nonexistent", "cifar100", field="data_root")
    Traceback (most recent call last):
        ...
    FileNotFoundError: `data_root` has no cifar100 copy: expected the files train, test in ...
    """
    dataset = check_choice(dataset, "dataset", tuple(DATASETS))
    if not isinstance(root, (str, Path)):
        msg = f"`{field}` must be a path; got {type(root).__name__}"
        raise TypeError(msg)
    root = Path(root).expanduser()
    folder, train_files, test_files = DATASETS[dataset][:3]
    needed = {True: train_files, False: test_files, None: train_files + test_files}[train]
    if not all((root / folder / name).is_file() for name in needed):
        raise FileNotFoundError(
            f"`{field}` has no {dataset} copy: expected the files "
            f"{', '.join(train_files + test_files)} in {root / folder}/ (the python-pickle "
            f"version; unpack {SOURCES[dataset]} into {root}/); nothing is downloaded"
        )
    return root


def load_cifar(
    root: str | Path, *, dataset: str = "cifar10", train: bool = True
) -> tuple[Any, Any]:
    """Images and labels of CIFAR-10 or CIFAR-100 from a local python-pickle copy.

    Parameters
    ----------
    root : str or Path
        Folder that holds ``cifar-10-batches-py/`` or ``cifar-100-python/``
        (as unpacked from the archives named in `SOURCES`).
    dataset : {"cifar10", "cifar100"}
    train : bool
        The training split (50,000 images) or the test split (10,000).

    Returns
    -------
    images : torch.Tensor
        uint8, shape (N, 3, 32, 32): channel-first, channels R, G, B.
    labels : torch.Tensor
        int64, shape (N,); the 10 classes of CIFAR-10 or the 100 fine classes
        of CIFAR-100.

    Raises
    ------
    FileNotFoundError
        If a file of the split is missing: the message names the folder and
        files expected under `root` and the archive that provides them.
    ValueError
        If a file is not in the CIFAR python-pickle format, or a label is
        outside [0, K).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     load_cifar(tmp)
    Traceback (most recent call last):
        ...
    FileNotFoundError: `root` has no cifar10 copy: expected the files data_batch_1, ...
    """
    import torch

    if not isinstance(train, bool):
        msg = f"`train` must be a bool; got {train!r}"
        raise TypeError(msg)
    root = check_cifar_copy(root, dataset, train=train)
    folder, train_files, test_files, label_key, num_classes = DATASETS[dataset]
    paths = [root / folder / name for name in (train_files if train else test_files)]
    parts = [_read_batch(path, label_key) for path in paths]
    images = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([labels for _, labels in parts])
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        msg = (
            f"`root` {dataset} labels must lie in [0, {num_classes}); "
            f"got {labels.min()}..{labels.max()} in {root / folder}"
        )
        raise ValueError(msg)
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)


def long_tailed_counts(
    n_max: int, num_classes: int, *, imbalance: float, profile: str = "exp"
) -> list[int]:
    """Samples per class of a long-tailed subset (see the module docstring).

    Parameters
    ----------
    n_max : int
        Samples of the largest (first) class.
    num_classes : int
        K.
    imbalance : float
        rho >= 1: the largest count over the smallest.
    profile : {"exp", "step"}

    Returns
    -------
    list of int
        ``n_0 >= n_1 >= ... >= n_{K-1} >= 1``.

    Examples
    --------
    >>> long_tailed_counts(5000, 10, imbalance=100)
    [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    >>> long_tailed_counts(500, 4, imbalance=10, profile="step")
    [500, 500, 50, 50]
    """
    n_max = check_integer(n_max, "n_max")
    if n_max < 1:
        msg = f"`n_max` must be a positive integer; got {n_max}"
        raise ValueError(msg)
    num_classes = check_num_classes(num_classes)
    imbalance = check_real(imbalance, "imbalance")
    if imbalance < 1:
        msg = f"`imbalance` must be >= 1 (largest count over smallest); got {imbalance!r}"
        raise ValueError(msg)
    profile = check_choice(profile, "profile", PROFILES)
    if profile == "exp":
        counts = [int(n_max * imbalance ** (-k / (num_classes - 1))) for k in range(num_classes)]
    else:
        head = num_classes - num_classes // 2
        counts = [n_max] * head + [int(n_max / imbalance)] * (num_classes // 2)
    return [max(1, count) for count in counts]


def long_tailed_indices(
    labels: Any,
    num_classes: int,
    *,
    imbalance: float,
    profile: str = "exp",
    seed: int = 0,
) -> Any:
    """Indices of a long-tailed subset of a labelled set.

    Class k keeps ``long_tailed_counts(n_max, K, ...)[k]`` of its samples,
    drawn without replacement with the seed; ``n_max`` is the size of the
    largest class in `labels`.

    Parameters
    ----------
    labels : torch.Tensor or array-like of int, shape (N,)
        Labels in [0, K).
    num_classes : int
        K.
    imbalance : float
        rho >= 1.
    profile : {"exp", "step"}
    seed : int
        Seed of the draw (NumPy's default generator).

    Returns
    -------
    torch.Tensor or numpy.ndarray
        Sorted int64 indices (a tensor when `labels` is one).

    Raises
    ------
    ValueError
        If a class has fewer samples than its count asks for, or a label is
        outside [0, K).

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.repeat([0, 1, 2], 20)
    >>> subset = long_tailed_indices(labels, 3, imbalance=4)
    >>> np.bincount(labels[subset]).tolist()
    [20, 10, 5]
    """
    is_torch = type(labels).__module__.startswith("torch")
    host = labels.detach().cpu().numpy() if is_torch else np.asarray(labels)
    num_classes = check_num_classes(num_classes)
    seed = check_integer(seed, "seed")
    if host.ndim != 1 or (host.size and not np.issubdtype(host.dtype, np.integer)):
        msg = f"`labels` must be a 1-D integer array; got {host.dtype} {host.shape}"
        raise ValueError(msg)
    if host.size == 0 or host.min() < 0 or host.max() >= num_classes:
        shown = "none" if host.size == 0 else f"{host.min()}..{host.max()}"
        msg = f"`labels` must lie in [0, {num_classes}) and be non-empty; got {shown}"
        raise ValueError(msg)
    available = np.bincount(host, minlength=num_classes)
    counts = long_tailed_counts(
        int(available.max()), num_classes, imbalance=imbalance, profile=profile
    )
    short = [k for k in range(num_classes) if available[k] < counts[k]]
    if short:
        k = short[0]
        msg = (
            f"`labels` class {k} has {available[k]} samples; the {profile} profile with "
            f"imbalance {imbalance:g} asks for {counts[k]}"
        )
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(host == k), size=counts[k], replace=False)
        for k in range(num_classes)
    ]
    indices = np.sort(np.concatenate(chosen)).astype(np.int64)
    if is_torch:
        import torch

        return torch.from_numpy(indices).to(labels.device)
    return indices
