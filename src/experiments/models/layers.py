"""Pieces both families share: the staged layout, stem, head, weight init and argument checks."""

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

FORMS = ("cifar", "imagenet")


class StagedNet(nn.Module):
    """``stem -> stage1 .. stageN -> head``, plus the attributes the runner records about the net."""

    def __init__(
        self,
        stem: nn.Module,
        stages: Sequence[nn.Module],
        head: nn.Module,
        *,
        arch: str,
        depth: int,
        form: str,
        stem_type: str,
    ) -> None:
        super().__init__()
        self.stem = stem
        for i, stage in enumerate(stages, 1):
            self.add_module(f"stage{i}", stage)
        self.head = head
        self.arch, self.depth, self.form, self.stem_type = arch, depth, form, stem_type
        init_weights(self)

    @property
    def stages(self) -> list[nn.Module]:
        return [module for name, module in self.named_children() if name.startswith("stage")]

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)


def init_weights(model: nn.Module) -> None:
    """He init (fan_out) for convs, BN to identity, zero Linear bias, as the papers' Torch code."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)


def stem_type_for(form: str, image_size: int) -> str:
    """ImageNet forms keep their 7x7 + maxpool stem only above 64 px; smaller inputs get the CIFAR stem."""
    return "imagenet" if form == "imagenet" and image_size > 64 else "cifar"


def make_stem(in_channels: int, width: int, stem_type: str, norm: bool = True) -> nn.Sequential:
    """7x7/2 conv-BN-ReLU-3x3/2 maxpool ("imagenet") or 3x3/1 conv-BN-ReLU ("cifar"); BN-ReLU if ``norm``."""
    imagenet = stem_type == "imagenet"
    kernel, stride = (7, 2) if imagenet else (3, 1)
    conv = nn.Conv2d(in_channels, width, kernel, stride, padding=kernel // 2, bias=False)
    layers: OrderedDict[str, nn.Module] = OrderedDict(conv=conv)
    if norm:
        layers.update(norm=nn.BatchNorm2d(width), relu=nn.ReLU(inplace=True))
    if imagenet:
        layers.update(pool=nn.MaxPool2d(3, stride=2, padding=1))
    return nn.Sequential(layers)


def make_head(channels: int, num_classes: int, norm: bool = False) -> nn.Sequential:
    """[BN-ReLU-] global average pool, flatten, biased FC named ``fc``."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if norm:
        layers.update(norm=nn.BatchNorm2d(channels), relu=nn.ReLU(inplace=True))
    layers.update(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(channels, num_classes))
    return nn.Sequential(layers)


def check_choice(what: str, value: object, valid: Sequence[object]) -> None:
    """One-line ValueError unless ``value`` is one of ``valid``."""
    if value not in valid:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, valid))}; got {value!r}")


def blocks_for_depth(depth: int, step: int, offset: int, what: str) -> int:
    """``n >= 1`` with ``depth == step * n + offset``, else a one-line ValueError with the nearest depths."""
    n, rem = divmod(depth - offset, step)
    if rem == 0 and n >= 1:
        return n
    nearest = sorted({step * max(k, 1) + offset for k in (n, n + 1)})
    raise ValueError(
        f"{what} depth must be {step}n+{offset}, got {depth}; nearest valid: {', '.join(map(str, nearest))}"
    )


def check_depth_in(depth: int, valid: Sequence[int], what: str) -> None:
    """One-line ValueError unless ``depth`` is one of the tabulated ``valid`` depths."""
    if depth not in valid:
        raise ValueError(f"{what} depth must be one of {', '.join(map(str, valid))}, got {depth}")
