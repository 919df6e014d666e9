"""MobileNetV2 (Sandler et al. 2018) in plain torch: the case XNNPACK's sparse inference
was built for (sparse 1x1 convolutions in NCHW).

``x[batch, 3, R, R] -> stem (3x3 s2 conv, BN, ReLU6) -> 17 inverted residual blocks ->
head (1x1 conv to 1280, BN, ReLU6) -> global average pool -> classifier -> [batch, 1000]``

An inverted residual block ``blocks.i`` is ``expand`` (1x1, absent when the expansion
factor is 1) -> ``expand_bn`` -> ReLU6 -> ``dw`` (3x3 depthwise) -> ``dw_bn`` -> ReLU6 ->
``project`` (1x1, linear bottleneck) -> ``project_bn``, plus the input when stride is 1
and the channel count is unchanged. Convs have no bias (BN follows each). Prunable: every
1x1 conv (``expand``, ``project``, ``head.conv``) and the ``classifier``; the stem and the
depthwise convs stay dense, as in XNNPACK's sparse MobileNets. ``width`` scales every
channel count (rounded to multiples of 8, torchvision's rule); ``depth`` scales the
repeats of every stage (rounded up; 1.0 is the paper's 17 blocks, 0.5 gives 11, still
with residual blocks: a small model for tests); ``resolution`` is 224 or 96 in the zoo
(any multiple of 32 works).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sparsec.models.zoo import config, seeded_build

DEFAULT = {"width": 1.0, "depth": 1.0, "resolution": 224, "classes": 1000}
TINY = {"width": 0.25, "depth": 0.5, "resolution": 32, "classes": 10}
PRUNABLE = ("blocks.*.expand", "blocks.*.project", "head.conv", "classifier")

# (expansion t, output channels c, repeats n, first stride s), from the paper's table 2
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
            (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round ``v`` to a multiple of ``divisor``, never more than 10% below it."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.residual = stride == 1 and cin == cout
        self.has_expand = expand != 1
        if self.has_expand:
            self.expand = nn.Conv2d(cin, mid, 1, bias=False)
            self.expand_bn = nn.BatchNorm2d(mid)
        self.dw = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.dw_bn = nn.BatchNorm2d(mid)
        self.project = nn.Conv2d(mid, cout, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.expand_bn(self.expand(x))) if self.has_expand else x
        h = self.act(self.dw_bn(self.dw(h)))
        h = self.project_bn(self.project(h))
        return x + h if self.residual else h


class ConvBNReLU6(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class MobileNetV2(nn.Module):
    def __init__(self, width: float, depth: float, resolution: int, classes: int) -> None:
        super().__init__()
        if resolution % 32:
            raise ValueError(f"MobileNetV2 resolution must be a multiple of 32, got {resolution}")
        self.resolution = resolution
        cin = make_divisible(32 * width)
        self.stem = ConvBNReLU6(3, cin, 3, 2)
        blocks = []
        for t, c, n, s in SETTINGS:
            cout = make_divisible(c * width)
            for i in range(math.ceil(n * depth)):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        self.blocks = nn.ModuleList(blocks)
        last = make_divisible(1280 * max(1.0, width))
        self.head = ConvBNReLU6(cin, last, 1, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.classifier(torch.flatten(self.pool(self.head(x)), 1))


def build(seed: int = 0, **size) -> MobileNetV2:
    """An eval-mode ``MobileNetV2`` with seeded weights and BatchNorm statistics."""
    return seeded_build(MobileNetV2, seed, **config(DEFAULT, size))


def example_inputs(batch: int = 1, seed: int = 0, **size) -> tuple[torch.Tensor, ...]:
    """``(x,)``, ``x`` standard normal ``[batch, 3, resolution, resolution]``."""
    r = config(DEFAULT, size)["resolution"]
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, r, r, generator=g),)
