"""A CIFAR ResNet-18 with a bias-free classifier, defined here so that torchvision is not needed.

The network is the CIFAR variant of ResNet-18 (He et al., 2016): a 3x3 stem
convolution with stride 1 and no max-pool, then four stages of two basic blocks
(3x3 convolutions with batch norm) with ``width``, ``2 width``, ``4 width`` and
``8 width`` channels, the last three starting with stride 2. A 1x1 convolution
with batch norm projects the shortcut where the shape changes. Every block ends
with a ReLU, so the globally average-pooled feature that enters the last layer
``fc`` is non-negative, as the UFM+ model assumes. With ``width=64`` and 10
classes it has 11,173,962 parameters with a bias in ``fc`` and 11,173,952
without.
"""

from __future__ import annotations

import torch
from torch import nn

from ncgeom.checks import check_positive_int

__all__ = ["BLOCK_NAMES", "BasicBlock", "ResNet", "resnet18"]

#: The dotted names of the eight basic blocks of `resnet18`, shallowest first.
BLOCK_NAMES: tuple[str, ...] = tuple(
    f"layer{stage}.{block}" for stage in range(1, 5) for block in range(2)
)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a residual connection, ending with a ReLU.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the input and of the output.
    stride : int
        Stride of the first convolution (and of the shortcut projection).

    Examples
    --------
    >>> import torch
    >>> block = BasicBlock(4, 8, stride=2)
    >>> tuple(block(torch.zeros(2, 4, 8, 8)).shape)
    (2, 8, 4, 4)
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR ResNet of basic blocks whose classifier ``fc`` reads the pooled ReLU feature.

    Build it with `resnet18`. ``forward`` returns the logits; `features`
    returns the pooled (N, 8 width) feature that ``fc`` reads.
    """

    def __init__(
        self,
        blocks_per_stage: tuple[int, ...],
        num_classes: int,
        *,
        width: int = 64,
        in_channels: int = 3,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        channels = width
        for stage, count in enumerate(blocks_per_stage, start=1):
            out_channels = width * 2 ** (stage - 1)
            stride = 1 if stage == 1 else 2
            blocks = []
            for index in range(count):
                blocks.append(BasicBlock(channels, out_channels, stride if index == 0 else 1))
                channels = out_channels
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.num_stages = len(blocks_per_stage)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes, bias=bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled, non-negative (N, 8 width) feature that ``fc`` reads."""
        out = self.relu(self.bn1(self.conv1(x)))
        for stage in range(1, self.num_stages + 1):
            out = getattr(self, f"layer{stage}")(out)
        return torch.flatten(self.pool(out), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def resnet18(
    num_classes: int, *, width: int = 64, in_channels: int = 3, bias: bool = False
) -> ResNet:
    """The CIFAR ResNet-18 (3x3 stem, no max-pool, 4 stages of 2 basic blocks).

    Parameters
    ----------
    num_classes : int
        Rows of the last layer ``fc``.
    width : int
        Channels of the first stage; the stages have ``width``, ``2 width``,
        ``4 width`` and ``8 width`` channels (64 is the standard network).
    in_channels : int
        Channels of the input images (3 for CIFAR).
    bias : bool
        Whether ``fc`` has a bias. The default ``False`` matches the bias-free
        UFM+ theory.

    Returns
    -------
    ResNet
        Its blocks are named `BLOCK_NAMES`; its classifier is ``fc``, whose
        input is the average-pooled output of the last block (non-negative).

    Examples
    --------
    >>> import torch
    >>> model = resnet18(10, width=4)
    >>> tuple(model(torch.zeros(2, 3, 32, 32)).shape), model.fc.bias is None
    ((2, 10), True)
    >>> tuple(model.features(torch.zeros(2, 3, 32, 32)).shape)
    (2, 32)
    """
    check_positive_int(num_classes, "num_classes")
    check_positive_int(width, "width")
    check_positive_int(in_channels, "in_channels")
    return ResNet((2, 2, 2, 2), num_classes, width=width, in_channels=in_channels, bias=bias)
