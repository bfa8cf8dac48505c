"""TrivialAugment and RandAugment on whole uint8 batches, with an independent draw per sample.

torchvision's `TrivialAugmentWide` and `RandAugment` draw one operation per call, so a batch
would share it. Here every sample draws its own operation, magnitude and sign, and each
operation runs once for the samples that drew it (one `grid_sample` for all geometric ones), on
the batch's device, with no host synchronisation on a GPU (`apply_ops`). Operations, magnitude
ranges and bins follow torchvision's definitions, except that translations are a fraction of
the image side (torchvision: 32 px for TrivialAugmentWide, 150/331 of the side for
RandAugment), so a policy means the same at 32 px as at 224 px.
"""

from __future__ import annotations

from collections.abc import Callable
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
    """Shear, translate or rotate each sample by its own value; zero fill, nearest neighbour.
    A sample whose op is none of these gets the identity."""
    is_op = {name: op == OPS.index(name) for name in GEOMETRIC}
    rot = is_op["rotate"]
    angle = torch.deg2rad(value)
    cos, sin = torch.where(rot, torch.cos(angle), 1.0), torch.where(rot, torch.sin(angle), 0.0)
    theta = torch.stack([
        cos, torch.where(is_op["shear_x"], value, -sin),
        torch.where(is_op["translate_x"], 2 * value, 0.0),  # normalised coordinates
        torch.where(is_op["shear_y"], value, sin), cos,
        torch.where(is_op["translate_y"], 2 * value, 0.0),
    ], 1).view(-1, 2, 3).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _posterize(x: torch.Tensor, level: torch.Tensor, min_bits: int) -> torch.Tensor:
    bits = (8 - (level * (8 - min_bits)).round()).to(torch.int32)
    return x & (256 - 2 ** (8 - bits)).to(torch.uint8).view(-1, 1, 1, 1)


def _solarize(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    threshold = (255 * (1 - level)).view(-1, 1, 1, 1)
    return torch.where(x >= threshold, 255 - x, x)


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    """torchvision's autocontrast of uint8 images, with `torch.where` where it assigns through
    a boolean mask (a host sync on CUDA)."""
    image = x.float()
    low = image.amin(dim=(-2, -1), keepdim=True)
    high = image.amax(dim=(-2, -1), keepdim=True)
    flat = high == low
    inv_scale = torch.where(flat, 1.0, (high - low).mul(1.0 / 255))
    return (image - torch.where(flat, 0.0, low)).div(inv_scale).clamp(0, 255).to(torch.uint8)


BLEND_BASES = (("brightness", torch.zeros_like),
               ("color", lambda t: _grey(t).expand_as(t)),
               ("contrast", lambda t: _grey(t).mean((1, 2, 3), keepdim=True).expand_as(t)),
               ("sharpness", _sharpen_base))

Select = Callable[..., torch.Tensor]


def on_sub_batch(out: torch.Tensor, mask: torch.Tensor, fn: Callable[..., torch.Tensor],
                 *params: torch.Tensor) -> torch.Tensor:
    """`fn` on the samples in `mask` alone, with their parameters; the rest as they were."""
    idx = mask.nonzero().squeeze(1)
    if len(idx):
        out[idx] = fn(out[idx], *(p[idx] for p in params))
    return out


def on_whole_batch(out: torch.Tensor, mask: torch.Tensor, fn: Callable[..., torch.Tensor],
                   *params: torch.Tensor) -> torch.Tensor:
    """`fn` on every sample, kept for those in `mask`: no sub-batch whose size the host must
    read back from the device."""
    return torch.where(mask.view(-1, 1, 1, 1), fn(out, *params), out)


def apply_ops(x: torch.Tensor, op: torch.Tensor, level: torch.Tensor, sign: torch.Tensor,
              ranges: OpRanges, select: Select | None = None) -> torch.Tensor:
    """Apply operation `op[i]` at `level[i]` in [0, 1] with `sign[i]` (+-1) to uint8 image i.

    Each operation runs on the samples that drew it. On a GPU it runs on the whole batch and
    each sample keeps its own operation's result (`on_whole_batch`): a sub-batch's size is
    data on the device, and reading it back (`nonzero`, `len`) would stall the host a dozen
    times per batch. Elsewhere it runs on its sub-batch (`on_sub_batch`), which costs a CPU
    less. Both give the same images: operations are per sample.
    """
    select = select or (on_whole_batch if x.device.type == "cuda" else on_sub_batch)
    out = x.float()
    signed = level * sign
    geometric = (op >= OPS.index("shear_x")) & (op <= OPS.index("rotate"))
    # each geometric op's largest value, chosen on the device (a table copied there per batch
    # would be a host sync)
    largest = torch.where(op <= OPS.index("shear_y"), ranges.shear, torch.where(
        op <= OPS.index("translate_y"), ranges.translate, ranges.rotate))
    out = select(out, geometric, _affine, op, torch.where(geometric, signed * largest, 0.0))
    factor = 1 + signed * ranges.enhance
    for name, base in BLEND_BASES:
        out = select(out, op == OPS.index(name), lambda t, f, base=base: _blend(t, base(t), f),
                     factor)
    out = out.round().clamp(0, 255).to(torch.uint8)
    out = select(out, op == OPS.index("posterize"),
                 lambda t, lv: _posterize(t, lv, ranges.posterize_min_bits), level)
    out = select(out, op == OPS.index("solarize"), _solarize, level)
    out = select(out, op == OPS.index("autocontrast"), _autocontrast)
    return select(out, op == OPS.index("equalize"), TF.equalize)  # per image, batched


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

