"""The first n backbone blocks frozen (n >= 1), the rest fine-tuned."""

from spaces.dims import Dims
from spaces.registry import SpaceContext, common, lr_mult, register_space


@register_space("partial")
def partial(dims: Dims, context: SpaceContext) -> None:
    common(dims, context)
    lr_mult(dims)
    dims.int("freeze_depth", 1, max(1, context.num_blocks - 1))
