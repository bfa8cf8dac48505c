"""The registry of transfer strategies: which weights a model starts from, and what trains.

A strategy is one registered function `(model, config) -> Plan` plus one space in `spaces/`;
the registered name is the string used in the CLI, the results and the exported configs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from trainables.config import TrialConfig
from trainables.models import head_module, split_parameters


@dataclass(frozen=True)
class Plan:
    """What trains: optimizer parameter groups, and the modules held frozen in eval mode."""

    param_groups: list[dict]
    frozen: tuple[nn.Module, ...] = field(default_factory=tuple)

    def train_mode(self, model: nn.Module) -> None:
        # Frozen modules stay in eval mode: their BatchNorm running statistics and dropout are
        # part of the pretrained backbone, and model.train() would otherwise start updating them.
        model.train()
        for module in self.frozen:
            module.eval()


@dataclass(frozen=True)
class Strategy:
    name: str
    pretrained: str  # the pretraining stage its weights come from by default
    setup: Callable[[nn.Module, TrialConfig], Plan]


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(name: str, pretrained: str):
    """Register `fn(model, config) -> Plan` as strategy `name`, starting from stage `pretrained`."""

    def decorator(fn: Callable[[nn.Module, TrialConfig], Plan]):
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} is already registered")
        STRATEGIES[name] = Strategy(name, pretrained, fn)
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


def fine_tune_plan(model: nn.Module, config: TrialConfig) -> Plan:
    """Everything trains; the backbone with lr * lr_mult (discriminative learning rates)."""
    backbone, head = split_parameters(model)
    return Plan(param_groups(backbone, config.lr * config.lr_mult, config.weight_decay)
                + param_groups(head, config.lr, config.weight_decay))


@register_strategy("scratch", pretrained="none")
def scratch(model: nn.Module, config: TrialConfig) -> Plan:
    return Plan(param_groups(list(model.parameters()), config.lr, config.weight_decay))


@register_strategy("frozen", pretrained="imagenet")
def frozen(model: nn.Module, config: TrialConfig) -> Plan:
    backbone, head = split_parameters(model)
    for p in backbone:
        p.requires_grad_(False)
    return Plan(param_groups(head, config.lr, config.weight_decay), modules_outside_head(model))


@register_strategy("unfrozen", pretrained="imagenet")
def unfrozen(model: nn.Module, config: TrialConfig) -> Plan:
    return fine_tune_plan(model, config)


@register_strategy("colorization", pretrained="colorization")
def colorization(model: nn.Module, config: TrialConfig) -> Plan:
    return fine_tune_plan(model, config)
