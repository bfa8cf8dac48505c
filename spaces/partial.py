"""The first n backbone blocks frozen (n >= 1), the rest fine-tuned."""

import optuna

from spaces.registry import SpaceContext, common, lr_mult, register_space


@register_space("partial")
def partial(trial: optuna.Trial, context: SpaceContext) -> None:
    common(trial)
    lr_mult(trial)
    trial.suggest_int("freeze_depth", 1, max(1, context.num_blocks - 1))
