"""State dicts in the project's older naming, renamed to torchvision's module names so that they load.

The older naming is `stem -> stage1..N -> head` with numbered sequential parts (`stage1.0.body.3.weight`,
`stage1.block.layers.0.entry.2.weight`). Only the names differ: the parameters, their order (which a saved
optimiser state relies on) and their shapes are the same.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_RESNET = re.compile(r"^stage(\d+)\.(\d+)\.(body|shortcut)\.(\d+)\.(.+)$")
_DENSE_LAYER = re.compile(r"^stage(\d+)\.block\.layers\.(\d+)\.(entry|tail)\.(\d+)\.(.+)$")
_TRANSITION = re.compile(r"^stage(\d+)\.transition\.(\d+)\.(.+)$")


def is_legacy(state_dict: Mapping[str, Any], prefix: str = "") -> bool:
    return any(key.startswith(f"{prefix}stem.") for key in state_dict)


def migrate(state_dict: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`state_dict` with the old names of keys under `prefix` renamed; other keys as they are."""
    if not is_legacy(state_dict, prefix):
        return dict(state_dict)
    densenet = any(".block.layers." in key for key in state_dict)
    stages = {m.group(1) for key in state_dict if (m := re.match(rf"{re.escape(prefix)}stage(\d+)\.", key))}

    def rename(name: str) -> str:
        return _densenet_name(name, state_dict, prefix, len(stages)) if densenet else _resnet_name(name)

    return {
        prefix + rename(key[len(prefix) :]) if key.startswith(prefix) else key: value
        for key, value in state_dict.items()
    }


def _resnet_name(name: str) -> str:
    if name.startswith("stem."):
        return name.replace("stem.conv.", "conv1.").replace("stem.norm.", "bn1.")
    if name.startswith("head.fc."):
        return name.removeprefix("head.")
    match = _RESNET.match(name)
    if not match:
        return name
    stage, block, part, index, rest = match.groups()
    if part == "shortcut":
        return f"layer{stage}.{block}.downsample.{index}.{rest}"
    # a body is [conv, bn, relu] repeated, the last relu left out
    position, offset = divmod(int(index), 3)
    layer = "conv" if offset == 0 else "bn"
    return f"layer{stage}.{block}.{layer}{position + 1}.{rest}"


def _densenet_name(name: str, state_dict: Mapping[str, Any], prefix: str, num_blocks: int) -> str:
    if name.startswith("stem."):
        return "features." + name.replace("stem.conv.", "conv0.").replace("stem.norm.", "norm0.")
    if name.startswith("head."):
        return name.replace("head.norm.", f"features.norm{num_blocks + 1}.").replace(
            "head.fc.", "classifier."
        )
    if match := _TRANSITION.match(name):
        stage, index, rest = match.groups()
        return f"features.transition{stage}.{'norm' if index == '0' else 'conv'}.{rest}"
    match = _DENSE_LAYER.match(name)
    if not match:
        return name
    stage, layer, part, index, rest = match.groups()
    if part == "entry":  # [norm, relu, conv]
        module = "norm1" if index == "0" else "conv1"
    else:  # [dropout?, norm, relu, conv, dropout?]: the norm is the part with running statistics
        old = f"{prefix}stage{stage}.block.layers.{layer}.tail.{index}.running_mean"
        module = "norm2" if old in state_dict else "conv2"
    return f"features.denseblock{stage}.denselayer{int(layer) + 1}.{module}.{rest}"
