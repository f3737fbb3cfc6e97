"""The model a baseline detector inspects: trained here on the inspected set.

Detectors that look at a model's features (SS, AC, SPECTRE, SCAn, ...) share
one params sub-model, :class:`BaseModelParams`, and one function,
:func:`fit_base_model`, so a job can reuse a base model across detectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field

from detection.models import Classifier, build_model, prepare_model
from detection.registry import Params
from detection.training import (
    OptimConfig,
    TensorData,
    TrainConfig,
    resolve_device,
    seed_everything,
    to_tensor_data,
    train_classifier,
)
from detection.types import DetectionInput, RunContext

Arch = Literal["auto", "resnet18", "small_cnn", "convnet", "mlp"]


class BaseModelParams(Params):
    """How to train the inspected model when the user supplies none."""

    arch: Arch = Field("auto", description="auto: small_cnn for images, mlp for features.")
    width: int | None = Field(None, ge=4, le=512, description="Model width; None = default.")
    epochs: float = Field(12.0, gt=0, le=500)
    batch_size: int = Field(128, ge=8, le=8192)
    lr: float = Field(0.05, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, le=0.1)
    augment: bool = True

    def train_config(self) -> TrainConfig:
        optim = OptimConfig(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        return TrainConfig(self.epochs, self.batch_size, optim, self.augment)


def pick_arch(arch: Arch, inp: DetectionInput) -> str:
    if arch != "auto":
        return arch
    return "small_cnn" if inp.is_image else "mlp"


@dataclass
class FittedModel:
    """A trained model plus the device-resident data it was trained on."""

    model: Classifier
    data: TensorData
    clean: TensorData | None
    device: torch.device


def load_data(inp: DetectionInput, device: torch.device) -> tuple[TensorData, TensorData | None]:
    """Move the inspected set and the clean reserve (same normalisation) to ``device``."""
    data = to_tensor_data(inp.x, inp.labels, device)
    clean = None
    if inp.clean_x is not None and inp.clean_labels is not None:
        clean = to_tensor_data(inp.clean_x, inp.clean_labels, device, stats_from=inp.x)
    return data, clean


def fit_base_model(
    inp: DetectionInput, params: BaseModelParams, ctx: RunContext, device: str | None = None
) -> FittedModel:
    """Train ``params.arch`` on the whole inspected set (given labels)."""
    dev = resolve_device(device or ctx.device)
    seed_everything(ctx.seed)
    data, clean = load_data(inp, dev)
    arch = pick_arch(params.arch, inp)
    model = build_model(arch, data.input_shape, inp.n_classes, params.width)
    model = prepare_model(model, dev, data.is_image)
    train_classifier(model, data, params.train_config(), ctx, stage="base_model")
    return FittedModel(model, data, clean, dev)
