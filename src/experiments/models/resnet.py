"""ResNets and plain nets (He et al. 2016): CIFAR form (6n+2, 9n+2 with bottlenecks) and ImageNet form."""

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
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

SHORTCUTS = ("A", "B", "none")
EXPANSION = 4  # bottleneck output width / inner width
_WIDTHS = {"cifar": (16, 32, 64), "imagenet": (64, 128, 256, 512)}
# depth -> (bottleneck, blocks per stage), as torchvision
_IMAGENET_LAYERS = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
}


def _arch(shortcut: str) -> str:
    return "plain" if shortcut == "none" else "resnet"


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False)
    return [conv, nn.BatchNorm2d(out_channels)]


class PadShortcut(nn.Module):
    """Option A: identity subsampled by ``stride``, zero-padded with the missing channels; no parameters."""

    def __init__(self, extra_channels: int, stride: int) -> None:
        super().__init__()
        self.extra_channels, self.stride = extra_channels, stride

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.extra_channels))

    def extra_repr(self) -> str:
        return f"extra_channels={self.extra_channels}, stride={self.stride}"


def _shortcut(kind: str, in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    if kind == "none":
        return None
    if in_channels == out_channels and stride == 1:
        return nn.Identity()
    if kind == "A":
        return PadShortcut(out_channels - in_channels, stride)
    return nn.Sequential(*_conv_bn(in_channels, out_channels, 1, stride))


class Block(nn.Module):
    """Basic (3x3, 3x3) or bottleneck (1x1, 3x3, 1x1) conv-BN body, plus a shortcut unless it is "none"."""

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int,
        bottleneck: bool,
        shortcut: str,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        self.memory_efficient = memory_efficient
        if bottleneck:
            self.out_channels = width * EXPANSION
            body = [
                *_conv_bn(in_channels, width, 1),
                nn.ReLU(inplace=True),
                *_conv_bn(width, width, 3, stride),  # stride on the 3x3, as torchvision
                nn.ReLU(inplace=True),
                *_conv_bn(width, self.out_channels, 1),
            ]
        else:
            self.out_channels = width
            body = [
                *_conv_bn(in_channels, width, 3, stride),
                nn.ReLU(inplace=True),
                *_conv_bn(width, width, 3),
            ]
        self.body = nn.Sequential(*body)
        self.shortcut = _shortcut(shortcut, in_channels, self.out_channels, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        if self.memory_efficient and self.training and torch.is_grad_enabled() and x.requires_grad:
            # activation checkpointing: keep the block's input only, recompute its body in backward (its
            # BN running statistics are updated twice, as in DenseNet's memory-efficient form)
            out = checkpoint(self.body, x, use_reentrant=False)
        else:
            out = self.body(x)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.relu(out)


class ResNet(StagedNet):
    """Stem, one stage per entry of ``layers`` (the first at stride 1, the others 2), average pool, FC."""

    def __init__(
        self,
        layers: Sequence[int],
        *,
        form: str = "cifar",
        bottleneck: bool = False,
        shortcut: str = "A",
        stem_type: str = "cifar",
        zero_init_residual: bool = False,
        memory_efficient: bool = False,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        widths = _WIDTHS[form]
        channels = widths[0]
        stem = make_stem(in_channels, channels, stem_type)
        stages = []
        for i, (num_blocks, width) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for j in range(num_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(Block(channels, width, stride, bottleneck, shortcut, memory_efficient))
                channels = blocks[-1].out_channels
            stages.append(nn.Sequential(*blocks))
        super().__init__(
            stem,
            stages,
            make_head(channels, num_classes),
            arch=_arch(shortcut),
            depth=(3 if bottleneck else 2) * sum(layers) + 2,
            form=form,
            stem_type=stem_type,
        )
        if zero_init_residual and shortcut != "none":
            # each residual block starts as the identity (Goyal et al. 2017)
            for module in self.modules():
                if isinstance(module, Block):
                    nn.init.zeros_(module.body[-1].weight)


@register_model
def resnet(
    depth: int = 56,
    form: Literal["cifar", "imagenet"] = "cifar",
    shortcut: Literal["A", "B", "none"] | None = None,
    bottleneck: bool | None = None,
    zero_init_residual: bool = False,
    memory_efficient: bool = False,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
) -> ResNet:
    """He et al. ResNet; ``shortcut="none"`` is the plain net of the same depth.

    ``shortcut=None`` means "A" (cifar form) or "B" (imagenet form); ``bottleneck=None`` means basic blocks
    in cifar form and the torchvision layout (bottlenecks from depth 50) in imagenet form.
    ``memory_efficient=True`` recomputes each block's body in backward (activation checkpointing, as
    DenseNet's memory-efficient form does for its concatenations).
    """
    check_choice("resnet form", form, FORMS)
    if shortcut is None:
        shortcut = "A" if form == "cifar" else "B"
    check_choice("resnet shortcut", shortcut, SHORTCUTS)
    arch = _arch(shortcut)
    kind = "bottleneck" if bottleneck else "basic"
    if form == "cifar":
        bottleneck = bool(bottleneck)
        n = blocks_for_depth(depth, 9 if bottleneck else 6, 2, f"{arch} (cifar form, {kind} blocks)")
        layers: Sequence[int] = (n, n, n)
    else:
        table = {d: v for d, v in _IMAGENET_LAYERS.items() if bottleneck in (None, v[0])}
        what = f"{arch} (imagenet form)" if bottleneck is None else f"{arch} (imagenet form, {kind} blocks)"
        check_depth_in(depth, list(table), what)
        bottleneck, layers = table[depth]
    return ResNet(
        layers,
        form=form,
        bottleneck=bottleneck,
        shortcut=shortcut,
        stem_type=stem_type_for(form, image_size),
        zero_init_residual=zero_init_residual,
        memory_efficient=memory_efficient,
        num_classes=num_classes,
        in_channels=in_channels,
    )


@register_model
def plain(**kw: Any) -> ResNet:
    """Plain net (He et al. sec. 4): the ResNet of the same depth with no shortcuts at all."""
    if "shortcut" in kw:
        raise ValueError(
            f"plain nets take no shortcut, got shortcut={kw['shortcut']!r}; use 'resnet' for that"
        )
    return resnet(shortcut="none", **kw)


# CIFAR-10 nets of He et al. sec. 4.2 (option A)
@register_model
def resnet20(**kw: Any) -> ResNet:
    return resnet(depth=20, **kw)


@register_model
def resnet32(**kw: Any) -> ResNet:
    return resnet(depth=32, **kw)


@register_model
def resnet44(**kw: Any) -> ResNet:
    return resnet(depth=44, **kw)


@register_model
def resnet56(**kw: Any) -> ResNet:
    return resnet(depth=56, **kw)


@register_model
def resnet110(**kw: Any) -> ResNet:
    return resnet(depth=110, **kw)


@register_model
def resnet1202(**kw: Any) -> ResNet:
    return resnet(depth=1202, **kw)


@register_model
def plain20(**kw: Any) -> ResNet:
    return plain(depth=20, **kw)


@register_model
def plain32(**kw: Any) -> ResNet:
    return plain(depth=32, **kw)


@register_model
def plain44(**kw: Any) -> ResNet:
    return plain(depth=44, **kw)


@register_model
def plain56(**kw: Any) -> ResNet:
    return plain(depth=56, **kw)


@register_model
def plain110(**kw: Any) -> ResNet:
    return plain(depth=110, **kw)


# ImageNet nets (He et al. Table 1 and 2; option B, torchvision's layout)
@register_model
def plain18(**kw: Any) -> ResNet:
    return plain(depth=18, form="imagenet", **kw)


@register_model
def plain34(**kw: Any) -> ResNet:
    return plain(depth=34, form="imagenet", **kw)


@register_model
def resnet18(**kw: Any) -> ResNet:
    return resnet(depth=18, form="imagenet", **kw)


@register_model
def resnet34(**kw: Any) -> ResNet:
    return resnet(depth=34, form="imagenet", **kw)


@register_model
def resnet50(**kw: Any) -> ResNet:
    return resnet(depth=50, form="imagenet", **kw)


@register_model
def resnet101(**kw: Any) -> ResNet:
    return resnet(depth=101, form="imagenet", **kw)


@register_model
def resnet152(**kw: Any) -> ResNet:
    return resnet(depth=152, form="imagenet", **kw)
