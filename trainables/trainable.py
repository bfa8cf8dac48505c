"""The Ray Tune function trainable: one trial of one transfer strategy.

Reads top to bottom: data, model, strategy, optimizer, then per epoch train, evaluate, report
metrics and a checkpoint. Run settings, data, backbone weights and (for frozen backbones)
precomputed features arrive through `tune.with_parameters` as object-store references, one copy
shared by all trials on a node; only the sampled hyperparameters arrive in `config`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ray
import torch
from ray import tune
from timm.scheduler import CosineLRScheduler
from torch import nn

from trainables.config import RunSettings, TrialConfig
from trainables.data.dataset import Dataset
from trainables.features import Features
from trainables.loop import evaluate, pick_device, steps_per_epoch, to_device, train_epoch
from trainables.models import build_model, normalizer
from trainables.strategies import get_strategy

CHECKPOINT_FILE = "checkpoint.pt"


def train_transfer(config: dict, *, settings: RunSettings, data: Dataset,
                   weights: dict[str, torch.Tensor] | None, features: Features | None = None
                   ) -> None:
    data, weights, features = (ray.get(x) if isinstance(x, ray.ObjectRef) else x
                               for x in (data, weights, features))
    hp = TrialConfig.from_dict(config)
    torch.manual_seed(settings.seed)
    torch.set_num_threads(max(1, int(settings.cpus_per_trial)))
    device = pick_device()

    # model and strategy
    model = build_model(settings.backbone, data.num_classes, hp.head, weights,
                        hidden=hp.head_hidden, dropout=hp.head_dropout, batch_norm=hp.head_bn)
    strategy = get_strategy(settings.strategy)
    plan = strategy.setup(model, hp)
    model = model.to(device, memory_format=torch.channels_last)

    # data: uint8 images on the device once, sliced, augmented and normalised there per batch;
    # a frozen backbone without augmentation sees the same images every epoch, so its head
    # trains on the backbone's precomputed features instead (identical outputs, no backbone).
    fast = features is not None and strategy.frozen_backbone and hp.augment == "none"
    if fast:
        net, normalize = model.get_classifier(), nn.Identity()
        train_x, val_x = to_device(features.train, device), to_device(features.val, device)
    else:
        net, normalize = model, normalizer(model).to(device)
        train_x, val_x = to_device(data.train.images, device), to_device(data.val.images, device)
    train_y, val_y = to_device(data.train.labels, device), to_device(data.val.labels, device)

    # optimizer, and a linear warmup (a tenth of the run) into a cosine decay, per step
    optimizer = make_optimizer(hp.optimizer, plan.param_groups, hp.lr)
    steps = steps_per_epoch(len(train_y), hp.batch_size)
    total = steps * settings.max_epochs
    scheduler = CosineLRScheduler(optimizer, t_initial=total, warmup_t=max(1, total // 10),
                                  warmup_lr_init=0.0, t_in_epochs=False)
    generator = torch.Generator().manual_seed(settings.seed)
    start_epoch = restore(model, optimizer, generator)
    scheduler.step_update(start_epoch * steps)  # the lr of the first step, also after a resume

    loss_fn = nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)
    for epoch in range(start_epoch, settings.max_epochs):
        plan.begin_epoch(model, epoch)  # train mode, but frozen blocks keep BatchNorm fixed
        train = train_epoch(
            net, optimizer, train_x, train_y, batch_size=hp.batch_size, policy=hp.augment,
            magnitude=hp.magnitude, normalize=normalize, loss_fn=loss_fn, device=device,
            generator=generator, scheduler=scheduler, first_update=epoch * steps)
        val = evaluate(net, val_x, val_y, normalize=normalize, device=device)
        metrics = {
            "val_acc": val.accuracy, "val_loss": val.loss, "train_loss": train.loss,
            "train_acc": train.accuracy, "images_per_s": train.images_per_s, "epoch": epoch + 1,
            "lr": optimizer.param_groups[-1]["lr"], "fast_path": fast,
        }
        with tempfile.TemporaryDirectory() as tmp:
            save(Path(tmp), model, optimizer, generator, epoch + 1)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def make_optimizer(name: str, groups: list[dict], lr: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)


def save(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
         generator: torch.Generator, epoch: int) -> None:
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(), "epoch": epoch},
               directory / CHECKPOINT_FILE)


def restore(model: nn.Module, optimizer: torch.optim.Optimizer,
            generator: torch.Generator) -> int:
    """Resume from Tune's checkpoint when the trial restarts; returns the epoch to start at."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu",
                           weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    return int(state["epoch"])
