"""Colorization as the literature does it: Zhang et al.'s ab bins, soft encoding, class
rebalancing and annealed mean; the classification loss training a stage; a three-phase
schedule, each phase from the best weights of the one before."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.helpers import TINY_MODEL
from trainables import ab_bins
from trainables.colorization import ColorizationUNet, predict_ab, pretext_phases
from trainables.lab import lab_inputs, rgb_to_lab
from trainables.pretrain import Stage, StageConfig, run_stage, train_colorization


def srgb_ab(count: int = 50_000, seed: int = 0) -> torch.Tensor:
    """ab (N, 2), Lab units, of random sRGB colours."""
    rgb = torch.rand(count, 3, generator=torch.Generator().manual_seed(seed))
    return rgb_to_lab(rgb.T.reshape(1, 3, -1, 1))[0, 1:, :, 0].T


def test_the_bins_cover_the_srgb_gamut_on_a_10_unit_grid():
    centres = ab_bins.bin_centers()
    assert 200 < len(centres) < 330  # the paper's gamut has 313
    assert torch.allclose(centres % 10, torch.zeros_like(centres))
    ab = srgb_ab()
    cells = ab - centres[ab_bins.nearest_bin(ab)]
    assert cells.abs().max() <= 5 + 1e-4  # every colour lies in its bin's cell
    assert len(torch.unique(ab_bins.nearest_bin(ab))) > 0.9 * len(centres)  # few bins unused


def test_soft_encoding_decodes_back_within_a_bin():
    ab = srgb_ab(5_000)
    index, weights = ab_bins.soft_encode(ab)
    assert index.shape == weights.shape == (5_000, 5)
    assert torch.allclose(weights.sum(1), torch.ones(5_000))
    assert (weights[:, 0] >= weights[:, 1]).all()  # nearest first, weighted most
    probs = torch.zeros(5_000, len(ab_bins.bin_centers())).scatter_(1, index, weights)
    # the 16-cell window finds what a search of every bin finds
    near, every = torch.cdist(ab, ab_bins.bin_centers()).topk(5, largest=False)
    exhaustive = torch.zeros_like(probs).scatter_(
        1, every, torch.softmax(-(near**2) / (2 * ab_bins.SIGMA**2), 1))
    assert (probs - exhaustive).abs().sum(1).max() < 0.1
    logits = probs.clamp_min(1e-12).log().T.reshape(1, -1, 5_000, 1)
    for temperature in (1.0, ab_bins.TEMPERATURE):
        decoded = ab_bins.annealed_mean(logits, temperature)[0, :, :, 0].T
        assert (decoded - ab).abs().max() < 5, temperature  # within half a bin


def test_rebalancing_weights_are_normalised_and_favour_rare_colours():
    counts = torch.zeros(len(ab_bins.bin_centers()))
    counts[ab_bins.nearest_bin(torch.tensor([[0.0, 0.0]]))] = 1000  # mostly grey
    counts += 1
    weights = ab_bins.rebalancing_weights(counts)
    centres = ab_bins.bin_centers().double()
    kernel = torch.exp(-torch.cdist(centres, centres) ** 2 / (2 * ab_bins.SIGMA**2))
    smooth = kernel @ (counts.double() / counts.sum())
    smooth /= smooth.sum()
    assert float((smooth * weights.double()).sum()) == pytest.approx(1.0, abs=1e-5)
    expected = 1 / (0.5 * smooth + 0.5 / len(centres))  # lambda 0.5, up to the normalisation
    assert torch.allclose(weights.double() / weights[0].double(), expected / expected[0],
                          rtol=1e-4)
    grey = ab_bins.nearest_bin(torch.tensor([[0.0, 0.0]]))
    assert weights[grey] == weights.min() and weights.max() / weights.min() > 1.5


def test_the_loss_prefers_the_true_colour_and_weighs_rare_colours_more():
    red = torch.tensor([[80.0, 67.0]]).T.reshape(1, 2, 1, 1)
    logits = torch.zeros(1, len(ab_bins.bin_centers()), 1, 1)
    right = logits.clone()
    right[0, ab_bins.nearest_bin(red.movedim(1, -1)).flatten(), 0, 0] = 5.0
    flat = torch.ones(len(ab_bins.bin_centers()))
    assert ab_bins.classification_loss(right, red, flat) < \
        ab_bins.classification_loss(logits, red, flat)
    heavy = flat * 3
    assert ab_bins.classification_loss(logits, red, heavy) == pytest.approx(
        3 * float(ab_bins.classification_loss(logits, red, flat)))


def test_a_classification_stage_trains_and_decodes_the_annealed_mean(tiny_demo):
    data = tiny_demo.for_search()
    data = replace(data, val=data.val.take(np.arange(40)))
    stage = Stage("colorization", TINY_MODEL, data.fingerprint,
                  StageConfig(epochs=2, lr=0.5, batch_size=16, loss="classification"))
    state, record = run_stage(stage, data)
    assert record["losses"][-1] < record["losses"][0]
    assert all(0 <= e < 110 for e in record["val_l1"])  # decoded to ab, in Lab units
    assert record["samples"].shape[0] == 3 * 32 and record["best_epoch"] in (1, 2)
    unet = ColorizationUNet(TINY_MODEL, loss="classification").eval()
    grey, _ = lab_inputs(torch.from_numpy(np.asarray(data.val.images[:2])))
    with torch.no_grad():
        assert unet(grey).shape[1] == len(ab_bins.bin_centers())
        assert predict_ab(unet, grey).abs().max() <= 1  # ab / 110, as l1's


def test_three_phases_stop_early_each_and_move_the_encoder_only_in_the_last(tiny_demo,
                                                                            monkeypatch):
    """The decoder alone at two rates, then the whole net: each phase stops on its own held-out
    ab error and records its kept epoch; the decoder phases leave the encoder as it started
    (on the CPU, to compare bit for bit)."""
    monkeypatch.setattr("trainables.colorization.pick_device", lambda: torch.device("cpu"))
    schedule = (("decoder", 0.01), ("decoder", 0.001), ("all", 0.001))
    config = StageConfig(epochs=3, batch_size=16, patience=1, schedule=schedule)
    assert pretext_phases(config) == [(p, lr, 3) for p, lr in schedule]
    images, held_out = tiny_demo.train.images, tiny_demo.val.images[:40]
    errors, phases = [], []
    state, _ = train_colorization(TINY_MODEL, images, config, val_images=held_out,
                                  val_log=errors, phases=phases)
    assert [(p["trains"], p["lr"]) for p in phases] == list(schedule)
    assert sum(p["epochs_run"] for p in phases) == len(errors)
    done = 0
    for phase in phases:
        mine = errors[done: done + phase["epochs_run"]]
        assert phase["best_epoch"] == int(np.argmin(mine)) + 1
        assert phase["stopped"] == ("patience" if len(mine) < 3 else "epochs")
        done += phase["epochs_run"]
    decoders, _ = train_colorization(TINY_MODEL, images, replace(config, schedule=schedule[:2]),
                                     val_images=held_out, val_log=[], phases=[])
    untrained, _ = train_colorization(TINY_MODEL, images, replace(
        config, schedule=(("decoder", 0.01),), epochs=1))
    assert all(torch.equal(decoders[k], untrained[k]) for k in untrained)
    assert any(not torch.equal(state[k], untrained[k]) for k in untrained)
