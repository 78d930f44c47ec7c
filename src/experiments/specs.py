"""What each net is, in plain Python: the families, the papers' presets and the depth rules.

A preset is the complete spec of a paper's net in one line; a family builds any depth its rule allows.
The model zoo builds from these tables, the Hydra config group `arch` offers every preset by name, and
the command line checks an `arch` config against them before it imports torch. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

FAMILIES = ("resnet", "plain", "densenet", "densenet_bc")
FORMS = ("cifar", "imagenet")
SHORTCUTS = ("A", "B", "none")
STEMS = ("auto", "cifar", "imagenet")
IMAGENET_STEM_MIN_SIZE = 65  # stem=auto keeps the 7x7/2 conv and max-pool above 64 px only

# ImageNet layouts, as torchvision builds them. ResNet: depth -> (bottleneck, blocks per stage)
RESNET_IMAGENET = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
}
# DenseNet: depth -> layers per dense block
DENSENET_IMAGENET = {
    121: (6, 12, 24, 16),
    161: (6, 12, 36, 24),
    169: (6, 12, 32, 32),
    201: (6, 12, 48, 32),
    264: (6, 12, 64, 48),
}

# The depth a family builds unless told (also the Hydra configs' arch.depth: experiments.config registers it)
DEFAULT_DEPTHS = {"resnet": 56, "plain": 56, "densenet": 40, "densenet_bc": 100}
# What a DenseNet's layers are unless told: by form, and for DenseNet-BC
DENSENET_DEFAULTS = {
    "cifar": {"growth_rate": 12, "bottleneck": False, "compression": 1.0},
    "imagenet": {"growth_rate": 32, "bottleneck": True, "compression": 0.5},
    "bc": {"growth_rate": 12, "bottleneck": True, "compression": 0.5},
}
PRESETS: dict[str, dict[str, Any]] = {
    # He et al. 2016, CIFAR-10 (Table 6, Fig. 6): 3 stages at 16/32/64 filters, option A shortcuts
    **{f"resnet{d}": {"family": "resnet", "depth": d} for d in (20, 32, 44, 56, 110, 1202)},
    **{f"plain{d}": {"family": "plain", "depth": d} for d in (20, 32, 44, 56, 110)},
    # He et al. 2016, ImageNet (Tables 1-3): torchvision's layout, projection shortcuts
    "plain18": {"family": "plain", "form": "imagenet", "depth": 18},
    "plain34": {"family": "plain", "form": "imagenet", "depth": 34},
    **{
        f"resnet{d}": {"family": "resnet", "form": "imagenet", "depth": d, "shortcut": "B"}
        for d in RESNET_IMAGENET
    },
    # Huang et al. 2017, CIFAR (Table 2)
    **{f"densenet{d}": {"family": "densenet", "depth": d, **DENSENET_DEFAULTS["cifar"]} for d in (40, 100)},
    "densenet_bc100": {"family": "densenet_bc", "depth": 100, "growth_rate": 12},
    "densenet_bc190": {"family": "densenet_bc", "depth": 190, "growth_rate": 40},
    "densenet_bc250": {"family": "densenet_bc", "depth": 250, "growth_rate": 24},
    # Huang et al. 2017, ImageNet (Table 1): torchvision's densenet121..201, and 264 (not in torchvision)
    **{
        f"densenet{d}": {
            "family": "densenet",
            "form": "imagenet",
            "depth": d,
            **DENSENET_DEFAULTS["imagenet"],
        }
        for d in (121, 169, 201, 264)
    },
    "densenet161": {
        "family": "densenet",
        "form": "imagenet",
        "depth": 161,
        **DENSENET_DEFAULTS["imagenet"],
        "growth_rate": 48,
    },
}


def family_of(name: str, shortcut: str | None) -> str:
    """The family of a net asked for as family `name` with `shortcut`: `name`, except that a net without
    shortcuts is a plain net (`arch=resnet arch.shortcut=none` builds one)."""
    return "plain" if shortcut == "none" else name


def list_names() -> list[str]:
    """Every name `create_model` takes: the families and the presets."""
    return sorted([*FAMILIES, *PRESETS])


@dataclass(frozen=True)
class ResNetSpec:
    """A ResNet or plain net, every choice resolved."""

    family: str  # resnet | plain (a plain net is the same net without shortcuts)
    depth: int  # weighted layers: convs and the final FC
    form: str  # cifar (3 stages at 16/32/64) | imagenet (4 stages at 64..512, torchvision's)
    stages: tuple[int, ...]  # blocks per stage
    bottleneck: bool  # 1x1-3x3-1x1 blocks (x4 wide) instead of 3x3-3x3
    shortcut: str  # A: zero-padded identity | B: 1x1 projections where shapes change | none: plain
    stem: str  # cifar: 3x3/1 conv | imagenet: 7x7/2 conv and 3x3/2 max-pool
    zero_init_residual: bool  # each residual branch's last BN starts at zero (Goyal et al. 2017)
    memory_efficient: bool  # each block's residual branch recomputed in backward

    @property
    def label(self) -> str:
        return self.family


@dataclass(frozen=True)
class DenseNetSpec:
    """A DenseNet, every choice resolved."""

    family: str  # densenet | densenet_bc
    depth: int  # the paper's name for the net (3n+4, 6n+4 with bottlenecks; 121..264)
    form: str  # cifar (3 dense blocks) | imagenet (4 dense blocks, torchvision's)
    blocks: tuple[int, ...]  # dense layers per block
    growth_rate: int  # k: feature maps each dense layer adds
    bottleneck: bool  # a 1x1 conv to 4k maps before each 3x3 (the B of BC)
    compression: float  # transitions keep this fraction of their input's maps (the C of BC: < 1)
    drop_rate: float  # dropout after each conv (Huang et al.: 0.2 without data augmentation)
    stem: str  # cifar: one 3x3 conv | imagenet: 7x7/2 conv-BN-ReLU and 3x3/2 max-pool
    memory_efficient: bool  # concat-BN-ReLU-conv recomputed in backward (Pleiss et al. 2017)

    @property
    def label(self) -> str:
        """densenet, densenet_b, densenet_c or densenet_bc: what its layers and transitions are."""
        if self.form == "imagenet":
            return "densenet"
        suffix = ("b" if self.bottleneck else "") + ("c" if self.compression < 1 else "")
        return f"densenet_{suffix}" if suffix else "densenet"


Spec = ResNetSpec | DenseNetSpec


def resolve(name: str, image_size: int = 32, pretrained: bool = False, **kwargs: Any) -> Spec:
    """The complete spec of `name` (a family or a preset) with `kwargs` over the preset's values and None
    taking the family's default; a one-line ValueError names what is wrong and what is valid. A `pretrained`
    net gets the ImageNet stem its weights were trained with unless `stem` says otherwise."""
    if name in PRESETS:
        given = {k: v for k, v in kwargs.items() if v is not None}
        kwargs = {**PRESETS[name], **given}
        name = kwargs.pop("family")
    if name not in FAMILIES:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_names())}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    build = _resnet if name in ("resnet", "plain") else _densenet
    known = {f.name for f in fields(ResNetSpec if build is _resnet else DenseNetSpec)} - {"stages", "blocks"}
    if unknown := sorted(set(kwargs) - known - {"family"}):
        raise ValueError(f"{name} takes no argument {unknown[0]!r}; it takes {', '.join(sorted(known))}")
    stem = kwargs.pop("stem", "auto")
    if pretrained and stem == "auto":
        stem = "imagenet"
    _check_choice(f"{name} stem", stem, STEMS)
    return build(name, image_size=image_size, stem=stem, **kwargs)


def weights_path(path: str, spec: Spec) -> str:
    """The file of pretrained weights for `spec`: `path` itself, or in a folder `path` the file named after
    the net (`resnet50.pth`, `densenet121.pth`), so that one setting serves a sweep over nets."""
    folder = Path(path).expanduser()
    return str(folder / f"{spec.family}{spec.depth}.pth") if folder.is_dir() else path


def _stem(form: str, stem: str, image_size: int) -> str:
    if stem != "auto":
        return stem
    return "imagenet" if form == "imagenet" and image_size >= IMAGENET_STEM_MIN_SIZE else "cifar"


def _resnet(family: str, *, image_size: int, stem: str, form: str = "cifar", **kw: Any) -> ResNetSpec:
    _check_choice(f"{family} form", form, FORMS)
    depth = kw.pop("depth", DEFAULT_DEPTHS[family])
    shortcut = kw.pop("shortcut", "none" if family == "plain" else "A" if form == "cifar" else "B")
    if family == "plain" and shortcut != "none":
        raise ValueError(f"plain nets take no shortcut, got shortcut={shortcut!r}; use 'resnet' for that")
    _check_choice(f"{family} shortcut", shortcut, SHORTCUTS)
    family = family_of(family, shortcut)
    bottleneck = kw.pop("bottleneck", None)
    depth = _integer(f"{family} depth", depth)
    if form == "cifar":
        bottleneck = bool(bottleneck)
        kind = "bottleneck" if bottleneck else "basic"
        n = blocks_for_depth(depth, 9 if bottleneck else 6, 2, f"{family} (cifar form, {kind} blocks)")
        stages: tuple[int, ...] = (n, n, n)
    else:
        table = {d: v for d, v in RESNET_IMAGENET.items() if bottleneck in (None, v[0])}
        kind = "" if bottleneck is None else f", {'bottleneck' if bottleneck else 'basic'} blocks"
        check_depth_in(depth, list(table), f"{family} (imagenet form{kind})")
        bottleneck, stages = table[depth]
    return ResNetSpec(
        family=family,
        depth=depth,
        form=form,
        stages=stages,
        bottleneck=bottleneck,
        shortcut=shortcut,
        stem=_stem(form, stem, image_size),
        zero_init_residual=bool(kw.pop("zero_init_residual", False)),
        memory_efficient=bool(kw.pop("memory_efficient", False)),
    )


def _densenet(family: str, *, image_size: int, stem: str, form: str = "cifar", **kw: Any) -> DenseNetSpec:
    """cifar form: k=12, basic layers, no compression unless set (densenet_bc: bottlenecks, compression
    0.5); imagenet form: k=32, bottleneck layers, compression 0.5."""
    _check_choice(f"{family} form", form, FORMS)
    cifar = form == "cifar"
    bc = family == "densenet_bc"
    if bc and kw.get("bottleneck") is False:
        raise ValueError("densenet_bc has bottleneck layers; for none use arch=densenet")
    defaults = DENSENET_DEFAULTS["bc" if bc else form]
    depth = _integer(f"{family} depth", kw.pop("depth", DEFAULT_DEPTHS[family]))
    growth_rate = _integer(f"{family} growth_rate", kw.pop("growth_rate", defaults["growth_rate"]))
    bottleneck = bool(kw.pop("bottleneck", defaults["bottleneck"]))
    compression = float(kw.pop("compression", defaults["compression"]))
    drop_rate = float(kw.pop("drop_rate", 0.0))
    if growth_rate < 1:
        raise ValueError(f"{family} growth_rate must be a positive integer, got {growth_rate}")
    if not 0 < compression <= 1:
        raise ValueError(f"{family} compression must be in (0, 1], got {compression}")
    if not 0 <= drop_rate < 1:
        raise ValueError(f"{family} drop_rate must be in [0, 1), got {drop_rate}")
    if cifar:
        kind = "bottleneck" if bottleneck else "basic"
        what = f"{family} (cifar form, {kind} layers)"
        blocks: tuple[int, ...] = (blocks_for_depth(depth, 6 if bottleneck else 3, 4, what),) * 3
    else:
        if not bottleneck:
            raise ValueError(
                f"{family} imagenet form has bottleneck layers; bottleneck=false needs form=cifar"
            )
        check_depth_in(depth, list(DENSENET_IMAGENET), f"{family} (imagenet form)")
        blocks = DENSENET_IMAGENET[depth]
    return DenseNetSpec(
        family=family,
        depth=depth,
        form=form,
        blocks=blocks,
        growth_rate=growth_rate,
        bottleneck=bottleneck,
        compression=compression,
        drop_rate=drop_rate,
        stem=_stem(form, stem, image_size),
        memory_efficient=bool(kw.pop("memory_efficient", False)),
    )


def _integer(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return value


def _check_choice(what: str, value: object, valid: tuple[object, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, valid))}; got {value!r}")


def blocks_for_depth(depth: int, step: int, offset: int, what: str) -> int:
    """`n >= 1` with `depth == step * n + offset`, else a one-line ValueError with the nearest depths."""
    n, rem = divmod(depth - offset, step)
    if rem == 0 and n >= 1:
        return n
    nearest = sorted({step * max(k, 1) + offset for k in (n, n + 1)})
    raise ValueError(
        f"{what} depth must be {step}n+{offset}, got {depth}; nearest valid: {', '.join(map(str, nearest))}"
    )


def check_depth_in(depth: int, valid: list[int], what: str) -> None:
    if depth not in valid:
        raise ValueError(f"{what} depth must be one of {', '.join(map(str, valid))}, got {depth}")


# classes, channels and image size of the built-in datasets (synthetic and imagefolder say their own)
DATASETS = {
    "cifar10": (10, 3, 32),
    "cifar100": (100, 3, 32),
    "mnist": (10, 1, 28),
    "fashion_mnist": (10, 1, 28),
    "svhn": (10, 3, 32),
    "digits": (10, 1, 8),
}
DIGITS_TEST_IMAGES = 297  # digits has no test split of its own: the same 297 images test every run
# images a built-in dataset holds for training and validation together (dataset.val_size of them validate)
TRAIN_IMAGES = {
    "cifar10": 50_000,
    "cifar100": 50_000,
    "mnist": 60_000,
    "fashion_mnist": 60_000,
    "svhn": 73_257,
    "digits": 1_797 - DIGITS_TEST_IMAGES,
}


def final_map_size(spec: Spec, image_size: int) -> int:
    """The side of the feature maps the last stage or dense block sees (0: the pools left nothing)."""
    size = image_size
    if spec.stem == "imagenet":  # a 7x7/2 conv and a 3x3/2 max-pool, both padded: each halves, rounding up
        size = _halved(_halved(size))
    for _ in range(len(spec.stages if isinstance(spec, ResNetSpec) else spec.blocks) - 1):
        # a ResNet's strided 3x3 conv rounds up; a DenseNet transition's 2x2 average pool rounds down
        size = _halved(size) if isinstance(spec, ResNetSpec) else size // 2
    return size


def _halved(size: int) -> int:
    """After a padded stride-2 conv or pool: half, rounded up."""
    return (size + 1) // 2


def min_image_size(spec: Spec) -> int:
    """The smallest images the net can take."""
    return next(size for size in range(1, 1 << 12) if final_map_size(spec, size) >= 1)
