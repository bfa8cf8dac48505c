"""One trial of one transfer strategy: `fit` trains it, `train_transfer` runs it under Ray Tune.

`fit` reads top to bottom: data, model, strategy, optimizer, then per epoch train, evaluate and
report. The search calls it through `train_transfer`, which adds Tune's checkpoints (written and
reported on a second thread while the next epoch trains, trainables/reporting.py); the final
evaluation (search/evaluate.py) calls it directly, on other splits and seeds. Run settings, data,
backbone weights and (for frozen backbones) precomputed features arrive through
`tune.with_parameters` as object-store references, one copy shared by all trials on a node; only
the sampled hyperparameters arrive in `config`.

"Best" means one thing everywhere: the epoch with the highest val_acc (the latest such epoch on
a tie, as Tune's checkpoint manager keeps it). Each report carries the running `best_val_acc` and
`best_epoch`, so the last report of a trial, which Optuna records, holds the trial's best.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn

from store.tune_storage import is_local
from trainables import stopping
from trainables.averaging import (
    after_steps,
    checkpoint_weights,
    load_weights,
    make_ema,
    mixing,
)
from trainables.compiled import compile_net
from trainables.config import RunSettings, TrialConfig
from trainables.data.dataset import Dataset, Split
from trainables.device import grad_scaler, hold_to_share, pick_device, release_gpu_memory
from trainables.failures import TrialFailure, check_finite, memory_guard
from trainables.features import Features
from trainables.injected_faults import inject_epoch_fault, inject_fault
from trainables.loop import EpochStats, evaluate, steps_per_epoch, train_epoch
from trainables.memory import release_memory
from trainables.models import build_model
from trainables.placement import place_data, resident_budget
from trainables.reporting import BackgroundReports
from trainables.strategies import get_strategy

CHECKPOINT_FILE = "checkpoint.pt"
# (metrics of the epoch, a function returning the state to checkpoint, or None: no checkpoint)
Report = Callable[[dict, Callable[[], dict] | None], None]


@dataclass(frozen=True)
class ByBackbone:
    """A trial input per backbone (stage weights, or frozen features), each an object-store
    reference or None: a search over several backbones (--backbone A,B) hands every trial all
    of them, and the trial takes its own config's."""

    refs: dict[str, Any]


def train_transfer(config: dict, *, settings: RunSettings, data: Dataset,
                   weights: dict[str, torch.Tensor] | ByBackbone | None,
                   features: Features | ByBackbone | None = None) -> None:
    """The Ray Tune function trainable: `fit` on train/val, a checkpoint every epoch."""
    hp = TrialConfig.from_dict(config)
    backbone = settings.for_trial(hp).backbone
    weights, features = (x.refs[backbone] if isinstance(x, ByBackbone) else x
                         for x in (weights, features))
    data, weights, features = (ray.get(x) if isinstance(x, ray.ObjectRef) else x
                               for x in (data, weights, features))

    # Tune reuses this actor for the next trial once the stopped trial's thread has ended,
    # which it does at its next step: wait for a slow step (a large model on a CPU) rather
    # than the default 2 s, after which Tune gives up on the actor and starts a process
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", str(int(stopping.STOP_WAIT_S)))
    stopping.check()  # stopped while its data came from the object store: end here
    reports = BackgroundReports(save_and_report)

    def between_steps() -> None:
        stopping.check()  # Tune stopped the trial: end here, within one step
        reports.poll()  # what the last report raised (a stop, a full disk)

    def report(metrics: dict, state: Callable[[], dict] | None) -> None:
        inject_fault(settings.strategy, metrics["epoch"])  # only when a test asks for one
        # which node trained this epoch (Tune adds its IP; several nodes may share one machine)
        metrics = {**metrics, "node_id": ray.get_runtime_context().get_node_id()}
        if state is None:  # a failed trial's last report: nothing worth resuming from
            reports.wait()
            tune.report(metrics)
            return
        reports.submit(metrics, state())  # saved and reported while the next epoch trains

    # a reused actor: what its earlier trials freed goes back to the OS, however they ended
    # (a trial the scheduler stops ends between two steps, its model still alive), so its RSS
    # does not climb trial after trial (trainables/memory.py), and to the GPU, for the next
    # trial here or a neighbour on the same GPU
    release_memory()
    release_gpu_memory()
    try:
        fit(settings, hp, data.train, data.val, weights, features,
            num_classes=data.num_classes, report=report, resume=tune_checkpoint(),
            between_steps=between_steps)
        reports.wait()  # the last epoch's report
    finally:
        reports.close()
        release_memory()
        release_gpu_memory()


