"""Plain-PyTorch model zoo: ResNets, plain nets and DenseNets with torchvision's module names, built by name
with `create_model` (what each name means: experiments.specs). No Lightning, no Hydra."""

from experiments.models.densenet import DenseNet
from experiments.models.layers import Block
from experiments.models.registry import create_model, list_models, load_pretrained
from experiments.models.resnet import ResNet

__all__ = ["Block", "DenseNet", "ResNet", "create_model", "list_models", "load_pretrained"]
