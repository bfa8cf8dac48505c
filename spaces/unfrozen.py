"""Full fine-tuning with a searched backbone lr multiplier."""

from spaces.dims import Dims
from spaces.recipes import fine_tune
from spaces.registry import SpaceContext, common, lr_mult, register_space


@register_space("unfrozen", preset=fine_tune)
def unfrozen(dims: Dims, context: SpaceContext) -> None:
    common(dims, context)
    lr_mult(dims)
