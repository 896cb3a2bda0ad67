"""Layers: objects that own parameters, buffers and forward caches and delegate math to
``functional``; containers (``Residual``, and ``gpucnn.Sequential``) hold layers and nest."""

from __future__ import annotations

from ..parameter import Buffer, Parameter
from .activations import GELU, Elementwise, LeakyReLU, Sigmoid, SiLU, Tanh
from .base import LAYERS, BuildContext, Layer, layer_from_config, public_shape
from .containers import Container, Residual
from .conv import Conv2D
from .core import Dense, Dropout, Flatten, ReLU
from .fused import (
    BatchNorm1DReLU,
    BatchNorm2DReLU,
    Conv2DBatchNorm2D,
    Conv2DBatchNorm2DReLU,
    Conv2DBatchNorm2DReLUMaxPool2D,
    Conv2DReLU,
    Conv2DReLUMaxPool2D,
    ReLUMaxPool2D,
    plan,
)
from .normalization import BatchNorm1D, BatchNorm2D
from .pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D

LAYER_TYPES: dict[str, type[Layer]] = LAYERS.classes

__all__ = [
    "AvgPool2D",
    "BatchNorm1D",
    "BatchNorm2D",
    "Buffer",
    "BuildContext",
    "Container",
    "Conv2D",
    "BatchNorm1DReLU",
    "BatchNorm2DReLU",
    "Conv2DBatchNorm2D",
    "Conv2DBatchNorm2DReLU",
    "Conv2DBatchNorm2DReLUMaxPool2D",
    "Conv2DReLU",
    "Conv2DReLUMaxPool2D",
    "Dense",
    "Dropout",
    "Elementwise",
    "Flatten",
    "GELU",
    "GlobalAvgPool2D",
    "LAYERS",
    "LAYER_TYPES",
    "Layer",
    "LeakyReLU",
    "MaxPool2D",
    "Parameter",
    "ReLU",
    "ReLUMaxPool2D",
    "Residual",
    "SiLU",
    "Sigmoid",
    "Tanh",
    "layer_from_config",
    "plan",
    "public_shape",
]
