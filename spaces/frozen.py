"""Head-only training on a frozen backbone: a linear probe or a small MLP head."""

import optuna

from spaces.registry import common, register_space
from trainables.config import HEADS


@register_space("frozen")
def frozen(trial: optuna.Trial) -> None:
    common(trial, lr=(1e-3, 0.3))
    trial.suggest_categorical("head", list(HEADS))
