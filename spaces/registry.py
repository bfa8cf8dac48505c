"""The space registry and the dimensions every strategy searches."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import optuna

from trainables.config import AUGMENTATIONS


@dataclass(frozen=True)
class SpaceContext:
    """What a space may depend on besides the trial: the backbone's depth and the epoch budget."""

    num_blocks: int = 5  # the backbone's blocks (trainables.anatomy): what freeze_depth counts
    max_epochs: int = 6


Space = Callable[[optuna.Trial, SpaceContext], None]
SPACES: dict[str, Space] = {}


def register_space(strategy: str):
    def decorator(space: Space) -> Space:
        if strategy in SPACES:
            raise ValueError(f"a space for {strategy!r} is already registered")
        SPACES[strategy] = space
        return space

    return decorator


def get_space(strategy: str, context: SpaceContext | None = None
              ) -> Callable[[optuna.Trial], None]:
    """The strategy's define-by-run space, bound to `context` (picklable for Ray)."""
    if strategy not in SPACES:
        raise KeyError(f"no search space for strategy {strategy!r}; have {sorted(SPACES)}")
    return functools.partial(SPACES[strategy], context=context or SpaceContext())


def common(trial: optuna.Trial, sgd_lr: tuple[float, float] = (1e-3, 0.3)) -> None:
    """Optimizer and lr (log; AdamW's range is lower than SGD's), batch size, augmentation
    policy (with RandAugment's magnitude), weight decay (log) and label smoothing."""
    if trial.suggest_categorical("optimizer", ["sgd", "adamw"]) == "sgd":
        trial.suggest_float("lr", *sgd_lr, log=True)
    else:
        trial.suggest_float("lr", sgd_lr[0] / 100, sgd_lr[1] / 30, log=True)
    trial.suggest_categorical("batch_size", [32, 64, 128])
    if trial.suggest_categorical("augment", list(AUGMENTATIONS)) == "randaugment":
        trial.suggest_int("magnitude", 1, 20)
    trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    trial.suggest_float("label_smoothing", 0.0, 0.2)


def lr_mult(trial: optuna.Trial) -> None:
    """The backbone's lr as a fraction of the head's (discriminative fine-tuning)."""
    trial.suggest_float("lr_mult", 0.01, 1.0, log=True)
