"""Backbone features of a dataset, for training a head on a frozen backbone without the backbone.

With the backbone frozen (eval mode, no gradients) and no augmentation, its output for an image
never changes, so it is computed once per experiment and every trial trains only its head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import timm
import torch

from trainables.augment import Normalize
from trainables.data import Dataset
from trainables.loop import autocast, pick_device, to_device
from trainables.models import create_backbone


@dataclass(frozen=True)
class Features:
    train: np.ndarray  # (N, D) float32: the classifier's input (timm's pre-logits)
    val: np.ndarray


@torch.no_grad()
def embed(model: torch.nn.Module, images: np.ndarray, normalize: Normalize,
          device: torch.device, batch_size: int = 256) -> np.ndarray:
    out = []
    for begin in range(0, len(images), batch_size):
        x = normalize(to_device(images[begin : begin + batch_size], device))
        with autocast(device):
            out.append(model(x.contiguous(memory_format=torch.channels_last)).float().cpu())
    return torch.cat(out).numpy()


def compute_features(backbone: str, state: dict[str, torch.Tensor] | None, data: Dataset,
                     threads: int = 0) -> Features:
    """Pre-logits features of train and val, from the backbone in eval mode."""
    if threads:
        torch.set_num_threads(threads)
    device = pick_device()
    model = create_backbone(backbone, state).to(device, memory_format=torch.channels_last).eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    normalize = Normalize(cfg["mean"], cfg["std"]).to(device)
    return Features(embed(model, data.train.images, normalize, device),
                    embed(model, data.val.images, normalize, device))
