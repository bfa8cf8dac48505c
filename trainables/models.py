"""timm models by name: backbone weights from a pretraining stage's state dict, a new head for
the classes, and the input normaliser from the model's data config.

Backbone state dicts are always stored in timm's `num_classes=0` form (classifier removed), so one
checkpoint serves any target dataset. The head is found through timm's `get_classifier`, never by
layer name, so any timm architecture works.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from trainables.anatomy import block_modules, head_module


def model_kwargs(backbone: str) -> dict:
    """Models with a fixed input size (ViTs) take any size by resampling position embeddings
    on the fly, so 32 px demo images and 224 px ImageNet weights both fit."""
    fixed = timm.models.get_pretrained_cfg_value(backbone, "fixed_input_size")
    return {"dynamic_img_size": True} if fixed else {}


def create_backbone(backbone: str, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A timm model without classifier (`num_classes=0`), optionally loaded from `state`."""
    model = timm.create_model(backbone, pretrained=False, num_classes=0, **model_kwargs(backbone))
    if state is not None:
        load_backbone_state(model, state)
    return model


def load_backbone_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strict load with a readable error listing the first mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
              for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise ValueError(
            "backbone weights do not match the model: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}"
        )
    model.load_state_dict(state)


def mlp_head(in_features: int, num_classes: int, hidden: int = 256, dropout: float = 0.0,
             batch_norm: bool = False) -> nn.Sequential:
    # Optional BatchNorm and dropout between the two layers: the usual ways to regularise a
    # dense head trained on few images over a frozen convolutional backbone.
    layers = [nn.Linear(in_features, hidden)]
    layers += [nn.BatchNorm1d(hidden)] if batch_norm else []
    layers += [nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes)]
    return nn.Sequential(*layers)


def attach_head(model: nn.Module, num_classes: int, head: str = "linear", hidden: int = 256,
                dropout: float = 0.0, batch_norm: bool = False) -> nn.Module:
    """Give the model a freshly initialised head for `num_classes` (linear or MLP)."""
    model.reset_classifier(num_classes)
    if head == "mlp":
        name, linear = head_module(model)
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, mlp_head(linear.in_features, num_classes, hidden, dropout,
                                       batch_norm))
    return model


def build_model(backbone: str, num_classes: int, head: str = "linear",
                state: dict[str, torch.Tensor] | None = None, **head_options) -> nn.Module:
    return attach_head(create_backbone(backbone, state), num_classes, head, **head_options)


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights without its classifier, in `num_classes=0` form, on the CPU."""
    head = {n for n in model.state_dict() if n.startswith(head_module(model)[0] + ".")}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in head}


def num_blocks(backbone: str) -> int:
    return len(block_modules(create_backbone(backbone)))


class Normalize(nn.Module):
    """uint8 -> float, normalised with the backbone's pretrained mean and std."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


def normalizer(model: nn.Module) -> Normalize:
    """The input normaliser of a timm model: mean and std from its timm data config."""
    cfg = timm.data.resolve_data_config({}, model=model)
    return Normalize(tuple(cfg["mean"]), tuple(cfg["std"]))



def shape_check(backbone: str, image_size: int) -> tuple[int, str | None, int | None]:
    """(parameter count, why `image_size` px is too small for the backbone or None, the
    smallest multiple of 16 up to 512 px it takes).

    The model is built on the meta device and run on meta batches: shapes only, no memory and
    no arithmetic, so every layer's size rule is checked in about a second.
    """
    with torch.device("meta"):
        model = timm.create_model(backbone, pretrained=False, num_classes=2,
                                  **model_kwargs(backbone)).eval()
    params = sum(p.numel() for p in model.parameters())
    problem = _too_small(model, image_size)
    if problem is None:
        return params, None, image_size
    larger = (s for s in range(image_size + 16 - image_size % 16, 513, 16)
              if _too_small(model, s) is None)
    return params, problem, next(larger, None)


def _too_small(model: nn.Module, size: int) -> str | None:
    try:
        model(torch.empty(2, 3, size, size, device="meta"))
    except (RuntimeError, AssertionError, ValueError) as error:
        return str(error).strip().splitlines()[0]
    return None
