"""Which parameters each strategy trains, and what happens to BatchNorm statistics."""

import pytest
import torch
from torch import nn

from tests.helpers import TINY_MODEL, changed
from trainables.anatomy import head_module, head_parameter_names
from trainables.config import TrialConfig
from trainables.loop import train_epoch
from trainables.models import Normalize, build_model
from trainables.strategies import STRATEGIES, get_strategy, register_strategy


def train_one_epoch(strategy: str, data, head: str = "linear", **options
                    ) -> tuple[nn.Module, nn.Module]:
    """(model before, model after) one epoch of `strategy` at a large lr."""
    torch.manual_seed(0)
    config = TrialConfig(lr=0.5, batch_size=16, augment="flip", weight_decay=1e-4, lr_mult=0.5,
                         head=head, **options)
    model = build_model(TINY_MODEL, data.num_classes, head)
    before = build_model(TINY_MODEL, data.num_classes, head)
    before.load_state_dict(model.state_dict())
    plan = get_strategy(strategy).setup(model, config)
    optimizer = torch.optim.SGD(plan.param_groups, lr=config.lr, momentum=0.9)
    plan.begin_epoch(model, 0)
    train_epoch(model, optimizer, torch.from_numpy(data.train.images),
                torch.from_numpy(data.train.labels), batch_size=16, policy="flip",
                normalize=Normalize((0.5,) * 3, (0.5,) * 3),
                loss_fn=nn.CrossEntropyLoss(), device=torch.device("cpu"),
                generator=torch.Generator().manual_seed(0))
    return before, model


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_trains_what_its_plan_says_and_nothing_else(tiny_demo, strategy):
    """Whatever a strategy freezes stays put, BatchNorm statistics included; the rest moves."""
    before, after = train_one_epoch(strategy, tiny_demo, freeze_depth=1, probe_epochs=1)
    diff = changed(before, after)
    trainable = {n for n, p in after.named_parameters() if p.requires_grad}
    frozen = {n for n, p in after.named_parameters() if not p.requires_grad}
    assert head_parameter_names(after) <= trainable, "the new head always trains"
    assert all(diff[n] for n in trainable), [n for n in trainable if not diff[n]]
    assert not any(diff[n] for n in frozen), [n for n in frozen if diff[n]]
    frozen_owners = {n.rpartition(".")[0] for n in frozen}
    for key in (k for k in diff if k.endswith("running_mean")):
        assert diff[key] == (key.rpartition(".")[0] not in frozen_owners), key


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_frozen_trains_only_the_head(tiny_demo, head):
    before, after = train_one_epoch("frozen", tiny_demo, head)
    head_names = head_parameter_names(after)
    diff = changed(before, after)
    head_prefix = head_module(after)[0] + "."
    backbone = {k: c for k, c in diff.items() if not k.startswith(head_prefix)}
    assert backbone, "expected backbone tensors"
    assert not any(backbone.values()), [k for k, c in backbone.items() if c]
    running = [k for k in backbone if "running_" in k]
    assert running, "test_resnet has BatchNorm layers"
    assert all(diff[k] for k in head_names), "every head parameter must train"
    assert {n for n, p in after.named_parameters() if p.requires_grad} == head_names


@pytest.mark.parametrize("strategy", ["unfrozen", "scratch", "colorization"])
def test_fine_tuning_strategies_train_everything(tiny_demo, strategy):
    before, after = train_one_epoch(strategy, tiny_demo)
    params = {n for n, _ in after.named_parameters()}
    diff = changed(before, after)
    assert all(diff[n] for n in params), [n for n in params if not diff[n]]
    running = [k for k in diff if k.endswith("running_mean")]
    assert running and all(diff[k] for k in running), "BatchNorm statistics must update"


def test_unfrozen_backbone_lr_is_scaled():
    config = TrialConfig(lr=0.1, batch_size=8, augment="none", weight_decay=0.01, lr_mult=0.25)
    model = build_model(TINY_MODEL, 3)
    plan = get_strategy("unfrozen").setup(model, config)
    head = {id(p) for n, p in model.named_parameters() if n in head_parameter_names(model)}
    for group in plan.param_groups:
        is_head = all(id(p) in head for p in group["params"])
        assert group["lr"] == pytest.approx(0.1 if is_head else 0.025)
        # no weight decay on norms and biases
        assert group["weight_decay"] == (0.0 if group["params"][0].ndim <= 1 else 0.01)


def test_registry_rejects_duplicates_and_unknown_names():
    with pytest.raises(ValueError, match="already registered"):
        register_strategy("frozen", pretrained="imagenet")(lambda model, config: None)
    with pytest.raises(KeyError, match="registered"):
        get_strategy("nope")
    assert {"scratch", "frozen", "unfrozen", "colorization"} <= set(STRATEGIES)
