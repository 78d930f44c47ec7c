"""Plain-PyTorch model zoo: ResNets, plain nets and DenseNets, built by name with ``create_model``."""

from .densenet import DenseNet, densenet, densenet_bc
from .layers import StagedNet
from .registry import create_model, list_models, register_model
from .resnet import ResNet, plain, resnet

__all__ = [
    "DenseNet",
    "ResNet",
    "StagedNet",
    "create_model",
    "densenet",
    "densenet_bc",
    "list_models",
    "plain",
    "register_model",
    "resnet",
]
