"""The UFM+ regulariser: make training minimise a stochastic estimate of the UFM+ objective."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ncgeom.checks import check_columns, check_nonnegative, check_positive_int

__all__ = ["UFMRegularizer", "classifier_weight", "ufm_penalty"]


def warn_bias(where: str, stacklevel: int = 3) -> None:
    """Warn that a classifier with a bias departs from the bias-free UFM+ theory."""
    warnings.warn(
        f"{where} has a bias, but the UFM+ closed form is bias-free: the bias is not "
        "regularised (lambda_b = 0) and a free bias couples the margins across classes, so "
        "the optimum is no longer the closed form; the measured geometry is still reported "
        "and stays close to an orthogonal frame. Use bias=False to compare with the theorem.",
        UserWarning,
        stacklevel=stacklevel,
    )


def classifier_weight(classifier: nn.Module | torch.Tensor, *, warn: bool = False) -> torch.Tensor:
    """The (K, d) weight of a classifier given as a layer or as a tensor.

    With ``warn=True`` a layer with a bias triggers a warning that says
    what changes with respect to the bias-free theory.

    Examples
    --------
    >>> from torch import nn
    >>> from ncgeom_torch import classifier_weight
    >>> tuple(classifier_weight(nn.Linear(8, 3, bias=False)).shape)
    (3, 8)
    """
    if isinstance(classifier, torch.Tensor):
        weight = classifier
    elif isinstance(classifier, nn.Module) and isinstance(
        getattr(classifier, "weight", None), torch.Tensor
    ):
        weight = classifier.weight
        if warn and getattr(classifier, "bias", None) is not None:
            warn_bias(f"the classifier layer {type(classifier).__name__}", stacklevel=4)
    else:
        msg = (
            "`classifier` must be a (K, d) tensor or a layer with a `weight` tensor; "
            f"got {type(classifier).__name__}"
        )
        raise TypeError(msg)
    if weight.ndim != 2:
        msg = (
            f"`classifier` weight must be 2-D (num_classes, dim); got shape {tuple(weight.shape)}"
        )
        raise ValueError(msg)
    return weight


def layer_bias(classifier: nn.Module | torch.Tensor) -> torch.Tensor | None:
    """The detached (K,) bias of a classifier layer; None for a tensor or a bias-free layer.

    Examples
    --------
    >>> from torch import nn
    >>> from ncgeom_torch.regularizer import layer_bias
    >>> layer_bias(nn.Linear(8, 3)).shape, layer_bias(nn.Linear(8, 3, bias=False))
    (torch.Size([3]), None)
    """
    bias = getattr(classifier, "bias", None) if isinstance(classifier, nn.Module) else None
    return bias.detach() if isinstance(bias, torch.Tensor) else None


def ufm_penalty(
    weight: torch.Tensor,
    features: torch.Tensor,
    *,
    lambda_w: float,
    lambda_h: float,
    num_samples: int,
) -> torch.Tensor:
    """``(lambda_w/2)||W||_F^2 + (N/B)(lambda_h/2) sum_{i in batch} ||h_i||^2``.

    Added to the batch-mean cross-entropy, this is an unbiased estimate of
    the UFM+ objective ``f = (1/N) sum_i CE_i + (lambda_w/2)||W||^2 +
    (lambda_h/2)||H||_F^2`` on a uniformly drawn batch of size B: the feature
    term sums over the batch and is scaled by N/B so that its expectation
    is the sum over all N samples.

    Parameters
    ----------
    weight : tensor (K, d)
        Classifier weight W.
    features : tensor (B, d)
        Penultimate features of the batch, with their autograd graph
        (``FeatureTap(..., detach=False)``).
    lambda_w, lambda_h : float
        Regularisation strengths (>= 0) of the objective.
    num_samples : int
        N, the size of the training set.

    Examples
    --------
    >>> import torch
    >>> from ncgeom_torch import ufm_penalty
    >>> w, h = torch.ones(2, 3), torch.ones(4, 3)
    >>> round(float(ufm_penalty(w, h, lambda_w=0.1, lambda_h=0.01, num_samples=8)), 6)
    0.42
    """
    lambda_w = check_nonnegative(lambda_w, "lambda_w")
    lambda_h = check_nonnegative(lambda_h, "lambda_h")
    num_samples = check_positive_int(num_samples, "num_samples")
    if features.ndim != 2:
        msg = f"`features` must be 2-D (batch, dim); got shape {tuple(features.shape)}"
        raise ValueError(msg)
    check_columns(weight, "weight", features.shape[1], "features", rows="num_classes")
    batch = features.shape[0]
    if batch == 0:
        msg = "`features` must hold at least one row; got an empty batch"
        raise ValueError(msg)
    weight_term = 0.5 * lambda_w * weight.pow(2).sum()
    feature_term = (0.5 * lambda_h * num_samples / batch) * features.pow(2).sum()
    return weight_term + feature_term


class UFMRegularizer(nn.Module):
    """The UFM+ regularisation terms as a module: ``loss = CE_mean + reg(classifier, h)``.

    ``reg(classifier, features)`` returns
    ``(lambda_w/2)||W||_F^2 + (N/B)(lambda_h/2) sum_{batch} ||h_i||^2``, so
    that SGD on ``F.cross_entropy(logits, y) + reg(...)`` (mean reduction)
    follows a stochastic gradient of the UFM+ objective with the theorem's
    lambdas being these lambdas (see `ufm_penalty`).

    Parameters
    ----------
    lambda_w, lambda_h : float
        Regularisation strengths (>= 0). Set ``lambda_w=0`` when the weight
        penalty comes from the optimiser instead (SGD ``weight_decay=wd`` on
        the classifier's parameter group is ``lambda_w = wd``; see the docs).
    num_samples : int
        N, the size of the training set.

    Examples
    --------
    >>> import torch
    >>> import torch.nn.functional as F
    >>> from torch import nn
    >>> from ncgeom_torch import FeatureTap, UFMRegularizer
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3, bias=False))
    >>> reg = UFMRegularizer(lambda_w=5e-3, lambda_h=5e-3, num_samples=600)
    >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    >>> with FeatureTap(net, net[2], detach=False) as tap:
    ...     loss = F.cross_entropy(net(x), y) + reg(net[2], tap.features)
    >>> loss.backward()
    """

    def __init__(self, lambda_w: float, lambda_h: float, num_samples: int) -> None:
        super().__init__()
        self.lambda_w = check_nonnegative(lambda_w, "lambda_w")
        self.lambda_h = check_nonnegative(lambda_h, "lambda_h")
        self.num_samples = check_positive_int(num_samples, "num_samples")
        self._warned_bias = False

    def forward(
        self, classifier: nn.Module | torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        """The penalty for one batch; warns once if the classifier layer has a bias."""
        weight = classifier_weight(classifier, warn=not self._warned_bias)
        if isinstance(classifier, nn.Module) and getattr(classifier, "bias", None) is not None:
            self._warned_bias = True
        return ufm_penalty(
            weight,
            features,
            lambda_w=self.lambda_w,
            lambda_h=self.lambda_h,
            num_samples=self.num_samples,
        )

    def extra_repr(self) -> str:
        return (
            f"lambda_w={self.lambda_w:g}, lambda_h={self.lambda_h:g}, "
            f"num_samples={self.num_samples}"
        )
