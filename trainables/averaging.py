"""Training tricks on top of the loop: an EMA of the weights (timm's ModelEmaV3) and mixup or
CutMix (timm's Mixup, with its soft-target loss).

With an EMA the trial evaluates, checkpoints and hands back the averaged weights, so the best
epoch, the kept checkpoint and the exported model are one set of weights; the raw weights,
which the optimizer steps, travel in the checkpoint beside them (`TRAIN_KEY`) for a resume.
"""

from __future__ import annotations

from collections.abc import Callable

from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch import nn

from trainables.config import TrialConfig

TRAIN_KEY = "train_model"  # a checkpoint's raw weights, where "model" holds the EMA's


def make_ema(model: nn.Module, hp: TrialConfig) -> ModelEmaV3 | None:
    """The EMA of `model` (on its device), or None where the config has none. The decay warms
    up (1 - (1 + step)^(-2/3), capped at `ema_decay`): a short run's average does not sit at
    its random start."""
    if not hp.ema_decay:
        return None
    return ModelEmaV3(model, decay=hp.ema_decay, use_warmup=True)


def after_steps(model: nn.Module, ema: ModelEmaV3 | None, first_step: int,
                then: Callable[[], None] | None) -> Callable[[], None] | None:
    """What runs after each optimizer step: the EMA's update at its global step count, then
    `then` (the trial's stop check)."""
    if ema is None:
        return then
    step = [first_step]

    def after_step() -> None:
        step[0] += 1
        ema.update(model, step=step[0])
        if then is not None:
            then()

    return after_step


def checkpoint_weights(model: nn.Module, ema: ModelEmaV3 | None) -> dict:
    """The weights a checkpoint keeps: the evaluated ones as "model", the raw ones beside."""
    if ema is None:
        return {"model": model.state_dict()}
    return {"model": ema.module.state_dict(), TRAIN_KEY: model.state_dict()}


def load_weights(state: dict, model: nn.Module, ema: ModelEmaV3 | None) -> None:
    """A checkpoint's weights back into the model and its EMA. A checkpoint without an EMA
    (PBT's exploit of another trial's) starts the average from its weights."""
    model.load_state_dict(state.get(TRAIN_KEY, state["model"]))
    if ema is not None:
        ema.module.load_state_dict(state["model"])


def mixing(hp: TrialConfig, num_classes: int) -> tuple[Mixup | None, nn.Module]:
    """timm's Mixup for the config's mix (None for none) and the loss that fits its targets:
    soft-target cross-entropy, label smoothing folded into the targets, or plain
    cross-entropy with label smoothing."""
    if hp.mix == "none":
        return None, nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)
    alpha = {"mixup_alpha": 0.0, "cutmix_alpha": 0.0, f"{hp.mix}_alpha": hp.mix_alpha}
    mixup = Mixup(**alpha, label_smoothing=hp.label_smoothing, num_classes=num_classes)
    return mixup, SoftTargetCrossEntropy()
