"""One epoch of training and one pass of evaluation over uint8 tensors already in memory.

Shared by the trial trainable and the supervised pretraining stage. Batches are sliced from the
whole split held on the device, augmented there, normalised, then fed to the model: no
DataLoader, no worker processes, no decoding.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trainables.augment import Normalize, augment


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device):
    # bf16 autocast on GPUs; on CPUs it is slower than fp32 without AMX, so it stays off there.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Wrap an array (read-only when it comes from Ray's object store) without copying on CPU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # non-writable arrays: we never write
        tensor = torch.from_numpy(array)
    return tensor.to(device, non_blocking=True)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    # NHWC is the fast layout for convolutions with cuDNN and oneDNN; features stay 2-D.
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def steps_per_epoch(n: int, batch_size: int) -> int:
    return (n - 1 if n % batch_size == 1 else n + batch_size - 1) // batch_size


@dataclass(frozen=True)
class EpochStats:
    loss: float
    accuracy: float
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def train_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
    labels: torch.Tensor, *, batch_size: int, policy: str, magnitude: int = 9,
    normalize: Normalize,
    train_mode: Callable[[nn.Module], None], loss_fn: nn.Module, device: torch.device,
    generator: torch.Generator, on_step: Callable[[], None] | None = None,
) -> EpochStats:
    train_mode(model)
    start = time.perf_counter()
    order = torch.randperm(len(labels), generator=generator).to(labels.device)
    total_loss, correct, seen = 0.0, 0, 0
    # Drop a last batch of one image: BatchNorm cannot train on a batch of size 1.
    stop = len(order) - 1 if len(order) % batch_size == 1 else len(order)
    for begin in range(0, stop, batch_size):
        idx = order[begin : begin + batch_size]
        x = channels_last(normalize(augment(images[idx], policy, magnitude)))
        y = labels[idx]
        with autocast(device):
            logits = model(x)
            loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step()
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return EpochStats(total_loss / seen, correct / seen, seen, time.perf_counter() - start)


@torch.no_grad()
def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, normalize: Normalize,
    device: torch.device, batch_size: int = 512,
) -> EpochStats:
    model.eval()
    start = time.perf_counter()
    total_loss, correct = 0.0, 0
    for begin in range(0, len(labels), batch_size):
        x = channels_last(normalize(images[begin : begin + batch_size]))
        y = labels[begin : begin + batch_size]
        with autocast(device):
            logits = model(x).float()
        total_loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    n = len(labels)
    return EpochStats(total_loss / n, correct / n, n, time.perf_counter() - start)