# Ray's wrap_function puts these classes before its FunctionTrainable: the trial's thread is
# joined when Tune stops the trial, before the actor exits or takes the next trial
train_transfer.__mixins__ = (stopping.JoinedOnStop,)


def save_and_report(metrics: dict, state: dict) -> None:
    """One epoch's checkpoint to Tune: Tune copies the directory into the trial's storage."""
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state, Path(tmp) / CHECKPOINT_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def fit(settings: RunSettings, hp: TrialConfig, train: Split, val: Split | None,
        weights: dict[str, torch.Tensor] | None, features: Features | None = None, *,
        num_classes: int, epochs: int | None = None, report: Report | None = None,
        resume: dict | None = None, between_steps: Callable[[], None] | None = None
        ) -> nn.Module:
    """Train one config; returns the model after `epochs` (default: settings.max_epochs).

    The lr schedule always spans settings.max_epochs, so stopping after `epochs` reproduces the
    model a trial had at that epoch. Without `val`, epochs report no validation metrics.
    """
    settings = settings.for_trial(hp)  # the backbone the config names, if it names one
    torch.manual_seed(settings.seed)
    np.random.seed(settings.seed)  # timm's Mixup draws its mixing ratios from numpy's global
    torch.set_num_threads(max(1, int(settings.cpus_per_trial)))
    device = pick_device()
    hold_to_share(device, settings.gpus_per_trial)  # packed trials: each within its share
    epochs = settings.max_epochs if epochs is None else epochs
    # model, strategy, and the data on the device (the head alone on cached features when the
    # backbone is frozen and nothing augments)
    strategy = get_strategy(settings.strategy)
    model = build_model(settings.backbone, num_classes, hp.head, weights,
                        hidden=hp.head_hidden, dropout=hp.head_dropout, batch_norm=hp.head_bn)
    plan = strategy.setup(model, hp)  # before the move: its parameter groups are the model's
    model = model.to(device, memory_format=torch.channels_last)
    ema = make_ema(model, hp)  # evaluated, kept and returned in the raw weights' place
    fast = (features is not None and strategy.frozen_backbone and hp.augment == "none"
            and hp.mix == "none")
    net, normalize, (train_x, train_y), (val_x, val_y), resident = place_data(
        model, (features.train, features.val) if fast else None, train, val, device,
        resident_budget(device, settings.gpus_per_trial))

    optimizer = make_optimizer(hp.optimizer, plan.param_groups, hp.lr)
    steps = steps_per_epoch(len(train_y), hp.batch_size)
    scheduler = lr_schedule(optimizer, steps * settings.max_epochs, hp.warmup)
    generator = torch.Generator().manual_seed(settings.seed)
    best = {"best_val_acc": 0.0, "best_epoch": 0}
    # the checkpoint may be another trial's (PBT's exploit): it brings the weights and the
    # optimizer's state, this config its hyperparameters
    start_epoch = restore(resume, model, ema, optimizer, generator, best) if resume else 0
    scheduler.step_update(start_epoch * steps)  # the lr of the first step, also after a resume
    plan.begin_epoch(model, start_epoch)  # the modes the first epoch trains (and compiles) in
    net, compile_s = compile_net(net, train_x, val_x, batch_size=hp.batch_size,
                                 normalize=normalize, device=device) \
        if settings.compile else (net, 0.0)

    scored = net if ema is None else ema.module.get_classifier() if fast else ema.module
    after_step = after_steps(model, ema, start_epoch * steps, between_steps)
    mixup, loss_fn = mixing(hp, num_classes)
    scaler = grad_scaler(device)  # fp16's loss scale carries over from epoch to epoch
    trial = {"fast_path": fast, "data_resident": resident, "compile_s": compile_s}  # per trial
    for epoch in range(start_epoch, epochs):
        plan.begin_epoch(model, epoch)  # train mode, but frozen blocks keep BatchNorm fixed
        try:
            with memory_guard(hp.batch_size, device):
                inject_epoch_fault(settings.strategy, epoch + 1, model)  # only in tests
                stats = train_epoch(
                    net, optimizer, train_x, train_y, batch_size=hp.batch_size,
                    policy=hp.augment, magnitude=hp.magnitude, crop_scale=hp.crop_scale,
                    normalize=normalize, loss_fn=loss_fn, device=device, generator=generator,
                    scheduler=scheduler, first_update=epoch * steps, scaler=scaler,
                    between_steps=after_step, mixup=mixup)
                check_finite(stats.loss, epoch + 1)
                score = (evaluate(scored, val_x, val_y, normalize=normalize, device=device,
                                  between_batches=between_steps)
                         if val_y is not None else None)
        except TrialFailure as failure:
            if report is None:  # the final evaluation: its task fails with this message
                raise
            # the trial ends here, without a checkpoint; the scheduler still needs its metric
            report({"epoch": epoch + 1, "failure": str(failure), "failure_kind": failure.kind,
                    **best}, None)
            return model if ema is None else ema.module
        metrics, best = epoch_metrics(stats, score, best, epoch + 1,
                                      lr=optimizer.param_groups[-1]["lr"], **trial)
        if report is not None:
            report(metrics, lambda e=epoch + 1, b=best: {
                **checkpoint_weights(model, ema), "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(), "epoch": e, **b})
    return model if ema is None else ema.module


def epoch_metrics(stats: EpochStats, score: EpochStats | None, best: dict, epoch: int,
                  **extra) -> tuple[dict, dict]:
    """An epoch's report, and the running best; a tie goes to the later epoch."""
    metrics = {"train_loss": stats.loss, "train_acc": stats.accuracy,
               "images_per_s": stats.images_per_s, "epoch": epoch, **extra}
    if score is not None:
        if score.accuracy >= best["best_val_acc"]:
            best = {"best_val_acc": score.accuracy, "best_epoch": epoch}
        metrics.update(val_acc=score.accuracy, val_loss=score.loss, **best)
    return metrics, best


def lr_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float = 0.1
                ) -> CosineLRScheduler:
    """A linear warmup (`warmup`, a fraction of the run; at least one step unless 0) into a
    cosine decay over the rest, stepped per update: one cycle, the peak where warmup ends."""
    warmup_t = max(1, int(total_steps * warmup + 1e-9)) if warmup > 0 else 0
    return CosineLRScheduler(optimizer, t_initial=max(1, total_steps - warmup_t),
                             warmup_t=warmup_t, warmup_prefix=True, warmup_lr_init=0.0,
                             t_in_epochs=False)


def make_optimizer(name: str, groups: list[dict], lr: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)


def tune_checkpoint() -> dict | None:
    """The state saved in Tune's checkpoint when the trial restarts after a failure."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    if is_local(checkpoint.filesystem):  # as_directory() would first copy it to a temporary folder
        return load_checkpoint(Path(checkpoint.path))
    with checkpoint.as_directory() as directory:
        return load_checkpoint(Path(directory))


def load_checkpoint(directory: Path) -> dict:
    return torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def restore(state: dict, model: nn.Module, ema: ModelEmaV3 | None,
            optimizer: torch.optim.Optimizer, generator: torch.Generator, best: dict) -> int:
    """Load a checkpoint's state in place; returns the epoch to start at."""
    load_weights(state, model, ema)
    load_optimizer_state(optimizer, state["optimizer"])
    generator.set_state(state["generator"])
    best.update(best_val_acc=float(state.get("best_val_acc", 0.0)),
                best_epoch=int(state.get("best_epoch", 0)))
    return int(state["epoch"])


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load momentum buffers and Adam moments, but keep the groups' hyperparameters.

    `load_state_dict` also brings back each group's lr, initial_lr and weight_decay as saved.
    After PBT's exploit the checkpoint is another trial's and this config perturbs lr and
    weight_decay: keep what the optimizer was built with. timm's CosineLRScheduler took its
    base lrs from `initial_lr` when it was built, before this, and sets `lr` on every step.
    """
    built = [{k: v for k, v in group.items() if k != "params"}
             for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, values in zip(optimizer.param_groups, built, strict=True):
        group.update(values)
