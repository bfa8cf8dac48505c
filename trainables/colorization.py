"""The colorization pretext task: a U-Net on a timm `features_only` encoder predicts ab from L.

Lab conversion runs on batches on the device (sRGB, D65 white). The encoder sees the L channel
repeated to three channels, so its weights drop straight into an RGB classifier afterwards.
"""

from __future__ import annotations

import functools

import numpy as np
import timm
import torch
from torch import nn

from trainables.data.augment import random_flip
from trainables.device import autocast, channels_last, hold_to_share, pick_device
from trainables.loop import run_epoch
from trainables.models import create_backbone, model_kwargs
from trainables.placement import Images, fetch, place_inputs, resident_budget

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
        self.encoder = timm.create_model(backbone, pretrained=False, features_only=True,
                                         **model_kwargs(backbone))
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


def _paired_keys(encoder_state: dict, backbone_state: dict) -> list[tuple[str, str]]:
    """(encoder key, backbone key) pairs, in order, each pair's shapes and kinds checked."""
    if len(encoder_state) > len(backbone_state):
        raise ValueError("encoder has more tensors than the backbone: cannot map them")
    pairs = list(zip(encoder_state, list(backbone_state)[: len(encoder_state)], strict=True))
    for enc_key, key in pairs:
        if (encoder_state[enc_key].shape != backbone_state[key].shape
                or key.rsplit(".", 1)[-1] != enc_key.rsplit(".", 1)[-1]):
            raise ValueError(f"encoder tensor {enc_key} {tuple(encoder_state[enc_key].shape)} "
                             f"does not match backbone tensor {key} "
                             f"{tuple(backbone_state[key].shape)}")
    return pairs


def backbone_to_encoder(state: dict[str, torch.Tensor], encoder: nn.Module) -> None:
    """Load a backbone state dict (say, ImageNet weights) into a `features_only` encoder."""
    own = encoder.state_dict()
    encoder.load_state_dict({enc: state[key] for enc, key in _paired_keys(own, state)})


def encoder_to_backbone(encoder_state: dict[str, torch.Tensor], backbone: nn.Module
                        ) -> dict[str, torch.Tensor]:
    """Map a `features_only` encoder's state dict onto the classifier backbone's keys.

    timm's feature wrappers hold the backbone's own modules in the same order, renamed
    (`stem.0` -> `stem_0`, or under `model.`) and cut after the last feature stage. So the
    i-th encoder tensor is the i-th backbone tensor; shapes are checked one by one, and the
    backbone keeps its own initialisation for what lies past the last stage.
    """
    mapped = dict(backbone.state_dict())
    for enc_key, key in _paired_keys(encoder_state, mapped):
        mapped[key] = encoder_state[enc_key].detach().cpu().clone()
    return mapped


def sample_grid(unet: ColorizationUNet, images: torch.Tensor) -> np.ndarray:
    """Rows of grey input, predicted colour and truth for `images`: (3H, NW, 3) uint8."""
    unet.eval()
    with torch.no_grad():
        grey, _ = lab_inputs(images)
        lightness = (grey[:, :1] + 1) * 50
        predicted = lab_to_rgb(torch.cat([lightness, unet(grey) * AB_SCALE], 1))
        grey_rgb = lab_to_rgb(torch.cat([lightness, torch.zeros_like(grey[:, :2])], 1))
    rows = [torch.cat(list(x.cpu()), -1) for x in (grey_rgb, predicted, images.float() / 255)]
    grid = torch.cat(rows, -2).permute(1, 2, 0)
    return (grid.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


@torch.no_grad()
def ab_error(unet: ColorizationUNet, images: Images, device: torch.device | None = None,
             batch_size: int = 256) -> float:
    """Mean absolute error of the predicted a and b channels on `images` (on `device`, or
    streamed to it), in Lab units: a measure of the pretext task on held-out images,
    comparable across runs (the loss is in units of AB_SCALE). Eval mode, so BatchNorm uses
    its running statistics."""
    unet.eval()
    device = device or images.device
    total = torch.zeros((), dtype=torch.float64, device=device)
    for begin in range(0, len(images), batch_size):
        grey, ab = lab_inputs(fetch(images, slice(begin, begin + batch_size), device))
        with autocast(device):
            predicted = unet(channels_last(grey))
        total += (predicted.float() - ab).abs().sum(dtype=torch.float64)
    pixels = len(images) * images.shape[-2] * images.shape[-1]
    return total.item() * AB_SCALE / (2 * pixels)


def train_colorization(backbone: str, images_np: np.ndarray, config, log: list[float] | None = None,
                       init: dict[str, torch.Tensor] | None = None, *,
                       val_images: np.ndarray | None = None, val_log: list[float] | None = None,
                       gpus_per_trial: float = 0.0
                       ) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Train the U-Net (L1 on ab) on unlabeled images; return its encoder as backbone weights,
    and a sample grid. With `config.decoder_epochs`, the decoder trains alone first (encoder
    frozen, its BatchNorm statistics too), then everything: a new decoder on a pretrained
    encoder would otherwise send large, random gradients into the encoder.

    Appends each epoch's training loss to `log` and, given held-out `val_images`, their ab error
    in Lab units (`ab_error`) to `val_log`. It keeps to a trial's rules on the GPU: its share
    of the memory (`gpus_per_trial`), and the images resident only within a trial's budget."""
    torch.manual_seed(config.seed)
    device = pick_device()
    hold_to_share(device, gpus_per_trial)
    unet = ColorizationUNet(backbone)
    if init is not None:
        backbone_to_encoder(init, unet.encoder)
    unet = unet.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(unet.parameters(), lr=config.lr / 50)
    (images, held_out), _ = place_inputs([images_np, val_images], device,
                                         resident_budget(device, gpus_per_trial))
    generator = torch.Generator().manual_seed(config.seed)

    def batch_loss(idx: torch.Tensor) -> tuple[torch.Tensor, int]:
        # Lab in fp32, outside autocast
        grey, ab = lab_inputs(random_flip(fetch(images, idx, device)))
        with autocast(device):
            predicted = unet(channels_last(grey))
        return nn.functional.l1_loss(predicted.float(), ab), 0

    for epoch in range(config.epochs):
        encoder_trains = epoch >= config.decoder_epochs
        unet.encoder.requires_grad_(encoder_trains)
        unet.train()
        if not encoder_trains:
            unet.encoder.eval()
        stats = run_epoch(optimizer, len(images), batch_loss, batch_size=config.batch_size,
                          device=device, generator=generator, index_device=images.device)
        if log is not None:
            log.append(stats.loss)
        if val_log is not None and held_out is not None and len(held_out):
            val_log.append(ab_error(unet, held_out, device))
    grid = sample_grid(unet, fetch(images, slice(0, 8), device))
    return encoder_to_backbone(unet.encoder.state_dict(), create_backbone(backbone)), grid
