"""DenseNets (Huang et al. 2017), with torchvision's module names (`features.denseblock1.denselayer1.norm1`,
`classifier`): CIFAR form (3 dense blocks, depth 3n+4, 6n+4 with bottlenecks) and ImageNet form
(torchvision's densenet121..201, and 264). A torchvision state dict loads into the ImageNet form as it is.

With `memory_efficient` each layer's concat-BN-ReLU-conv is recomputed in backward (Pleiss et al. 2017).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from experiments.models.layers import Block, classifier, conv, recomputed, wants_recompute
from experiments.specs import DenseNetSpec

BOTTLENECK_WIDTH = 4  # the 1x1 conv's filters per unit of growth rate


class DenseLayer(nn.Module):
    """norm1-relu1-conv1 (3x3, k maps), or with a bottleneck norm1-relu1-conv1 (1x1, 4k)-norm2-relu2-conv2
    (3x3, k); dropout after each conv when `drop_rate` > 0."""

    def __init__(self, in_channels: int, spec: DenseNetSpec) -> None:
        super().__init__()
        k = spec.growth_rate
        width = BOTTLENECK_WIDTH * k if spec.bottleneck else k
        self.norm1, self.relu1 = nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True)
        self.conv1 = conv(in_channels, width, 1 if spec.bottleneck else 3)
        if spec.bottleneck:
            self.norm2, self.relu2 = nn.BatchNorm2d(width), nn.ReLU(inplace=True)
            self.conv2 = conv(width, k, 3)
        self.bottleneck = spec.bottleneck
        self.drop_rate = spec.drop_rate
        self.memory_efficient = spec.memory_efficient

    def _first(self, *features: Tensor) -> Tensor:
        """concat-norm1-relu1-conv1: the part whose input grows with every layer before it."""
        return self._drop(self.conv1(self.relu1(self.norm1(torch.cat(features, 1)))))

    def _drop(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.drop_rate, self.training) if self.drop_rate > 0 else x

    def forward(self, features: list[Tensor]) -> Tensor:
        if self.memory_efficient and wants_recompute(self, *features):
            out = recomputed(self._first, self, *features)
        else:
            out = self._first(*features)
        if self.bottleneck:
            out = self._drop(self.conv2(self.relu2(self.norm2(out))))
        return out


class DenseBlock(nn.ModuleDict):
    """`denselayer1..L`, each fed the block's input and every earlier layer's output, concatenated."""

    def __init__(self, num_layers: int, in_channels: int, spec: DenseNetSpec) -> None:
        super().__init__()
        for i in range(num_layers):
            self[f"denselayer{i + 1}"] = DenseLayer(in_channels + i * spec.growth_rate, spec)
        self.out_channels = in_channels + num_layers * spec.growth_rate

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


def transition(in_channels: int, out_channels: int, drop_rate: float) -> nn.Sequential:
    """norm-relu-conv (1x1)-pool (2x2 average) between dense blocks, dropout after the conv if asked."""
    layers = OrderedDict(norm=nn.BatchNorm2d(in_channels), relu=nn.ReLU(inplace=True))
    layers["conv"] = conv(in_channels, out_channels, 1)
    if drop_rate > 0:
        layers["drop"] = nn.Dropout(drop_rate)
    layers["pool"] = nn.AvgPool2d(2)
    return nn.Sequential(layers)


class DenseNet(nn.Module):
    """`features` (conv0 [norm0-relu0-pool0], denseblock1, transition1, ..., norm5), then ReLU, global average
    pool and `classifier`."""

    def __init__(self, spec: DenseNetSpec, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.spec = spec
        channels = 2 * spec.growth_rate if spec.bottleneck else 16
        imagenet_stem = spec.stem == "imagenet"
        stem = OrderedDict(
            conv0=conv(in_channels, channels, 7 if imagenet_stem else 3, 2 if imagenet_stem else 1)
        )
        if spec.form == "imagenet":  # the CIFAR nets' first conv feeds pre-activation layers directly
            stem.update(norm0=nn.BatchNorm2d(channels), relu0=nn.ReLU(inplace=True))
        if imagenet_stem:
            stem["pool0"] = nn.MaxPool2d(3, stride=2, padding=1)
        self.features = nn.Sequential(stem)
        for i, num_layers in enumerate(spec.blocks, 1):
            block = DenseBlock(num_layers, channels, spec)
            self.features.add_module(f"denseblock{i}", block)
            channels = block.out_channels
            if i < len(spec.blocks):
                out_channels = int(spec.compression * channels)
                self.features.add_module(f"transition{i}", transition(channels, out_channels, spec.drop_rate))
                channels = out_channels
        self.features.add_module(f"norm{len(spec.blocks) + 1}", nn.BatchNorm2d(channels))
        self.classifier = classifier(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.features(x), inplace=True)
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))

    def blocks(self) -> list[Block]:
        """The stem, each dense layer (its k new maps) and each transition, then the head."""
        children = [name for name, _ in self.features.named_children()]
        # the stem is what comes before the last 2n children: n blocks, n - 1 transitions, the final norm
        stem = children[: -2 * len(self.spec.blocks)]
        found = [Block(f"features.{stem[-1]}", "stem", 0, tuple(f"features.{name}" for name in stem))]
        for name, module in self.features.named_children():
            if name.startswith("denseblock"):
                stage = int(name.removeprefix("denseblock"))
                found += [
                    Block(f"features.{name}.{layer}", "dense_layer", stage, (f"features.{name}.{layer}",))
                    for layer in module
                ]
            elif name.startswith("transition"):
                stage = int(name.removeprefix("transition"))
                found.append(
                    Block(f"features.{name}", "transition", stage, (f"features.{name}",), downsamples=True)
                )
        head = (f"features.norm{len(self.spec.blocks) + 1}", "classifier")
        return [*found, Block("classifier", "head", len(self.spec.blocks) + 1, head)]
