"""The first n backbone blocks frozen (n >= 1), the rest fine-tuned."""

from spaces.dims import Dims
from spaces.recipes import fine_tune
from spaces.registry import SpaceContext, common, lr_mult, register_space


def preset(context: SpaceContext) -> dict:
    """Fine-tuning (BiT-HyperRule) with the stem's block kept frozen: the first layers' features
    are the most general (Yosinski et al., "How transferable are features", 2014)."""
    return {**fine_tune(context), "freeze_depth": 1}


@register_space("partial", preset=preset)
def partial(dims: Dims, context: SpaceContext) -> None:
    common(dims, context)
    lr_mult(dims)
    dims.int("freeze_depth", 1, max(1, context.num_blocks - 1))
