"""LP-FT: linear-probe epochs before fine-tuning everything (Kumar et al., 2022)."""

from spaces.dims import Dims
from spaces.recipes import fine_tune
from spaces.registry import SpaceContext, common, lr_mult, register_space


def preset(context: SpaceContext) -> dict:
    """Fine-tuning (BiT-HyperRule) after a linear probe of a quarter of the epochs: Kumar et
    al. train the probe to convergence first, which a short budget only approaches."""
    return {**fine_tune(context), "probe_epochs": max(1, context.max_epochs // 4)}


@register_space("lp_ft", preset=preset)
def lp_ft(dims: Dims, context: SpaceContext) -> None:
    common(dims, context)
    lr_mult(dims)
    dims.int("probe_epochs", 1, max(1, context.max_epochs // 2))
