"""The one training loop, and evaluation, over uint8 tensors already on the device.

Shared by the trials and both training pretraining stages (supervised and colorization), so
they batch the same way and follow the same device rules: batches are index slices of the whole
split held on the device (or streamed to it, trainables/placement.py), bf16 autocast on a GPU
(fp16 with loss scaling where bf16 is missing), channels-last inputs, and the running loss kept
on the device (no host copy per batch). No DataLoader, no worker processes, no decoding.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target
from torch import nn

from trainables.data.augment import augment
from trainables.device import autocast, channels_last, grad_scaler
from trainables.placement import HostSplit, Images, fetch, host_tensor


def batch_starts(n: int, batch_size: int) -> range:
    """Where an epoch's batches start. A last batch of one image is dropped: BatchNorm cannot
    train on a batch of size 1. The lr schedule's length is counted from this same range."""
    return range(0, n - 1 if n % batch_size == 1 else n, batch_size)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return len(batch_starts(n, batch_size))


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator,
                     device: torch.device) -> Iterator[torch.Tensor]:
    """Index tensors of one epoch's batches, in a fresh random order drawn from `generator`."""
    order = torch.randperm(n, generator=generator).to(device)
    for begin in batch_starts(n, batch_size):
        yield order[begin : begin + batch_size]


@dataclass(frozen=True)
class EpochStats:
    loss: float
    accuracy: float
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


CHECK_STEPS = 50  # steps between checks that the running loss is still finite

# A batch's (loss, number of correct predictions) from its indices into the split.
BatchLoss = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | int]]


def run_epoch(optimizer: torch.optim.Optimizer, n: int, batch_loss: BatchLoss, *,
              batch_size: int, device: torch.device, generator: torch.Generator,
              scheduler: Any = None, first_update: int = 0,
              scaler: torch.amp.GradScaler | None = None,
              index_device: torch.device | None = None,
              between_steps: Callable[[], None] | None = None) -> EpochStats:
    """One epoch of optimizer steps over `n` samples; the caller sets the model's train mode.

    `scheduler` is a timm scheduler stepped per update: after this epoch's k-th step it is at
    update `first_update + k`, so a resumed trial continues the same lr curve. `scaler` keeps
    fp16's loss scale across epochs (default: a fresh one). Batch indices live on
    `index_device` (default: `device`): the host's for a split streamed from host memory.
    `between_steps` runs after every step; what it raises ends the epoch (a trial Tune stopped
    while its last report was in flight).
    """
    scaler = grad_scaler(device) if scaler is None else scaler
    start = time.perf_counter()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    batches = shuffled_batches(n, batch_size, generator, index_device or device)
    for step, idx in enumerate(batches, start=1):
        loss, hits = batch_loss(idx)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # skipped, and the scale lowered, when fp16 gradients overflowed
        scaler.update()
        if scheduler is not None:
            scheduler.step_update(first_update + step)
        total_loss += loss.detach() * len(idx)
        correct += hits
        seen += len(idx)
        # a loss gone NaN or infinite stays so: end the epoch (and the caller, the trial) early;
        # one host sync per CHECK_STEPS steps
        if step % CHECK_STEPS == 0 and not torch.isfinite(total_loss):
            break
        if between_steps is not None:
            between_steps()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return EpochStats(total_loss.item() / seen, correct.item() / seen, seen,
                      time.perf_counter() - start)


def train_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, images: Images,
    labels: torch.Tensor, *, batch_size: int, policy: str, magnitude: int = 9,
    crop_scale: float = 0.08, normalize: nn.Module, loss_fn: nn.Module, device: torch.device,
    generator: torch.Generator, scheduler: Any = None, first_update: int = 0,
    scaler: torch.amp.GradScaler | None = None, between_steps: Callable[[], None] | None = None,
    mixup: Mixup | None = None,
) -> EpochStats:
    """One epoch of classification: augment, normalise, mix (with `mixup`, timm's: `loss_fn`
    then takes its soft targets), forward, loss, step. Train accuracy counts the argmax against
    each image's own label, mixed or not."""

    def batch_loss(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = fetch(images, idx, device)
        x = channels_last(normalize(augment(x, policy, magnitude, crop_scale)))
        y = labels[idx.to(device, non_blocking=True)]
        target = y
        if mixup is not None and len(idx) % 2:  # timm mixes a batch with itself reversed,
            # which needs an even size: an odd last batch trains unmixed, on the same soft form
            target = mixup_target(y, mixup.num_classes, 1.0, mixup.label_smoothing)
        elif mixup is not None:
            x, target = mixup(x, y)
        with autocast(device):
            logits = model(x)
        return loss_fn(logits.float(), target), (logits.argmax(1) == y).sum()

    return run_epoch(optimizer, len(labels), batch_loss, batch_size=batch_size, device=device,
                     generator=generator, scheduler=scheduler, first_update=first_update,
                     scaler=scaler, index_device=images.device, between_steps=between_steps)


@torch.no_grad()
def evaluate(
    model: nn.Module, images: Images, labels: torch.Tensor, *, normalize: nn.Module,
    device: torch.device, batch_size: int = 512,
    between_batches: Callable[[], None] | None = None,
) -> EpochStats:
    model.eval()
    start = time.perf_counter()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for begin in range(0, len(labels), batch_size):
        x = channels_last(normalize(fetch(images, slice(begin, begin + batch_size), device)))
        y = labels[begin : begin + batch_size]
        with autocast(device):
            logits = model(x).float()
        total_loss += nn.functional.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        if between_batches is not None:
            between_batches()
    n = len(labels)
    return EpochStats(total_loss.item() / n, correct.item() / n, n, time.perf_counter() - start)


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray | torch.Tensor, *, normalize: nn.Module,
            device: torch.device, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (N, C) and the classifier's input features (N, D), on the CPU, of
    uint8 images in host memory. They stream to the device a batch at a time: one pass over a
    split of any size holds one batch of it there, never the whole split.

    timm's `forward_head(pre_logits=True)` is what the classifier sees: pooled, normed, and
    the same vector the frozen fast path trains on.
    """
    model.eval()
    source = HostSplit(images if isinstance(images, torch.Tensor) else host_tensor(images))
    probs, feats = [], []
    for begin in range(0, len(images), batch_size):
        x = channels_last(normalize(fetch(source, slice(begin, begin + batch_size), device)))
        with autocast(device):
            pre = model.forward_head(model.forward_features(x), pre_logits=True)
            logits = model.get_classifier()(pre)
        probs.append(logits.float().softmax(1).cpu())
        feats.append(pre.float().cpu())
    return torch.cat(probs), torch.cat(feats)
