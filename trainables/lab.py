"""CIELAB on batches on the device (sRGB, D65 white): what the colorization pretext task
predicts (ab) from what it sees (L)."""

from __future__ import annotations

import functools

import torch

# sRGB (linear) -> XYZ, D65, and the D65 reference white.
_RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                            [0.212671, 0.715160, 0.072169],
                            [0.019334, 0.119193, 0.950227]])
_WHITE = torch.tensor([0.950456, 1.0, 1.088754])


@functools.cache
def _on(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor,
                                                            torch.Tensor]:
    """(RGB -> XYZ, its inverse, the white point) on a device, copied there once: a copy per
    batch from host memory would make the host wait for the GPU every step."""
    return tuple(t.to(device, dtype) for t in (_RGB_TO_XYZ, torch.linalg.inv(_RGB_TO_XYZ),
                                                _WHITE))


AB_SCALE = 110.0  # |a|, |b| stay below ~110 for sRGB colours: ab / 110 lies in [-1, 1]


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) sRGB in [0, 1] -> Lab with L in [0, 100] and a, b roughly in [-110, 110]."""
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    to_xyz, _, white = _on(rgb.device, rgb.dtype)
    xyz = torch.einsum("ij,bjhw->bihw", to_xyz, linear)
    xyz = xyz / white.view(1, 3, 1, 1)
    eps = (6 / 29) ** 3
    f = torch.where(xyz > eps, xyz.clamp_min(eps) ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    lightness = 116 * f[:, 1] - 16
    a = 500 * (f[:, 0] - f[:, 1])
    b = 200 * (f[:, 1] - f[:, 2])
    return torch.stack([lightness, a, b], 1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_lab`, clamped to [0, 1]."""
    fy = (lab[:, 0] + 16) / 116
    f = torch.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], 1)
    delta = 6 / 29
    xyz = torch.where(f > delta, f**3, 3 * delta**2 * (f - 4 / 29))
    _, to_rgb, white = _on(lab.device, lab.dtype)
    xyz = xyz * white.view(1, 3, 1, 1)
    linear = torch.einsum("ij,bjhw->bihw", to_rgb, xyz)
    linear = linear.clamp(0, 1)
    return torch.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear)


def lab_inputs(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 RGB batch -> (L repeated to 3 channels in [-1, 1], ab target in [-1, 1])."""
    lab = rgb_to_lab(images.float() / 255)
    grey = (lab[:, :1] / 50 - 1).expand(-1, 3, -1, -1)
    return grey.contiguous(), lab[:, 1:] / AB_SCALE
