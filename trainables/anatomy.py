"""Where a timm model's head and blocks are, read from the model itself.

The head is what timm's `get_classifier` returns, never a layer name. The blocks are the
backbone's feature stages as timm's `feature_info` lists them, shallow to deep (ResNet's
`layer1`..`layer4`, ViT's `blocks.N`): what a freeze depth counts. These functions only walk an
`nn.Module`, so importing this module loads no torch, and the strategy registry built on it is
cheap to import for the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def head_module(model: nn.Module) -> tuple[str, nn.Module]:
    """The dotted name and module of the model's classifier, as timm reports it."""
    classifier = model.get_classifier()
    for name, module in model.named_modules():
        if module is classifier:
            return name, module
    raise ValueError(f"{type(model).__name__}: get_classifier() is not a submodule")


def head_parameter_names(model: nn.Module) -> set[str]:
    name, module = head_module(model)
    return {f"{name}.{p}" for p, _ in module.named_parameters()}


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone parameters, head parameters)."""
    head = head_parameter_names(model)
    backbone = [p for n, p in model.named_parameters() if n not in head]
    return backbone, [p for n, p in model.named_parameters() if n in head]


def modules_outside_head(model: nn.Module) -> tuple[nn.Module, ...]:
    """The largest submodules that neither are, contain, nor sit inside the classifier."""
    head, _ = head_module(model)

    def outside(module: nn.Module, prefix: str) -> list[nn.Module]:
        found = []
        for name, child in module.named_children():
            if prefix + name == head:
                continue
            if head.startswith(prefix + name + "."):
                found += outside(child, prefix + name + ".")
            else:
                found.append(child)
        return found

    return tuple(outside(model, ""))


def block_modules(model: nn.Module) -> list[str]:
    """Names of the backbone's blocks, shallow to deep, as listed by timm's feature_info."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(f"{type(model).__name__} has no feature_info: cannot count its blocks")
    return [entry["module"] for entry in info]


def params_of_first_blocks(model: nn.Module, depth: int) -> list[nn.Parameter]:
    """The parameters of the first `depth` blocks and of everything before them (stem,
    embeddings): what "the first `depth` blocks stay frozen" freezes. Depth 0 freezes nothing."""
    blocks = block_modules(model)
    if not 0 <= depth <= len(blocks):
        raise ValueError(f"freeze depth {depth}: {type(model).__name__} has {len(blocks)} blocks")
    if depth == 0:
        return []
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    last = blocks[depth - 1]
    frozen = []
    for name, param in model.named_parameters():
        owner = name.rpartition(".")[0]
        if order[owner] <= order[last] or owner.startswith(last + "."):
            frozen.append(param)
    return frozen


def modules_of_first_blocks(model: nn.Module, depth: int) -> tuple[nn.Module, ...]:
    """The modules of the first `depth` blocks and before them, without the containers that
    also hold later blocks (ViT's `blocks`, say): the ones to keep in eval mode."""
    if depth == 0:
        return ()
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    last = block_modules(model)[depth - 1]
    later = {id(p) for p in model.parameters()} - {
        id(p) for p in params_of_first_blocks(model, depth)}
    return tuple(
        m for name, m in model.named_modules()
        if name and (order[name] <= order[last] or name.startswith(last + "."))
        and not any(id(p) in later for p in m.parameters())
    )
