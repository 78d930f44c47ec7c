"""Name -> model registry: ``@register_model`` marks a builder, ``create_model(name)`` calls it."""

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Builder) -> Builder:
    """Register ``fn`` under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is already registered")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """All registered names (families and presets), sorted."""
    return sorted(_MODELS)


def create_model(
    name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **kwargs: Any
) -> nn.Module:
    """Build ``name`` (a preset, or a family such as ``resnet`` with ``depth=``) for the given inputs."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _MODELS[name](num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
