"""Augmentation of uint8 batches on the trial's device, with an independent draw per sample.

Flips and crops are one indexing op for the whole batch; TrivialAugment and RandAugment run
batched too (`trainables.data.autoaugment`), each sample with its own operations and magnitudes.
"""

from __future__ import annotations

import torch

from trainables.config import AUGMENTATIONS
from trainables.data.autoaugment import rand_augment, trivial_augment


def random_flip(x: torch.Tensor) -> torch.Tensor:
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Reflect-pad by `padding` pixels, then crop back to size at a random offset per sample."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x.float(), (padding,) * 4, mode="reflect").to(x.dtype)
    dy = torch.randint(0, 2 * padding + 1, (b, 1, 1), device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (b, 1, 1), device=x.device)
    rows = (torch.arange(h, device=x.device)[None, :, None] + dy).expand(b, h, w)
    cols = (torch.arange(w, device=x.device)[None, None, :] + dx).expand(b, h, w)
    batch = torch.arange(b, device=x.device)[:, None, None].expand(b, h, w)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def augment(x: torch.Tensor, policy: str, magnitude: int = 9) -> torch.Tensor:
    """Augment a (B, 3, H, W) uint8 batch; returns uint8 of the same shape.

    `magnitude` (0 to 30) is RandAugment's; TrivialAugment draws its own per sample.
    """
    if policy not in AUGMENTATIONS:
        raise ValueError(f"augment={policy!r}: expected one of {AUGMENTATIONS}")
    if policy == "none":
        return x
    if policy == "trivialaugment":
        x = trivial_augment(x)
    if policy == "randaugment":
        x = rand_augment(x, magnitude)
    if policy == "crop_flip":
        x = random_crop(x, padding=max(1, x.shape[-1] // 8))  # 4 px at 32 px, as for CIFAR
    return random_flip(x)

