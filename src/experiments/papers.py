"""The papers' test errors, to set beside ours (fractions): He et al. 2016 Table 6 (CIFAR-10 with
augmentation) and Huang et al. 2017 Table 2 (C10, C10+, C100, C100+, SVHN; + is with augmentation).

A run matches a figure when its net is the paper's (label, depth and, for DenseNets, growth rate, in the
CIFAR form), on the same dataset, with or without augmentation as the paper. The recipe need not match:
the figure is a reference, and the report says how far from it a run landed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from experiments import specs

# He et al. 2016, Table 6: CIFAR-10 with augmentation (ResNet-110: the best of 5 runs; their mean was 6.61
# +- 0.16%)
HE_2016 = {
    "resnet20": 0.0875,
    "resnet32": 0.0751,
    "resnet44": 0.0717,
    "resnet56": 0.0697,
    "resnet110": 0.0643,
    "resnet1202": 0.0793,
}
# Huang et al. 2017, Table 2, in the order of these columns (None: not in the table)
HUANG_2017_COLUMNS = [
    ("cifar10", False),
    ("cifar10", True),
    ("cifar100", False),
    ("cifar100", True),
    ("svhn", False),
]
HUANG_2017 = {
    "densenet40-k12": (0.0700, 0.0524, 0.2755, 0.2442, 0.0179),
    "densenet100-k12": (0.0577, 0.0410, 0.2379, 0.2020, 0.0167),
    "densenet100-k24": (0.0583, 0.0374, 0.2342, 0.1925, 0.0159),
    "densenet_bc100-k12": (0.0592, 0.0451, 0.2415, 0.2227, 0.0176),
    "densenet_bc250-k24": (0.0519, 0.0362, 0.1964, 0.1760, 0.0174),
    "densenet_bc190-k40": (None, 0.0346, None, 0.1718, None),
}
# (net, dataset, augmented) -> test error; net is the label + depth, and -k<growth rate> for a DenseNet
PAPER_TEST_ERRORS: dict[tuple[str, str, bool], float] = {
    **{(net, "cifar10", True): error for net, error in HE_2016.items()},
    **{
        (net, dataset, augmented): error
        for net, errors in HUANG_2017.items()
        for (dataset, augmented), error in zip(HUANG_2017_COLUMNS, errors, strict=True)
        if error is not None
    },
}


def net_name(spec: specs.Spec) -> str:
    """The papers' name of the net (`densenet_bc100-k12`): its label, so that a family spelt out as another
    net (`arch=densenet arch.bottleneck=true arch.compression=0.5`) is that net, and one the papers did not
    train (a DenseNet-B or -C) has no figure."""
    name = f"{spec.label}{spec.depth}"
    return f"{name}-k{spec.growth_rate}" if isinstance(spec, specs.DenseNetSpec) else name


def paper_test_error(spec: specs.Spec, dataset: str, augmented: bool) -> float | None:
    """The paper's test error for this net, dataset and augmentation; None where the papers have none."""
    if spec.form != "cifar":
        return None
    return PAPER_TEST_ERRORS.get((net_name(spec), dataset, augmented))


def augmented(dataset: Mapping[str, Any]) -> bool:
    """Whether a dataset config trains on augmented images (the papers' "+" columns: crops and flips)."""
    return bool(dataset.get("crop_padding")) or bool(dataset.get("flip"))


def for_config(config: dict[str, Any]) -> float | None:
    """The paper's test error for a run's composed config (a plain dict), None where none matches."""
    try:
        arch = {k: v for k, v in config["arch"].items() if k not in ("pretrained", "freeze")}
        spec = specs.resolve(arch.pop("name"), image_size=32, **arch)
        return paper_test_error(spec, config["dataset"]["name"], augmented(config["dataset"]))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
