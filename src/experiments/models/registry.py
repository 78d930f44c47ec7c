"""Build a net by name (`create_model`), optionally from ImageNet weights."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from experiments.models.densenet import DenseNet
from experiments.models.resnet import ResNet
from experiments.specs import ResNetSpec, list_names, resolve, weights_path

# torchvision's ImageNet weights for the nets it has, by our name for them
TORCHVISION_WEIGHTS = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",
    "resnet101": "ResNet101_Weights.IMAGENET1K_V1",
    "resnet152": "ResNet152_Weights.IMAGENET1K_V1",
    "densenet121": "DenseNet121_Weights.IMAGENET1K_V1",
    "densenet161": "DenseNet161_Weights.IMAGENET1K_V1",
    "densenet169": "DenseNet169_Weights.IMAGENET1K_V1",
    "densenet201": "DenseNet201_Weights.IMAGENET1K_V1",
}


def list_models() -> list[str]:
    """Every name `create_model` takes: the families (resnet, plain, densenet, densenet_bc), the presets."""
    return list_names()


def create_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    pretrained: str | None = None,
    **kwargs: Any,
) -> ResNet | DenseNet:
    """Build `name`, a preset (`resnet56`, `densenet121`) or a family (`resnet` with `depth=...`), for images
    of `in_channels` x `image_size` px and `num_classes` outputs; keyword arguments are `specs`' fields.

    `pretrained` is a torchvision state dict's file (or a folder holding `<name>.pth`, e.g. resnet50.pth), or
    "torchvision" for torchvision's ImageNet weights
    (downloaded once into torch's cache); the classifier keeps its fresh weights when `num_classes` is not
    1000. Pretrained nets get the ImageNet stem unless `stem` says otherwise (then loading fails).
    """
    spec = resolve(name, image_size=image_size, pretrained=bool(pretrained), **kwargs)
    net = ResNet if isinstance(spec, ResNetSpec) else DenseNet
    model = net(spec, num_classes=num_classes, in_channels=in_channels)
    if pretrained:
        load_pretrained(model, pretrained)
    return model


def load_pretrained(model: ResNet | DenseNet, source: str) -> None:
    """Load ImageNet weights (a torchvision state dict: a file, or "torchvision") into `model`; a one-line
    ValueError when they do not fit it."""
    spec = model.spec
    if spec.form != "imagenet" or spec.stem != "imagenet":
        raise ValueError(
            "pretrained weights are for ImageNet-form nets with the ImageNet stem, not "
            f"{spec.label}{spec.depth} ({spec.form} form, {spec.stem} stem)"
        )
    if source == "torchvision":
        state = torchvision_weights(f"{spec.family}{spec.depth}")
    else:
        state = _read(Path(weights_path(source, spec)))
    state = {_torchvision_name(key): value for key, value in state.items()}
    head = "fc" if isinstance(model, ResNet) else "classifier"
    if (
        state.get(f"{head}.weight") is not None
        and state[f"{head}.weight"].shape != getattr(model, head).weight.shape
    ):
        state = {k: v for k, v in state.items() if not k.startswith(f"{head}.")}  # a new head for new classes
    own = model.state_dict()
    optional = frozenset(
        {f"{head}.weight", f"{head}.bias", *(k for k in own if k.endswith("num_batches_tracked"))}
    )
    if problem := misfit(own, state, optional):
        raise ValueError(f"pretrained weights do not fit {spec.label}{spec.depth}: {problem}")
    model.load_state_dict(state, strict=False)


def misfit(
    own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], optional: frozenset[str] = frozenset()
) -> str | None:
    """Why `state` does not fit a net whose state dict is `own` (keys in `optional` may be absent), in a
    few words naming the first key at fault; None when it fits."""
    missing = sorted(set(own) - set(state) - optional)
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if not (missing or unexpected or wrong):
        return None
    first = (missing or unexpected or wrong)[0]
    what = "missing" if missing else "unexpected" if unexpected else "of another shape"
    counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of another shape"
    return f"{first} is {what} ({counts})"


def torchvision_weights(name: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet state dict for `name`, from torch's cache or downloaded into it; offline and not
    cached, a ValueError saying which file to put where."""
    if name not in TORCHVISION_WEIGHTS:
        raise ValueError(
            f"torchvision has no ImageNet weights for {name}; it has {', '.join(TORCHVISION_WEIGHTS)}"
        )
    from torchvision.models import get_weight

    weights = get_weight(TORCHVISION_WEIGHTS[name])
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as error:  # no network: urllib's URLError, a socket error, ...
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise ValueError(
            f"torchvision's {name} weights are not in {cache} and could not be downloaded "
            f"({type(error).__name__}); fetch {weights.url} to that path, or give arch.pretrained=PATH"
        ) from None


def _read(path: Path) -> dict[str, torch.Tensor]:
    path = path.expanduser()
    if not path.is_file():
        raise ValueError(f"pretrained weights: {path} is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"pretrained weights: {path} is not a PyTorch state dict ({type(error).__name__})"
        ) from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"pretrained weights: {path} holds no state dict of tensors")
    return state


# torchvision's DenseNet files name a layer's parts `norm.1`, `conv.2` (from before PyTorch allowed dots)
_OLD_DENSE_LAYER = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _torchvision_name(key: str) -> str:
    match = _OLD_DENSE_LAYER.match(key)
    return match.group(1) + match.group(2) if match else key
