"""The space registry and the dimensions every strategy searches."""

from __future__ import annotations

from collections.abc import Callable

import optuna

from trainables.config import AUGMENTATIONS

Space = Callable[[optuna.Trial], None]
SPACES: dict[str, Space] = {}


def register_space(strategy: str):
    def decorator(space: Space) -> Space:
        if strategy in SPACES:
            raise ValueError(f"a space for {strategy!r} is already registered")
        SPACES[strategy] = space
        return space

    return decorator


def get_space(strategy: str) -> Space:
    if strategy not in SPACES:
        raise KeyError(f"no search space for strategy {strategy!r}; have {sorted(SPACES)}")
    return SPACES[strategy]


def common(trial: optuna.Trial, lr: tuple[float, float], batch_sizes=(32, 64, 128)) -> None:
    """lr (log), batch size, augmentation policy and weight decay (log)."""
    trial.suggest_float("lr", *lr, log=True)
    trial.suggest_categorical("batch_size", list(batch_sizes))
    if trial.suggest_categorical("augment", list(AUGMENTATIONS)) == "randaugment":
        trial.suggest_int("magnitude", 1, 20)
    trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
