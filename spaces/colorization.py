"""Fine-tuning a colorization-pretrained encoder: lr multiplier and how many blocks stay frozen."""

from spaces.dims import Dims
from spaces.registry import SpaceContext, common, lr_mult, register_space


@register_space("colorization")
def colorization(dims: Dims, context: SpaceContext) -> None:
    common(dims, context)
    lr_mult(dims)
    dims.int("freeze_depth", 0, context.num_blocks - 1)
