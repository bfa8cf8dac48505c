"""The colorization pretext task: Lab conversion, the U-Net, and the encoder handed to trials."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from tests.helpers import TINY_MODEL
from trainables.colorization import (
    ColorizationUNet,
    ab_error,
    backbone_to_encoder,
    encoder_to_backbone,
)
from trainables.lab import lab_to_rgb, rgb_to_lab
from trainables.models import build_model, create_backbone, head_module
from trainables.pretrain import Stage, StageConfig, public_record, run_stage, train_colorization

# sRGB -> CIELAB (D65) reference values, as published by colour-science tools.
REFERENCE = [
    ((1.0, 0.0, 0.0), (53.2408, 80.0925, 67.2032)),
    ((0.0, 1.0, 0.0), (87.7347, -86.1827, 83.1793)),
    ((0.0, 0.0, 1.0), (32.2970, 79.1875, -107.8602)),
    ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0)),
    ((0.5, 0.5, 0.5), (53.3889, 0.0, 0.0)),
]


@pytest.mark.parametrize(("rgb", "lab"), REFERENCE)
def test_rgb_to_lab_matches_reference_values(rgb, lab):
    got = rgb_to_lab(torch.tensor(rgb).view(1, 3, 1, 1)).flatten()
    assert got.tolist() == pytest.approx(lab, abs=0.02)


def test_lab_round_trip_on_a_batch():
    rgb = torch.rand(4, 3, 8, 8)
    assert torch.allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-4)


def test_unet_predicts_ab_at_input_size():
    out = ColorizationUNet(TINY_MODEL)(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 2, 32, 32)
    assert out.abs().max() <= 1


def test_pretext_loss_decreases_and_encoder_starts_the_classifier(tiny_demo):
    losses = []
    state, grid = train_colorization(TINY_MODEL, tiny_demo.train.images,
                                     StageConfig(epochs=6, lr=0.5, batch_size=16), losses)
    assert losses[-1] < losses[0], losses
    assert grid.shape == (3 * 32, 8 * 32, 3) and grid.dtype == np.uint8
    assert np.array_equal(grid[64:, :32], tiny_demo.train.images[0].transpose(1, 2, 0))

    model = build_model(TINY_MODEL, tiny_demo.num_classes, state=state)
    head = head_module(model)[0] + "."
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(head)}
    assert own.keys() == state.keys()
    assert all(torch.equal(own[k], state[k]) for k in state)


@pytest.mark.parametrize("backbone", [TINY_MODEL, "test_convnext", "test_efficientnet"])
def test_encoder_weights_land_on_the_matching_backbone_tensors(backbone):
    unet = ColorizationUNet(backbone)
    with torch.no_grad():
        for i, p in enumerate(unet.encoder.parameters()):
            p.fill_(i + 1)
    target = create_backbone(backbone)
    mapped = encoder_to_backbone(unet.encoder.state_dict(), target)
    target.load_state_dict(mapped)
    encoder_params = list(unet.encoder.parameters())
    backbone_params = list(target.parameters())[: len(encoder_params)]
    for i, p in enumerate(backbone_params):
        assert torch.all(p == i + 1)


def test_staged_schedule_keeps_the_encoder_fixed_while_the_decoder_trains(tiny_demo):
    config = StageConfig(epochs=2, lr=0.5, batch_size=16, decoder_epochs=2)
    torch.manual_seed(0)
    init = create_backbone(TINY_MODEL).state_dict()
    state, _ = train_colorization(TINY_MODEL, tiny_demo.train.images, config, init=init)
    stats = [k for k in state if "running_" in k]
    assert stats and all(torch.equal(state[k], init[k]) for k in state), \
        "decoder-only epochs must leave encoder weights and BatchNorm statistics unchanged"
    config = StageConfig(epochs=3, lr=0.5, batch_size=16, decoder_epochs=2)
    state, _ = train_colorization(TINY_MODEL, tiny_demo.train.images, config, init=init)
    assert not all(torch.equal(state[k], init[k]) for k in state)


def test_pretext_init_loads_backbone_weights_into_the_encoder():
    """--pretext-init imagenet: the U-Net's encoder starts from the backbone's weights."""
    torch.manual_seed(3)
    source = create_backbone(TINY_MODEL).state_dict()
    unet = ColorizationUNet(TINY_MODEL)
    backbone_to_encoder(source, unet.encoder)
    back = encoder_to_backbone(unet.encoder.state_dict(), create_backbone(TINY_MODEL))
    assert all(torch.equal(back[k], source[k]) for k in source)


class _Grey(nn.Module):
    """Predicts no colour at all (a = b = 0) whatever the input."""

    loss = "l1"

    def forward(self, grey: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(grey[:, :2])


def test_ab_error_is_in_lab_units():
    red = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    red[:, 0] = 255
    grey = torch.full((2, 3, 8, 8), 128, dtype=torch.uint8)
    # predicting grey for pure red misses a = 80.09 and b = 67.20 (the reference values above)
    assert ab_error(_Grey(), red) == pytest.approx((80.0925 + 67.2032) / 2, abs=0.05)
    assert ab_error(_Grey(), grey) == pytest.approx(0, abs=0.05)
    assert ab_error(_Grey(), torch.cat([red, grey]), batch_size=2) == pytest.approx(
        3 * (80.0925 + 67.2032) / 2 / 5, abs=0.05)


def test_held_out_error_per_epoch_without_side_effects_and_the_best_epoch_kept(tiny_demo,
                                                                               monkeypatch):
    """Measuring held-out images runs in eval mode without gradients, so the stage's weights
    at its best epoch are bit for bit those of a stage that trained only that many epochs
    unmeasured; early stopping hands back those weights, not the last epoch's. On the CPU
    wherever it runs: it compares two trainings bit for bit, which a GPU's autotuned,
    nondeterministic cuDNN kernels do not promise."""
    monkeypatch.setattr("trainables.colorization.pick_device", lambda: torch.device("cpu"))
    config = StageConfig(epochs=5, lr=0.5, batch_size=16, patience=1)
    errors, phases = [], []
    measured, _ = train_colorization(TINY_MODEL, tiny_demo.train.images, config,
                                     val_images=tiny_demo.val.images[:40], val_log=errors,
                                     phases=phases)
    assert all(0 <= e < 110 for e in errors), errors
    (phase,) = phases
    best = int(np.argmin(errors)) + 1
    assert (phase["best_epoch"], phase["epochs_run"]) == (best, len(errors))
    assert phase["stopped"] == ("patience" if len(errors) < 5 else "epochs")
    assert len(errors) == min(5, best + 1)  # patience 1: one epoch past the best
    plain, _ = train_colorization(TINY_MODEL, tiny_demo.train.images,
                                  replace(config, epochs=best))
    assert all(torch.equal(plain[k], measured[k]) for k in plain)


def test_colorization_record_holds_its_data_and_held_out_error(tiny_demo):
    data = tiny_demo.for_search()
    data = replace(data, val=data.val.take(np.arange(40)))
    stage = Stage("colorization", TINY_MODEL, data.fingerprint,
                  StageConfig(epochs=2, lr=0.5, batch_size=16))
    _, record = run_stage(stage, data)
    assert len(record["val_l1"]) == 2 and len(record["losses"]) == 2
    assert all(isinstance(e, float) and math.isfinite(e) and e >= 0 for e in record["val_l1"])
    assert (record["epochs"], record["data"], record["images"], record["val_images"]) == (
        2, data.name, len(data.train), 40)
    assert "val_acc" not in record
    assert isinstance(record["samples"], np.ndarray)
    json.dumps(public_record(record))


def test_images_without_a_val_split_train_and_say_so(tiny_demo):
    """A flat folder of images (--pretrain-data) has no val split: nothing is measured."""
    data = tiny_demo.for_search()
    data = replace(data, val=data.val.take(np.arange(0)))
    stage = Stage("colorization", TINY_MODEL, data.fingerprint,
                  StageConfig(epochs=1, lr=0.5, batch_size=16))
    _, record = run_stage(stage, data)
    assert record["val_l1"] == [] and record["val_images"] == 0
