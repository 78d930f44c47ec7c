"""DenseNets (Huang et al. 2017): CIFAR form (3n+4, 6n+4 with bottlenecks) and ImageNet form (121..264).

``memory_efficient=True`` recomputes each layer's concat-BN-ReLU-conv in backward (Pleiss et al. 2017).
"""

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .layers import (
    FORMS,
    StagedNet,
    blocks_for_depth,
    check_choice,
    check_depth_in,
    make_head,
    make_stem,
    stem_type_for,
)
from .registry import register_model

BOTTLENECK_WIDTH = 4  # 1x1 conv filters per unit of growth rate
_IMAGENET_BLOCKS = {
    121: (6, 12, 24, 16),
    161: (6, 12, 36, 24),
    169: (6, 12, 32, 32),
    201: (6, 12, 48, 32),
    264: (6, 12, 64, 48),
}


def _arch(form: str, bottleneck: bool, compression: float) -> str:
    if form == "imagenet":
        return "densenet"
    suffix = ("b" if bottleneck else "") + ("c" if compression < 1 else "")
    return f"densenet_{suffix}" if suffix else "densenet"


def _bn_relu_conv(in_channels: int, out_channels: int, kernel: int) -> list[nn.Module]:
    conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False)
    return [nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True), conv]


def _dropout(p: float) -> list[nn.Module]:
    return [nn.Dropout(p)] if p > 0 else []


class DenseLayer(nn.Module):
    """BN-ReLU-3x3 conv (basic) or BN-ReLU-1x1 conv (4k)-BN-ReLU-3x3 conv (bottleneck) with k outputs."""

    def __init__(
        self, in_channels: int, growth_rate: int, bottleneck: bool, drop_rate: float, memory_efficient: bool
    ) -> None:
        super().__init__()
        width = BOTTLENECK_WIDTH * growth_rate if bottleneck else growth_rate
        self.entry = nn.Sequential(*_bn_relu_conv(in_channels, width, 1 if bottleneck else 3))
        tail = _dropout(drop_rate)
        if bottleneck:
            tail += [*_bn_relu_conv(width, growth_rate, 3), *_dropout(drop_rate)]
        self.tail = nn.Sequential(*tail)
        self.memory_efficient = memory_efficient

    def _concat_entry(self, *features: Tensor) -> Tensor:
        return self.entry(torch.cat(features, 1))

    def forward(self, features: list[Tensor]) -> Tensor:
        if (
            self.memory_efficient
            and self.training
            and torch.is_grad_enabled()
            and any(f.requires_grad for f in features)
        ):
            # keeps only the inputs: the concatenation and its BN-ReLU outputs, which grow quadratically
            # with depth, are recomputed in backward (which updates the BN running statistics a second
            # time, as torchvision's memory-efficient DenseNet does)
            out = checkpoint(self._concat_entry, *features, use_reentrant=False)
        else:
            out = self._concat_entry(*features)
        return self.tail(out)


