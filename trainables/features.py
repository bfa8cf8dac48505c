"""Backbone features of a dataset, for training a head on a frozen backbone without the backbone.

With the backbone frozen (eval mode, no gradients) and no augmentation, its output for an image
never changes, so it is computed once per experiment and every trial trains only its head.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from store.atomic import atomic_file
from trainables.cache import fingerprint
from trainables.data.dataset import Dataset
from trainables.device import (
    autocast,
    channels_last,
    hold_to_share,
    pick_device,
    task_precision,
)
from trainables.models import create_backbone, normalizer
from trainables.placement import to_device


@dataclass(frozen=True)
class Features:
    train: np.ndarray  # (N, D) float32: the classifier's input (timm's pre-logits)
    val: np.ndarray


def features_key(stage_key: str, data_fingerprint: str, backbone: str,
                 gpus_per_trial: float) -> str:
    """The cache key of a backbone's features of a dataset. They depend on the device and
    precision they are computed in, a task with a trial's resources: bf16 features from a GPU
    are not the fp32 features of a CPU, and a search on one never reads the other's. The
    driver names the GPU's precision where it sees one like its workers' (one machine), else
    only "cuda" (a CPU-only head of a GPU cluster)."""
    return fingerprint(stage_key, data_fingerprint, backbone, task_precision(gpus_per_trial))


@torch.no_grad()
def embed(model: nn.Module, images: np.ndarray, normalize: nn.Module,
          device: torch.device, batch_size: int = 256) -> np.ndarray:
    out = []
    for begin in range(0, len(images), batch_size):
        x = channels_last(normalize(to_device(images[begin : begin + batch_size], device)))
        with autocast(device):
            out.append(model(x).float().cpu())
    return torch.cat(out).numpy()


def compute_features(backbone: str, state: dict[str, torch.Tensor] | None, data: Dataset,
                     threads: int = 0, gpus_per_trial: float = 0.0) -> Features:
    """Pre-logits features of train and val, from the backbone in eval mode, with a trial's
    resources: `threads` CPU threads and `gpus_per_trial` of a GPU (held to that share)."""
    if threads:
        torch.set_num_threads(threads)
    device = pick_device()
    hold_to_share(device, gpus_per_trial)
    model = create_backbone(backbone, state).to(device, memory_format=torch.channels_last).eval()
    normalize = normalizer(model).to(device)
    return Features(embed(model, data.train.images, normalize, device),
                    embed(model, data.val.images, normalize, device))


def read_features(path: Path) -> Features | None:
    """Cached features, or None when `path` holds none."""
    if not path.is_file():
        return None
    with np.load(path) as cached:
        return Features(cached["train"], cached["val"])


def write_features(path: Path, features: Features) -> None:
    with atomic_file(path) as tmp:
        np.savez(tmp, train=features.train, val=features.val)
