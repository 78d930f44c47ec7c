"""ResNets and plain nets (He et al. 2016), with torchvision's module names (`conv1`, `layer1.0.bn2`, `fc`).

The CIFAR form (3 stages at 16/32/64 filters, depth 6n+2) and the ImageNet form (torchvision's resnet18..152)
are one class: a torchvision state dict loads into the ImageNet form as it is.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from experiments.models.layers import Block, classifier, conv, recomputed, wants_recompute
from experiments.specs import ResNetSpec

WIDTHS = {"cifar": (16, 32, 64), "imagenet": (64, 128, 256, 512)}


class PadShortcut(nn.Module):
    """Option A: the identity, subsampled by `stride`, zero-padded with the missing channels; no weights."""

    def __init__(self, extra_channels: int, stride: int) -> None:
        super().__init__()
        self.extra_channels, self.stride = extra_channels, stride

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.extra_channels))

    def extra_repr(self) -> str:
        return f"extra_channels={self.extra_channels}, stride={self.stride}"


def shortcut(kind: str, in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """What joins a block's input to its output where their shapes differ (None: the identity)."""
    if in_channels == out_channels and stride == 1:
        return None
    if kind == "A":
        return PadShortcut(out_channels - in_channels, stride)
    return nn.Sequential(conv(in_channels, out_channels, 1, stride), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """conv1-bn1-relu-conv2-bn2, plus the shortcut unless the block is plain, then relu."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int, spec: ResNetSpec) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv(in_channels, width, 3, stride), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = conv(width, width, 3), nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.init_residual(spec)
        self.setup_shortcut(spec, in_channels, width * self.expansion, stride)

    def init_residual(self, spec: ResNetSpec) -> None:
        if spec.zero_init_residual and spec.shortcut != "none":
            nn.init.zeros_(self.last_norm.weight)  # the block starts as the identity

    def setup_shortcut(self, spec: ResNetSpec, in_channels: int, out_channels: int, stride: int) -> None:
        self.residual = spec.shortcut != "none"
        self.downsample = (
            shortcut(spec.shortcut, in_channels, out_channels, stride) if self.residual else None
        )
        self.downsamples = stride != 1 or in_channels != out_channels
        self.memory_efficient = spec.memory_efficient

    @property
    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn2

    def branch(self, x: Tensor) -> Tensor:
        """The residual branch, F(x): the whole block of a plain net but its last ReLU."""
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def forward(self, x: Tensor) -> Tensor:
        out = (
            recomputed(self.branch, self, x)
            if self.memory_efficient and wants_recompute(self, x)
            else self.branch(x)
        )
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(BasicBlock):
    """conv1 (1x1)-conv2 (3x3, the stride, as torchvision)-conv3 (1x1, x4 wide), each with its BN."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int, spec: ResNetSpec) -> None:
        nn.Module.__init__(self)
        self.conv1, self.bn1 = conv(in_channels, width, 1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = conv(width, width, 3, stride), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = conv(width, width * self.expansion, 1), nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.init_residual(spec)
        self.setup_shortcut(spec, in_channels, width * self.expansion, stride)

    @property
    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn3

    def branch(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn3(self.conv3(self.relu(self.bn2(self.conv2(out)))))


class ResNet(nn.Module):
    """Stem (conv1, bn1, relu, maxpool), one stage (`layerN`) per entry of `spec.stages`, the first at
    stride 1 and the others at 2, then average pool and `fc`."""

    def __init__(self, spec: ResNetSpec, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.spec = spec
        widths = WIDTHS[spec.form]
        imagenet_stem = spec.stem == "imagenet"
        self.conv1 = conv(in_channels, widths[0], 7 if imagenet_stem else 3, 2 if imagenet_stem else 1)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if imagenet_stem else nn.Identity()
        block = Bottleneck if spec.bottleneck else BasicBlock
        channels = widths[0]
        for i, (count, width) in enumerate(zip(spec.stages, widths, strict=False), 1):
            blocks = []
            for j in range(count):
                blocks.append(block(channels, width, 2 if i > 1 and j == 0 else 1, spec))
                channels = width * block.expansion
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = classifier(channels, num_classes)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i}") for i in range(1, len(self.spec.stages) + 1)]

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in self.stages:
            x = stage(x)
        return self.fc(self.avgpool(x).flatten(1))

    def blocks(self) -> list[Block]:
        kind = "plain" if self.spec.shortcut == "none" else "residual"
        found = [Block("maxpool", "stem", 0, ("conv1", "bn1"))]
        for i, stage in enumerate(self.stages, 1):
            for j, block in enumerate(stage):
                found.append(Block(f"layer{i}.{j}", kind, i, (f"layer{i}.{j}",), block.downsamples))
        return [*found, Block("fc", "head", len(self.stages) + 1, ("fc",))]
