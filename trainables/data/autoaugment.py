"""TrivialAugment and RandAugment on whole uint8 batches, with an independent draw per sample.

torchvision's `TrivialAugmentWide` and `RandAugment` draw one operation per call, so a batch
would share it. Here every sample draws its own operation, magnitude and sign, and each
operation runs once on the sub-batch that drew it (one `grid_sample` for all geometric ones), on
the batch's device. Operations, magnitude ranges and bins follow torchvision's definitions,
except that translations are a fraction of the image side (torchvision: 32 px for
TrivialAugmentWide, 150/331 of the side for RandAugment), so a policy means the same at 32 px
as at 224 px.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness",
       "color", "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
GEOMETRIC = OPS[1:6]
NUM_BINS = 31  # torchvision's magnitude bins: level = bin / 30


@dataclass(frozen=True)
class OpRanges:
    """Maximum magnitude of each operation (torchvision's augmentation spaces)."""

    shear: float
    translate: float  # fraction of the image side (32 px of 224 for TrivialAugmentWide)
    rotate: float  # degrees
    enhance: float  # brightness, colour, contrast, sharpness factor = 1 +- this
    posterize_min_bits: int


TRIVIAL_WIDE = OpRanges(shear=0.99, translate=32 / 224, rotate=135.0, enhance=0.99,
                        posterize_min_bits=2)
RAND = OpRanges(shear=0.3, translate=150 / 331, rotate=30.0, enhance=0.9, posterize_min_bits=4)


def _grey(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (other + factor.view(-1, 1, 1, 1) * (x - other)).clamp(0, 255)


def _sharpen_base(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH kernel on the interior, the original pixels on the border."""
    kernel = torch.ones(3, 1, 3, 3, device=x.device, dtype=x.dtype)
    kernel[:, :, 1, 1] = 5
    blurred = F.conv2d(x, kernel / 13, groups=3)
    out = x.clone()
    out[..., 1:-1, 1:-1] = blurred
    return out


def _affine(x: torch.Tensor, op: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Shear, translate or rotate each sample by its own value; zero fill, nearest neighbour."""
    b = x.shape[0]
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    angle = torch.deg2rad(value)
    is_op = {name: op == OPS.index(name) for name in GEOMETRIC}
    theta[:, 0, 1] = torch.where(is_op["shear_x"], value, 0)
    theta[:, 1, 0] = torch.where(is_op["shear_y"], value, 0)
    theta[:, 0, 2] = torch.where(is_op["translate_x"], 2 * value, 0)  # normalised coordinates
    theta[:, 1, 2] = torch.where(is_op["translate_y"], 2 * value, 0)
    rot = is_op["rotate"]
    theta[rot, 0, 0] = torch.cos(angle[rot])
    theta[rot, 0, 1] = -torch.sin(angle[rot])
    theta[rot, 1, 0] = torch.sin(angle[rot])
    theta[rot, 1, 1] = torch.cos(angle[rot])
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def apply_ops(x: torch.Tensor, op: torch.Tensor, level: torch.Tensor, sign: torch.Tensor,
              ranges: OpRanges) -> torch.Tensor:
    """Apply operation `op[i]` at `level[i]` in [0, 1] with `sign[i]` (+-1) to uint8 image i."""
    out = x.float()
    signed = level * sign
    geometric = (op >= OPS.index("shear_x")) & (op <= OPS.index("rotate"))
    if geometric.any():
        scale = torch.tensor([0.0, ranges.shear, ranges.shear, ranges.translate,
                              ranges.translate, ranges.rotate], device=x.device)
        g = geometric.nonzero().squeeze(1)
        out[g] = _affine(out[g], op[g], signed[g] * scale[op[g]])
    factor = 1 + signed * ranges.enhance
    for name, base in (("brightness", lambda t: torch.zeros_like(t)),
                       ("color", lambda t: _grey(t).expand_as(t)),
                       ("contrast", lambda t: _grey(t).mean((1, 2, 3), keepdim=True).expand_as(t)),
                       ("sharpness", _sharpen_base)):
        idx = (op == OPS.index(name)).nonzero().squeeze(1)
        if len(idx):
            out[idx] = _blend(out[idx], base(out[idx]), factor[idx])
    out = out.round().clamp(0, 255).to(torch.uint8)
    idx = (op == OPS.index("posterize")).nonzero().squeeze(1)
    if len(idx):
        bits = (8 - (level[idx] * (8 - ranges.posterize_min_bits)).round()).to(torch.int32)
        mask = (256 - 2 ** (8 - bits)).to(torch.uint8).view(-1, 1, 1, 1)
        out[idx] = out[idx] & mask
    idx = (op == OPS.index("solarize")).nonzero().squeeze(1)
    if len(idx):
        threshold = (255 * (1 - level[idx])).view(-1, 1, 1, 1)
        out[idx] = torch.where(out[idx] >= threshold, 255 - out[idx], out[idx])
    for name, fn in (("autocontrast", TF.autocontrast), ("equalize", TF.equalize)):
        idx = (op == OPS.index(name)).nonzero().squeeze(1)
        if len(idx):
            out[idx] = fn(out[idx])  # per-image statistics, batched
    return out


def _draw(b: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    op = torch.randint(0, len(OPS), (b,), device=device)
    sign = torch.where(torch.rand(b, device=device) < 0.5, -1.0, 1.0)
    return op, sign


def trivial_augment(x: torch.Tensor) -> torch.Tensor:
    """TrivialAugment (Wide): one operation at a uniformly drawn bin per sample."""
    op, sign = _draw(x.shape[0], x.device)
    level = torch.randint(0, NUM_BINS, (x.shape[0],), device=x.device) / (NUM_BINS - 1)
    return apply_ops(x, op, level, sign, TRIVIAL_WIDE)


def rand_augment(x: torch.Tensor, magnitude: int, num_ops: int = 2) -> torch.Tensor:
    """RandAugment: `num_ops` operations per sample at a fixed magnitude (bin 0 to 30)."""
    if not 0 <= magnitude < NUM_BINS:
        raise ValueError(f"magnitude {magnitude}: expected 0..{NUM_BINS - 1}")
    level = torch.full((x.shape[0],), magnitude / (NUM_BINS - 1), device=x.device)
    for _ in range(num_ops):
        op, sign = _draw(x.shape[0], x.device)
        x = apply_ops(x, op, level, sign, RAND)
    return x

