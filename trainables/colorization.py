"""The colorization pretext task: a U-Net on a timm `features_only` encoder predicts ab from L.

Lab conversion runs on batches on the device (sRGB, D65 white). The encoder sees the L channel
repeated to three channels, so its weights drop straight into an RGB classifier afterwards.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

# sRGB (linear) -> XYZ, D65, and the D65 reference white.
_RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                            [0.212671, 0.715160, 0.072169],
                            [0.019334, 0.119193, 0.950227]])
_WHITE = torch.tensor([0.950456, 1.0, 1.088754])
AB_SCALE = 110.0  # |a|, |b| stay below ~110 for sRGB colours: ab / 110 lies in [-1, 1]


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) sRGB in [0, 1] -> Lab with L in [0, 100] and a, b roughly in [-110, 110]."""
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = torch.einsum("ij,bjhw->bihw", _RGB_TO_XYZ.to(rgb), linear)
    xyz = xyz / _WHITE.to(rgb).view(1, 3, 1, 1)
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
    xyz = xyz * _WHITE.to(lab).view(1, 3, 1, 1)
    linear = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_RGB_TO_XYZ).to(lab), xyz)
    linear = linear.clamp(0, 1)
    return torch.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear)


def lab_inputs(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 RGB batch -> (L repeated to 3 channels in [-1, 1], ab target in [-1, 1])."""
    lab = rgb_to_lab(images.float() / 255)
    grey = (lab[:, :1] / 50 - 1).expand(-1, 3, -1, -1)
    return grey.contiguous(), lab[:, 1:] / AB_SCALE


class _Up(nn.Module):
    def __init__(self, in_ch: int, skip_ch: int, out_ch: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_ch + skip_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.block(torch.cat([x, skip], 1))


class ColorizationUNet(nn.Module):
    """timm `features_only` encoder + a light decoder with one skip per encoder stage."""

    def __init__(self, backbone: str, decoder_width: int = 64):
        super().__init__()
        self.encoder = timm.create_model(backbone, pretrained=False, features_only=True)
        channels = self.encoder.feature_info.channels()
        self.ups = nn.ModuleList()
        in_ch = channels[-1]
        for skip_ch in reversed(channels[:-1]):
            self.ups.append(_Up(in_ch, skip_ch, decoder_width))
            in_ch = decoder_width
        self.out = nn.Conv2d(in_ch, 2, 3, padding=1)

    def forward(self, grey: torch.Tensor) -> torch.Tensor:
        features = self.encoder(grey)
        x = features[-1]
        for up, skip in zip(self.ups, reversed(features[:-1]), strict=True):
            x = up(x, skip)
        x = nn.functional.interpolate(x, size=grey.shape[-2:], mode="bilinear",
                                      align_corners=False)
        return torch.tanh(self.out(x))


def encoder_to_backbone(encoder_state: dict[str, torch.Tensor], backbone: nn.Module
                        ) -> dict[str, torch.Tensor]:
    """Map a `features_only` encoder's state dict onto the classifier backbone's keys.

    timm's feature wrappers hold the backbone's own modules in the same order, renamed
    (`stem.0` -> `stem_0`, or under `model.`) and cut after the last feature stage. So the
    i-th encoder tensor is the i-th backbone tensor; shapes are checked one by one, and the
    backbone keeps its own initialisation for what lies past the last stage.
    """
    target = backbone.state_dict()
    target_items = list(target.items())
    if len(encoder_state) > len(target_items):
        raise ValueError("encoder has more tensors than the backbone: cannot map them")
    mapped = dict(target)
    pairs = zip(encoder_state.items(), target_items[: len(encoder_state)], strict=True)
    for (enc_key, enc_value), (key, value) in pairs:
        if enc_value.shape != value.shape or key.rsplit(".", 1)[-1] != enc_key.rsplit(".", 1)[-1]:
            raise ValueError(f"encoder tensor {enc_key} {tuple(enc_value.shape)} does not match "
                             f"backbone tensor {key} {tuple(value.shape)}")
        mapped[key] = enc_value.detach().cpu().clone()
    return mapped
