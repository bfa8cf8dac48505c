"""Augmentation of uint8 batches on the trial's device, with an independent draw per sample.

Flips and crops are one indexing op for the whole batch; a random-resized crop is one
`roi_align` over the batch, each sample's box drawn by torchvision's own RandomResizedCrop
sampler; TrivialAugment and RandAugment run batched too (`trainables.data.autoaugment`), each
sample with its own operations and magnitudes.
"""

from __future__ import annotations

import torch
from torchvision.ops import roi_align
from torchvision.transforms import RandomResizedCrop

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


def crop_boxes(x: torch.Tensor, scale: tuple[float, float],
               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """One box per sample, (B, 5) as roi_align takes them (index, x1, y1, x2, y2), each drawn
    as torchvision's RandomResizedCrop draws its crop: area and aspect ratio within the ranges,
    ten tries, then the centre crop. Drawn on the host from torch's global generator, so a GPU
    batch costs no device sync."""
    boxes = []
    for i in range(x.shape[0]):
        top, left, h, w = RandomResizedCrop.get_params(x[0], list(scale), list(ratio))
        boxes.append((i, left, top, left + w, top + h))
    return torch.tensor(boxes, dtype=torch.float32)


def random_resized_crop(x: torch.Tensor, scale: tuple[float, float]) -> torch.Tensor:
    """Crop each sample to its own random box and resize it back to H x W (bilinear)."""
    boxes = crop_boxes(x, scale).to(x.device)
    # aligned=True samples pixel centres, as torchvision's resize does; sampling_ratio=2 averages
    # 2 x 2 points per output pixel, an antialiased shrink for boxes up to twice the output
    out = roi_align(x.float(), boxes, output_size=tuple(x.shape[-2:]), spatial_scale=1.0,
                    sampling_ratio=2, aligned=True)
    return out.round_().clamp_(0, 255).to(x.dtype)


def augment(x: torch.Tensor, policy: str, magnitude: int = 9,
            crop_scale: float = 0.08) -> torch.Tensor:
    """Augment a (B, 3, H, W) uint8 batch; returns uint8 of the same shape.

    `magnitude` (0 to 30) is RandAugment's; TrivialAugment draws its own per sample.
    `crop_scale` is rrc's smallest crop, as a fraction of the image's area.
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
    if policy == "rrc":
        x = random_resized_crop(x, (crop_scale, 1.0))
    return random_flip(x)

