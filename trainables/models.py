"""timm models by name: backbone weights from a stage's state dict, a new head for the classes.

Backbone state dicts are always stored in timm's `num_classes=0` form (classifier removed), so one
checkpoint serves any target dataset. The head is found through timm's `get_classifier`, never by
layer name, so any timm architecture works.
"""

from __future__ import annotations

import timm
import torch
from torch import nn


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


def head_module(model: nn.Module) -> tuple[str, nn.Module]:
    """The dotted name and module of the model's classifier, as timm reports it."""
    classifier = model.get_classifier()
    for name, module in model.named_modules():
        if module is classifier:
            return name, module
    raise ValueError(f"{type(model).__name__}: get_classifier() is not a submodule")


def mlp_head(in_features: int, num_classes: int, hidden: int = 256, dropout: float = 0.0,
             batch_norm: bool = False) -> nn.Sequential:
    # Optional BatchNorm and dropout between the two layers: the VGG16 study's models 1 to 3.
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


def head_parameter_names(model: nn.Module) -> set[str]:
    name, module = head_module(model)
    return {f"{name}.{p}" for p, _ in module.named_parameters()}


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone parameters, head parameters)."""
    head = head_parameter_names(model)
    backbone = [p for n, p in model.named_parameters() if n not in head]
    return backbone, [p for n, p in model.named_parameters() if n in head]


def build_model(backbone: str, num_classes: int, head: str = "linear",
                state: dict[str, torch.Tensor] | None = None, **head_options) -> nn.Module:
    return attach_head(create_backbone(backbone, state), num_classes, head, **head_options)


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights without its classifier, in `num_classes=0` form, on the CPU."""
    head = {n for n in model.state_dict() if n.startswith(head_module(model)[0] + ".")}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in head}


def stage_modules(model: nn.Module) -> list[str]:
    """Names of the feature stages, shallow to deep, as listed by timm's feature_info."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(f"{type(model).__name__} has no feature_info: cannot count its stages")
    return [entry["module"] for entry in info]


def num_stages(backbone: str) -> int:
    return len(stage_modules(create_backbone(backbone)))


def params_of_first_stages(model: nn.Module, depth: int) -> list[nn.Parameter]:
    """The parameters of the first `depth` feature stages and of everything before them (stem,
    embeddings): what "the first `depth` stages stay frozen" freezes. Depth 0 freezes nothing."""
    stages = stage_modules(model)
    if not 0 <= depth <= len(stages):
        raise ValueError(f"freeze depth {depth}: {type(model).__name__} has {len(stages)} stages")
    if depth == 0:
        return []
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    last = stages[depth - 1]
    frozen = []
    for name, param in model.named_parameters():
        owner = name.rpartition(".")[0]
        if order[owner] <= order[last] or owner.startswith(last + "."):
            frozen.append(param)
    return frozen
