"""The registry of transfer strategies: which weights a model starts from, and what trains.

A strategy is one registered function `(model, hp) -> Plan` plus one space in `spaces/`;
the registered name is the string used in the CLI, the results and the exported configs.
Importing this module loads no torch (the functions only walk the model they are given), so the
CLI can list the strategies at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from trainables.anatomy import (
    block_modules,
    modules_of_first_blocks,
    modules_outside_head,
    params_of_first_blocks,
    split_parameters,
)
from trainables.config import TrialConfig

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Plan:
    """What trains: optimizer parameter groups, and what stays frozen until `thaw_epoch`.

    Frozen parameters get no gradients; frozen modules stay in eval mode, because their
    BatchNorm running statistics and dropout belong to the pretrained backbone and
    model.train() would otherwise start updating them. With `thaw_epoch` (LP-FT), both start
    training at that epoch; the optimizer holds their groups from the start.
    """

    param_groups: list[dict]
    frozen_params: tuple[nn.Parameter, ...] = ()
    frozen_modules: tuple[nn.Module, ...] = ()
    thaw_epoch: int | None = None

    def is_thawed(self, epoch: int) -> bool:
        return self.thaw_epoch is not None and epoch >= self.thaw_epoch

    def begin_epoch(self, model: nn.Module, epoch: int) -> None:
        thawed = self.is_thawed(epoch)
        for p in self.frozen_params:
            p.requires_grad_(thawed)
        model.train()
        if not thawed:
            for module in self.frozen_modules:
                module.eval()


@dataclass(frozen=True)
class Strategy:
    name: str
    pretrained: str  # the pretraining stage its weights come from by default
    setup: Callable[[nn.Module, TrialConfig], Plan]
    frozen_backbone: bool = False  # True: features of the backbone never change (fast path)


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(name: str, pretrained: str, frozen_backbone: bool = False):
    """Register `fn(model, hp) -> Plan` as strategy `name`, starting from stage `pretrained`."""

    def decorator(fn: Callable[[nn.Module, TrialConfig], Plan]):
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} is already registered")
        STRATEGIES[name] = Strategy(name, pretrained, fn, frozen_backbone)
        return fn

    return decorator


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise KeyError(f"unknown strategy {name!r}; registered: {sorted(STRATEGIES)}")
    return STRATEGIES[name]


def param_groups(params: list[nn.Parameter], lr: float, weight_decay: float) -> list[dict]:
    """One lr for `params`; no weight decay on norms and biases (1-D tensors)."""
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "lr": lr, "weight_decay": weight_decay},
              {"params": no_decay, "lr": lr, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def backbone_and_head(model: nn.Module, hp: TrialConfig,
                      frozen: list[nn.Parameter] = ()) -> list[dict]:
    """Discriminative learning rates: backbone lr = lr * lr_mult, head lr = lr."""
    backbone, head = split_parameters(model)
    skip = {id(p) for p in frozen}
    trainable = [p for p in backbone if id(p) not in skip]
    return (param_groups(trainable, hp.lr * hp.lr_mult, hp.weight_decay)
            + param_groups(head, hp.lr, hp.weight_decay))


def first_blocks_frozen(model: nn.Module, hp: TrialConfig) -> Plan:
    """The first `freeze_depth` blocks frozen, the rest fine-tuned with lr * lr_mult."""
    depth = min(hp.freeze_depth, len(block_modules(model)))
    frozen = params_of_first_blocks(model, depth)
    return Plan(backbone_and_head(model, hp, frozen), tuple(frozen),
                modules_of_first_blocks(model, depth))


@register_strategy("scratch", pretrained="none")
def scratch(model: nn.Module, hp: TrialConfig) -> Plan:
    return Plan(param_groups(list(model.parameters()), hp.lr, hp.weight_decay))


@register_strategy("frozen", pretrained="imagenet", frozen_backbone=True)
def frozen(model: nn.Module, hp: TrialConfig) -> Plan:
    backbone, head = split_parameters(model)
    return Plan(param_groups(head, hp.lr, hp.weight_decay), tuple(backbone),
                modules_outside_head(model))


@register_strategy("unfrozen", pretrained="imagenet")
def unfrozen(model: nn.Module, hp: TrialConfig) -> Plan:
    return Plan(backbone_and_head(model, hp))


@register_strategy("colorization", pretrained="colorization")
def colorization(model: nn.Module, hp: TrialConfig) -> Plan:
    return first_blocks_frozen(model, hp)


@register_strategy("partial", pretrained="imagenet")
def partial(model: nn.Module, hp: TrialConfig) -> Plan:
    return first_blocks_frozen(model, hp)


@register_strategy("lp_ft", pretrained="imagenet")
def lp_ft(model: nn.Module, hp: TrialConfig) -> Plan:
    """Linear probe for `probe_epochs`, then full fine-tuning (Kumar et al., ICLR 2022)."""
    backbone, _ = split_parameters(model)
    return Plan(backbone_and_head(model, hp), tuple(backbone),
                modules_outside_head(model), thaw_epoch=hp.probe_epochs)
