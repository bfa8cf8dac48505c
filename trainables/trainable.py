"""The Ray Tune function trainable: one trial of one transfer strategy.

Reads top to bottom: data, model, strategy, optimizer, then per epoch train, evaluate, report
metrics and a checkpoint. Run settings, data and backbone weights arrive through
`tune.with_parameters` (one copy in the object store, shared by all trials on a node); only the
sampled hyperparameters arrive in `config`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ray
import timm
import torch
from ray import tune
from torch import nn

from trainables.augment import Normalize
from trainables.config import RunSettings, TrialConfig
from trainables.data import Dataset
from trainables.loop import evaluate, pick_device, to_device, train_epoch
from trainables.models import build_model
from trainables.strategies import get_strategy

CHECKPOINT_FILE = "checkpoint.pt"


def train_transfer(config: dict, *, settings: RunSettings, data: Dataset,
                   weights: dict[str, torch.Tensor] | None) -> None:
    # data and weights are put in the object store once per experiment and arrive as references
    data, weights = (ray.get(x) if isinstance(x, ray.ObjectRef) else x for x in (data, weights))
    hp = TrialConfig.from_dict(config)
    torch.manual_seed(settings.seed)
    torch.set_num_threads(max(1, int(settings.cpus_per_trial)))
    device = pick_device()

    # data: uint8 tensors, on the device once; batches are sliced, augmented and normalised there
    train_x, train_y = to_device(data.train.images, device), to_device(data.train.labels, device)
    val_x, val_y = to_device(data.val.images, device), to_device(data.val.labels, device)

    # model and strategy
    model = build_model(settings.backbone, data.num_classes, hp.head, weights)
    plan = get_strategy(settings.strategy).setup(model, hp)
    model = model.to(device, memory_format=torch.channels_last)
    data_cfg = timm.data.resolve_data_config({}, model=model)
    normalize = Normalize(data_cfg["mean"], data_cfg["std"]).to(device)

    # optimizer: SGD with Nesterov momentum, cosine decay over the full epoch budget per epoch
    optimizer = torch.optim.SGD(plan.param_groups, lr=hp.lr, momentum=0.9, nesterov=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.max_epochs)
    generator = torch.Generator().manual_seed(settings.seed)
    start_epoch = restore(model, optimizer, scheduler, generator)

    for epoch in range(start_epoch, settings.max_epochs):
        train = train_epoch(
            model, optimizer, train_x, train_y, batch_size=hp.batch_size, policy=hp.augment,
            magnitude=hp.magnitude, normalize=normalize, train_mode=plan.train_mode,
            loss_fn=nn.CrossEntropyLoss(), device=device, generator=generator)
        scheduler.step()
        val = evaluate(model, val_x, val_y, normalize=normalize, device=device)
        metrics = {
            "val_acc": val.accuracy, "val_loss": val.loss, "train_loss": train.loss,
            "train_acc": train.accuracy, "images_per_s": train.images_per_s, "epoch": epoch + 1,
        }
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if (epoch + 1) % settings.checkpoint_every == 0 or epoch + 1 == settings.max_epochs:
                save(Path(tmp), model, optimizer, scheduler, generator, epoch + 1)
                checkpoint = tune.Checkpoint.from_directory(tmp)
            tune.report(metrics, checkpoint=checkpoint)


def save(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
         scheduler: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator,
         epoch: int) -> None:
    torch.save({
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "generator": generator.get_state(), "epoch": epoch,
    }, directory / CHECKPOINT_FILE)


def restore(model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator) -> int:
    """Resume from Tune's checkpoint when the trial restarts; returns the epoch to start at."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu",
                           weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    return int(state["epoch"])
