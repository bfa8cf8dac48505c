"""The colorization pretext task: a U-Net on a timm `features_only` encoder predicts ab from L.

Lab conversion (trainables/lab.py) runs on batches on the device. The encoder sees the L channel
repeated to three channels, so its weights drop straight into an RGB classifier afterwards.
"""

from __future__ import annotations

import numpy as np
import timm
import torch
from torch import nn

from trainables.ab_bins import (
    annealed_mean,
    bin_centers,
    classification_loss,
    count_bins,
    rebalancing_weights,
)
from trainables.data.augment import random_flip
from trainables.device import autocast, channels_last, hold_to_share, pick_device
from trainables.early_stop import BestEpoch
from trainables.lab import AB_SCALE, lab_inputs, lab_to_rgb
from trainables.loop import run_epoch
from trainables.models import create_backbone, model_kwargs
from trainables.placement import Images, fetch, place_inputs, resident_budget

LOSSES = ("l1", "classification")


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
    """timm `features_only` encoder + a light decoder with one skip per encoder stage. With the
    `l1` loss it outputs ab / AB_SCALE (tanh); with `classification`, a logit per ab bin
    (trainables/ab_bins.py), which `predict_ab` decodes."""

    def __init__(self, backbone: str, decoder_width: int = 64, loss: str = "l1"):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"unknown pretext loss {loss!r}; expected one of {LOSSES}")
        self.loss = loss
        self.encoder = timm.create_model(backbone, pretrained=False, features_only=True,
                                         **model_kwargs(backbone))
        channels = self.encoder.feature_info.channels()
        self.ups = nn.ModuleList()
        in_ch = channels[-1]
        for skip_ch in reversed(channels[:-1]):
            self.ups.append(_Up(in_ch, skip_ch, decoder_width))
            in_ch = decoder_width
        # classification: a 1x1 convolution to the bins' logits, as the paper's last layer
        self.out = nn.Conv2d(in_ch, 2, 3, padding=1) if loss == "l1" else \
            nn.Conv2d(in_ch, len(bin_centers()), 1)

    def forward(self, grey: torch.Tensor) -> torch.Tensor:
        features = self.encoder(grey)
        x = features[-1]
        for up, skip in zip(self.ups, reversed(features[:-1]), strict=True):
            x = up(x, skip)
        x = nn.functional.interpolate(x, size=grey.shape[-2:], mode="bilinear",
                                      align_corners=False)
        return torch.tanh(self.out(x)) if self.loss == "l1" else self.out(x)


def predict_ab(unet: ColorizationUNet, grey: torch.Tensor) -> torch.Tensor:
    """ab / AB_SCALE, (B, 2, H, W), whatever the loss: a classifier's annealed mean."""
    with autocast(grey.device):
        out = unet(channels_last(grey))
    return out.float() if unet.loss == "l1" else annealed_mean(out) / AB_SCALE


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
        predicted = lab_to_rgb(torch.cat([lightness, predict_ab(unet, grey) * AB_SCALE], 1))
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
        total += (predict_ab(unet, grey) - ab).abs().sum(dtype=torch.float64)
    pixels = len(images) * images.shape[-2] * images.shape[-1]
    return total.item() * AB_SCALE / (2 * pixels)


def pretext_phases(config) -> list[tuple[str, float, int]]:
    """(what trains, "decoder" or "all"; Adam's lr; at most how many epochs) per phase: the
    config's schedule, each phase up to `epochs`; else `decoder_epochs` of the decoder alone,
    then the rest with everything, at lr / 50."""
    if config.schedule:
        return [(part, lr, config.epochs) for part, lr in config.schedule]
    split = [("decoder", config.decoder_epochs), ("all", config.epochs - config.decoder_epochs)]
    return [(part, config.lr / 50, epochs) for part, epochs in split if epochs]


def rebalancing(images: Images, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """The class-rebalancing weights of the pretext images' ab bins (ab_bins)."""
    batches = (lab_inputs(fetch(images, slice(b, b + batch_size), device))[1] * AB_SCALE
               for b in range(0, len(images), batch_size))
    return rebalancing_weights(count_bins(batches)).to(device)


def train_colorization(backbone: str, images_np: np.ndarray, config, log: list[float] | None = None,
                       init: dict[str, torch.Tensor] | None = None, *,
                       val_images: np.ndarray | None = None, val_log: list[float] | None = None,
                       phases: list[dict] | None = None, gpus_per_trial: float = 0.0
                       ) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Train the U-Net on unlabeled images, phase by phase (`pretext_phases`); return its
    encoder as backbone weights, and a sample grid. A phase that trains the decoder alone keeps
    the encoder frozen, its BatchNorm statistics too: a new decoder on a pretrained encoder
    would otherwise send large, random gradients into it. The loss is `config.loss`: L1 on ab,
    or Zhang et al.'s rebalanced classification over ab bins.

    Appends each epoch's training loss to `log` and, given held-out `val_images`, their ab error
    in Lab units (`ab_error`) to `val_log`. Each phase stops early once that error has not
    improved for `config.patience` epochs, and hands its best epoch's weights to the next; each
    phase's best epoch and why it stopped go to `phases`. It keeps to a trial's rules on the
    GPU: its share of the memory, and the images resident only within a trial's budget."""
    torch.manual_seed(config.seed)
    device = pick_device()
    hold_to_share(device, gpus_per_trial)
    unet = ColorizationUNet(backbone, loss=config.loss)
    if init is not None:
        backbone_to_encoder(init, unet.encoder)
    unet = unet.to(device, memory_format=torch.channels_last)
    (images, held_out), _ = place_inputs([images_np, val_images], device,
                                         resident_budget(device, gpus_per_trial))
    weights = rebalancing(images, device) if config.loss == "classification" else None
    generator = torch.Generator().manual_seed(config.seed)

    def batch_loss(idx: torch.Tensor) -> tuple[torch.Tensor, int]:
        # Lab in fp32, outside autocast
        grey, ab = lab_inputs(random_flip(fetch(images, idx, device)))
        with autocast(device):
            predicted = unet(channels_last(grey))
        if weights is None:
            return nn.functional.l1_loss(predicted.float(), ab), 0
        return classification_loss(predicted, ab * AB_SCALE, weights), 0

    watched = val_log is not None and held_out is not None and len(held_out) > 0
    for part, lr, epochs in pretext_phases(config):
        unet.encoder.requires_grad_(part == "all")
        optimizer = torch.optim.Adam([p for p in unet.parameters() if p.requires_grad], lr=lr)
        best, stop, epoch = BestEpoch(config.patience, higher=False), False, 0
        while epoch < epochs and not stop:
            epoch += 1
            unet.train()
            if part == "decoder":
                unet.encoder.eval()
            stats = run_epoch(optimizer, len(images), batch_loss, batch_size=config.batch_size,
                              device=device, generator=generator, index_device=images.device)
            if log is not None:
                log.append(stats.loss)
            if watched:
                val_log.append(ab_error(unet, held_out, device))
                stop = best.update(epoch, val_log[-1], unet)
        best.restore(unet)
        if phases is not None:
            phases.append({"trains": part, "lr": lr, **best.summary(epoch, epochs)})
    grid = sample_grid(unet, fetch(images, slice(0, 8), device))
    return encoder_to_backbone(unet.encoder.state_dict(), create_backbone(backbone)), grid