class DenseBlock(nn.Module):
    """``num_layers`` dense layers, each fed the concatenation of the block input and all earlier outputs."""

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        growth_rate: int,
        bottleneck: bool,
        drop_rate: float,
        memory_efficient: bool,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + i * growth_rate, growth_rate, bottleneck, drop_rate, memory_efficient)
            for i in range(num_layers)
        )
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNet(StagedNet):
    """First conv, dense blocks each followed (but the last) by a transition, BN-ReLU-pool-FC head.

    ``depth`` is the name the paper gives the net (DenseNet-264's blocks hold 265 weighted layers).
    """

    def __init__(
        self,
        block_layers: Sequence[int],
        *,
        depth: int,
        growth_rate: int = 12,
        bottleneck: bool = False,
        compression: float = 1.0,
        drop_rate: float = 0.0,
        memory_efficient: bool = False,
        form: str = "cifar",
        stem_type: str = "cifar",
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        channels = 2 * growth_rate if bottleneck else 16
        # the CIFAR nets' first conv feeds pre-activation layers directly; ImageNet stems are conv-BN-ReLU
        stem = make_stem(in_channels, channels, stem_type, norm=form == "imagenet")
        stages = []
        for i, num_layers in enumerate(block_layers):
            block = DenseBlock(num_layers, channels, growth_rate, bottleneck, drop_rate, memory_efficient)
            stage: OrderedDict[str, nn.Module] = OrderedDict(block=block)
            channels = block.out_channels
            if i < len(block_layers) - 1:
                out_channels = int(compression * channels)
                stage["transition"] = nn.Sequential(
                    *_bn_relu_conv(channels, out_channels, 1), *_dropout(drop_rate), nn.AvgPool2d(2)
                )
                channels = out_channels
            stages.append(nn.Sequential(stage))
        super().__init__(
            stem,
            stages,
            make_head(channels, num_classes, norm=True),
            arch=_arch(form, bottleneck, compression),
            depth=depth,
            form=form,
            stem_type=stem_type,
        )


@register_model
def densenet(
    depth: int = 40,
    growth_rate: int | None = None,
    bottleneck: bool | None = None,
    compression: float | None = None,
    drop_rate: float = 0.0,
    memory_efficient: bool = False,
    form: Literal["cifar", "imagenet"] = "cifar",
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
) -> DenseNet:
    """Huang et al. DenseNet; ``None`` takes the form's default.

    cifar form: k=12, basic layers, no compression (set both for DenseNet-BC); imagenet form: k=32,
    bottleneck layers, compression 0.5 (torchvision's densenet121..201).
    """
    check_choice("densenet form", form, FORMS)
    cifar = form == "cifar"
    growth_rate = (12 if cifar else 32) if growth_rate is None else growth_rate
    bottleneck = not cifar if bottleneck is None else bottleneck
    compression = (1.0 if cifar else 0.5) if compression is None else compression
    if growth_rate < 1:
        raise ValueError(f"densenet growth_rate must be a positive integer, got {growth_rate}")
    if not 0 < compression <= 1:
        raise ValueError(f"densenet compression must be in (0, 1], got {compression}")
    if cifar:
        kind = "bottleneck" if bottleneck else "basic"
        what = f"{_arch(form, bottleneck, compression)} (cifar form, {kind} layers)"
        block_layers: Sequence[int] = (blocks_for_depth(depth, 6 if bottleneck else 3, 4, what),) * 3
    else:
        if not bottleneck:
            raise ValueError(
                "densenet imagenet form has bottleneck layers; bottleneck=False needs form='cifar'"
            )
        check_depth_in(depth, list(_IMAGENET_BLOCKS), "densenet (imagenet form)")
        block_layers = _IMAGENET_BLOCKS[depth]
    return DenseNet(
        block_layers,
        depth=depth,
        growth_rate=growth_rate,
        bottleneck=bottleneck,
        compression=compression,
        drop_rate=drop_rate,
        memory_efficient=memory_efficient,
        form=form,
        stem_type=stem_type_for(form, image_size),
        num_classes=num_classes,
        in_channels=in_channels,
    )


@register_model
def densenet_bc(depth: int = 100, compression: float = 0.5, **kw: Any) -> DenseNet:
    """DenseNet-BC: bottleneck layers and transitions that compress by ``compression``."""
    return densenet(depth=depth, bottleneck=True, compression=compression, **kw)


# CIFAR nets of Huang et al. Table 2
@register_model
def densenet40(**kw: Any) -> DenseNet:
    return densenet(depth=40, **kw)


@register_model
def densenet100(**kw: Any) -> DenseNet:
    return densenet(depth=100, **kw)


@register_model
def densenet_bc100(**kw: Any) -> DenseNet:
    return densenet_bc(depth=100, **kw)


@register_model
def densenet_bc190(**kw: Any) -> DenseNet:
    return densenet_bc(depth=190, growth_rate=40, **kw)


@register_model
def densenet_bc250(**kw: Any) -> DenseNet:
    return densenet_bc(depth=250, growth_rate=24, **kw)


# ImageNet nets (Huang et al. Table 1; torchvision's layout)
@register_model
def densenet121(**kw: Any) -> DenseNet:
    return densenet(depth=121, form="imagenet", **kw)


@register_model
def densenet161(**kw: Any) -> DenseNet:
    return densenet(depth=161, form="imagenet", growth_rate=48, **kw)


@register_model
def densenet169(**kw: Any) -> DenseNet:
    return densenet(depth=169, form="imagenet", **kw)


@register_model
def densenet201(**kw: Any) -> DenseNet:
    return densenet(depth=201, form="imagenet", **kw)


@register_model
def densenet264(**kw: Any) -> DenseNet:
    return densenet(depth=264, form="imagenet", **kw)
