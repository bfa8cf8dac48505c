"""Head-only training on a frozen backbone: a linear probe or an MLP head."""

import optuna

from spaces.registry import SpaceContext, common, register_space


@register_space("frozen")
def frozen(trial: optuna.Trial, context: SpaceContext) -> None:
    common(trial)
    if trial.suggest_categorical("head", ["linear", "mlp"]) == "mlp":
        trial.suggest_categorical("head_hidden", [128, 256, 512])
        trial.suggest_float("head_dropout", 0.0, 0.5)
        trial.suggest_categorical("head_bn", [False, True])
