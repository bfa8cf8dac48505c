"""The training tricks the spaces search change training as they claim: an EMA's weights are
the ones evaluated, kept and handed back; mixup and CutMix train on soft targets; the
random-resized crop keeps within its scale range; the warmup is the share of the schedule it
names; and each strategy's preset is a config inside its own space."""

import math

import pytest
import torch
from torch import nn

from spaces import SPACES, get_space, to_study_params
from spaces.dims import Choices, Fixed, ProbeTrial
from spaces.recipes import steps_batch
from spaces.registry import WD_RANGES, SpaceContext, get_preset
from tests.helpers import TINY_MODEL
from trainables.averaging import TRAIN_KEY, mixing
from trainables.config import RunSettings, TrialConfig
from trainables.data.augment import crop_boxes, random_resized_crop
from trainables.loop import evaluate, train_epoch
from trainables.models import build_model, normalizer
from trainables.trainable import fit, lr_schedule

HP = TrialConfig(lr=0.05, batch_size=16, augment="flip", weight_decay=1e-4)


def test_an_ema_is_what_the_trial_evaluates_keeps_and_returns(tiny_demo):
    reports = []
    model = fit(RunSettings("scratch", TINY_MODEL, 2, 0),
                TrialConfig(**{**HP.to_dict(), "ema_decay": 0.9}), tiny_demo.train,
                tiny_demo.val, None, num_classes=tiny_demo.num_classes,
                report=lambda metrics, state: reports.append((metrics, state())))
    metrics, state = reports[-1]
    kept, raw = state["model"], state[TRAIN_KEY]
    returned = model.state_dict()
    assert all(torch.equal(returned[k], kept[k]) for k in kept)  # the EMA, checkpointed
    differing = [k for k in kept if kept[k].is_floating_point()
                 and not torch.allclose(kept[k], raw[k])]
    assert len(differing) > len(kept) // 2  # the average is not the raw weights
    device = next(model.parameters()).device
    score = evaluate(model, torch.from_numpy(tiny_demo.val.images).to(device),
                     torch.from_numpy(tiny_demo.val.labels).to(device),
                     normalize=normalizer(model).to(device), device=device)
    assert metrics["val_acc"] == pytest.approx(score.accuracy)  # the score is the EMA's


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_mixing_trains_on_soft_targets(tiny_demo, mix):
    hp = TrialConfig(**{**HP.to_dict(), "mix": mix, "mix_alpha": 1.0, "label_smoothing": 0.1})
    mixup, loss_fn = mixing(hp, tiny_demo.num_classes)
    seen = []

    def spy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seen.append(target)
        return loss_fn(logits, target)

    model = build_model(TINY_MODEL, tiny_demo.num_classes, "linear", None)
    stats = train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.01),
                        torch.from_numpy(tiny_demo.train.images),
                        torch.from_numpy(tiny_demo.train.labels), batch_size=hp.batch_size,
                        policy="none", normalize=normalizer(model), loss_fn=spy,
                        device=torch.device("cpu"), generator=torch.Generator().manual_seed(0),
                        mixup=mixup)
    assert math.isfinite(stats.loss)
    for target in seen:  # one row per image, a distribution over the classes
        assert target.shape[1] == tiny_demo.num_classes
        assert torch.allclose(target.sum(1), torch.ones(len(target)))
    top = torch.cat([t.max(1).values for t in seen])
    assert (top < 0.9).float().mean() > 0.3  # many rows mix two classes: soft, not one-hot


def test_random_resized_crops_keep_within_their_scale_and_ratio():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (256, 3, 48, 48), dtype=torch.uint8)
    boxes = crop_boxes(x, (0.35, 1.0))
    w, h = boxes[:, 3] - boxes[:, 1], boxes[:, 4] - boxes[:, 2]
    assert ((boxes[:, 1] >= 0) & (boxes[:, 2] >= 0) & (boxes[:, 3] <= 48)
            & (boxes[:, 4] <= 48)).all()
    # torchvision rounds each side to whole pixels: the area may fall short by up to a side
    assert (w * h >= 0.35 * 48 * 48 - (w + h)).all() and (w * h <= 48 * 48).all()
    assert (w * h < 0.6 * 48 * 48).any() and (w / h).max() <= 4 / 3 + 1 / h.min()
    out = random_resized_crop(x, (0.35, 1.0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert not torch.equal(out, x)


def test_the_warmup_is_the_share_of_the_schedule_it_names():
    def lrs(warmup: float) -> list[float]:
        optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
        schedule = lr_schedule(optimizer, 100, warmup)
        out = []
        for step in range(100):
            schedule.step_update(step)
            out.append(optimizer.param_groups[0]["lr"])
        return out

    warm = lrs(0.3)
    assert warm[0] == 0.0 and warm[15] == pytest.approx(0.5, abs=0.02)
    assert max(warm) == warm[30] and all(a > b for a, b in zip(warm[30:], warm[31:], strict=False))
    assert lrs(0.0)[0] == 1.0  # no warmup: the first step trains at the peak


def test_adamw_searches_its_own_decoupled_weight_decay():
    assert WD_RANGES["adamw"][0] <= 0.05 <= WD_RANGES["adamw"][1]  # DeiT's and timm's default
    assert WD_RANGES["sgd"][1] < 0.05


def test_the_scratch_preset_takes_the_batch_that_comes_nearest_its_recipes_steps():
    """Page's schedule is about 1,000 steps: 3 epochs of 3,750 images get the most steps at the
    smallest batch, with the lr scaled down as the spaces scale it; 10 epochs of 50,000 fill
    them at the largest; an unknown training split keeps the largest."""
    short = get_preset("scratch", SpaceContext(train_images=3750, max_epochs=3))
    assert (short["batch_size"], short["lr"]) == (32, pytest.approx(0.05))
    long = get_preset("scratch", SpaceContext(train_images=50_000, max_epochs=10))
    assert (long["batch_size"], long["lr"]) == (128, pytest.approx(0.1))
    assert get_preset("scratch", SpaceContext())["batch_size"] == 128
    assert steps_batch(SpaceContext(train_images=50_000, max_epochs=1), 200) == 128
    assert steps_batch(SpaceContext(train_images=50_000, max_epochs=1), 600) == 64


@pytest.mark.parametrize("context", [SpaceContext(), SpaceContext(image_size=128)],
                         ids=["32px", "128px"])
@pytest.mark.parametrize("strategy", sorted(SPACES))
def test_each_preset_is_a_full_config_inside_its_space(strategy, context):
    preset = get_preset(strategy, context)
    point = to_study_params(preset)

    def pick(name, spec):
        assert name in point, f"the preset of {strategy} leaves {name} to the sampler"
        assert spec.contains(point[name]), f"{name}={point[name]} lies outside {spec}"
        return point[name]

    dims = get_space(strategy, context).trace(ProbeTrial(pick))
    assert not any(isinstance(spec, Fixed) for spec in dims.specs.values())
    augment = dims.specs["augment"]
    assert isinstance(augment, Choices)
    assert preset.get("augment") in ("none", "rrc" if context.image_size >= 64 else "crop_flip")
