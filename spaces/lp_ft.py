"""LP-FT: linear-probe epochs before fine-tuning everything (Kumar et al., 2022)."""

import optuna

from spaces.registry import SpaceContext, common, lr_mult, register_space


@register_space("lp_ft")
def lp_ft(trial: optuna.Trial, context: SpaceContext) -> None:
    common(trial)
    lr_mult(trial)
    trial.suggest_int("probe_epochs", 1, max(1, context.max_epochs // 2))
