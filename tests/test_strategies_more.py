"""Partial freezing, LP-FT's phase switch, the frozen fast path, and the named backbones."""

import numpy as np
import pytest
import torch
from torch import nn

from tests.helpers import TINY_MODEL, changed
from trainables.anatomy import head_module, params_of_first_blocks
from trainables.config import TrialConfig
from trainables.features import compute_features
from trainables.loop import evaluate, train_epoch
from trainables.models import Normalize, build_model
from trainables.strategies import STRATEGIES, get_strategy

CONFIG = dict(lr=0.5, batch_size=16, augment="flip", weight_decay=1e-4, lr_mult=0.5)


def run_epochs(model, plan, data, epochs, policy="flip", seed=0):
    optimizer = torch.optim.SGD(plan.param_groups, lr=0.5, momentum=0.9)
    images, labels = torch.from_numpy(data.train.images), torch.from_numpy(data.train.labels)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        plan.begin_epoch(model, epoch)
        train_epoch(model, optimizer, images, labels, batch_size=16, policy=policy,
                    normalize=Normalize((0.5,) * 3, (0.5,) * 3),
                    loss_fn=nn.CrossEntropyLoss(), device=torch.device("cpu"),
                    generator=generator)


def snapshot(model):
    copy = build_model(TINY_MODEL, 10)
    copy.load_state_dict(model.state_dict())
    return copy


@pytest.mark.parametrize(("strategy", "depth"), [("partial", 2), ("colorization", 1)])
def test_first_blocks_stay_frozen_and_later_ones_train(tiny_demo, strategy, depth):
    torch.manual_seed(0)
    model = build_model(TINY_MODEL, 10)
    plan = get_strategy(strategy).setup(model, TrialConfig(**CONFIG, freeze_depth=depth))
    frozen = {id(p) for p in params_of_first_blocks(model, depth)}
    frozen_names = {n for n, p in model.named_parameters() if id(p) in frozen}
    before = snapshot(model)
    run_epochs(model, plan, tiny_demo, 1)
    diff = changed(before, model)
    assert frozen_names and all(not diff[n] for n in frozen_names)
    trainable = [n for n, _ in model.named_parameters() if n not in frozen_names]
    assert all(diff[n] for n in trainable), [n for n in trainable if not diff[n]]
    # BatchNorm statistics: fixed in the frozen blocks, updating in the others
    frozen_modules = {n.rpartition(".")[0] for n in frozen_names}
    for key, moved in diff.items():
        if key.endswith("running_mean"):
            assert moved == (key.rpartition(".")[0] not in frozen_modules), key


def test_lp_ft_probes_then_fine_tunes_at_the_switch_epoch(tiny_demo):
    torch.manual_seed(0)
    model = build_model(TINY_MODEL, 10)
    plan = get_strategy("lp_ft").setup(model, TrialConfig(**CONFIG, probe_epochs=2))
    head = head_module(model)[0] + "."
    before = snapshot(model)
    run_epochs(model, plan, tiny_demo, 2)
    diff = changed(before, model)
    assert all(not moved for k, moved in diff.items() if not k.startswith(head))
    assert all(moved for k, moved in diff.items() if k.startswith(head))
    assert [plan.is_thawed(e) for e in range(4)] == [False, False, True, True]
    plan.begin_epoch(model, 2)
    assert all(p.requires_grad for p in model.parameters())
    after_probe = snapshot(model)
    optimizer = torch.optim.SGD(plan.param_groups, lr=0.5, momentum=0.9)
    images, labels = torch.from_numpy(tiny_demo.train.images), torch.from_numpy(
        tiny_demo.train.labels)
    train_epoch(model, optimizer, images, labels, batch_size=16, policy="none",
                normalize=Normalize((0.5,) * 3, (0.5,) * 3), loss_fn=nn.CrossEntropyLoss(),
                device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    diff = changed(after_probe, model)
    assert all(diff[n] for n, _ in model.named_parameters())


def test_frozen_fast_path_matches_the_full_forward(tiny_demo, monkeypatch):
    """Head on precomputed features == head on the frozen backbone's live output. Both paths
    run on the CPU, in fp32, wherever the test runs: it compares the paths to fp32 rounding,
    and a GPU would compute the features in bf16, which is not what it checks."""
    monkeypatch.setattr("trainables.features.pick_device", lambda: torch.device("cpu"))
    config = TrialConfig(lr=0.1, batch_size=16, augment="none", weight_decay=1e-4)
    torch.manual_seed(0)
    state = build_model(TINY_MODEL, 10).state_dict()
    backbone_state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    results = {}
    for path in ("slow", "fast"):
        torch.manual_seed(1)
        model = build_model(TINY_MODEL, 10, state=backbone_state)
        plan = get_strategy("frozen").setup(model, config)
        optimizer = torch.optim.SGD(plan.param_groups, lr=0.1, momentum=0.9)
        if path == "fast":
            feats = compute_features(TINY_MODEL, backbone_state, tiny_demo)
            net, norm = model.get_classifier(), nn.Identity()
            train_x, val_x = torch.from_numpy(feats.train), torch.from_numpy(feats.val)
        else:
            net, norm = model, Normalize((0.5,) * 3, (0.5,) * 3)  # test_resnet's data config
            train_x = torch.from_numpy(tiny_demo.train.images)
            val_x = torch.from_numpy(tiny_demo.val.images)
        for epoch in range(3):
            plan.begin_epoch(model, epoch)
            train_epoch(net, optimizer, train_x, torch.from_numpy(tiny_demo.train.labels),
                        batch_size=16, policy="none", normalize=norm,
                        loss_fn=nn.CrossEntropyLoss(), device=torch.device("cpu"),
                        generator=torch.Generator().manual_seed(epoch))
        val = evaluate(net, val_x, torch.from_numpy(tiny_demo.val.labels), normalize=norm,
                       device=torch.device("cpu"))
        results[path] = (val.accuracy, model.get_classifier().weight.detach().clone())
    assert results["fast"][0] == pytest.approx(results["slow"][0], abs=0.05)
    assert torch.allclose(results["fast"][1], results["slow"][1], atol=1e-4)


TRAIN_EVERYTHING = {"scratch", "unfrozen"}  # at freeze_depth=1 every other strategy freezes


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "vgg16", "efficientnet_b0",
                                      "convnext_tiny", "vit_tiny_patch16_224"])
def test_named_backbones_take_every_strategy(backbone):
    x = torch.from_numpy(np.zeros((2, 3, 32, 32), np.float32))
    for name, strategy in STRATEGIES.items():
        model = build_model(backbone, 7, head="mlp" if strategy.frozen_backbone else "linear")
        plan = strategy.setup(model, TrialConfig(**CONFIG, freeze_depth=1))
        plan.begin_epoch(model, 0)
        assert model(x).shape == (2, 7), name
        frozen = {id(p) for p in plan.frozen_params}
        assert frozen or name in TRAIN_EVERYTHING, f"{name} froze nothing on {backbone}"
        assert frozen.isdisjoint(id(p) for p in model.get_classifier().parameters()), name
        assert all(p.requires_grad == (id(p) not in frozen) for p in model.parameters()), name
        in_groups = {id(p) for group in plan.param_groups for p in group["params"]}
        assert in_groups == {id(p) for p in model.parameters() if id(p) not in frozen
                             or plan.thaw_epoch is not None}, name
