"""Fine-tuning a colorization-pretrained encoder: lr multiplier and how many blocks stay frozen."""

from spaces.dims import Dims
from spaces.recipes import fine_tune
from spaces.registry import SpaceContext, common, lr_mult, register_space


def preset(context: SpaceContext) -> dict:
    """Fine-tuning (BiT-HyperRule) of the whole colorization-pretrained encoder, as Zhang et
    al. (2016) fine-tune theirs for classification."""
    return {**fine_tune(context), "freeze_depth": 0}


@register_space("colorization", preset=preset)
def colorization(dims: Dims, context: SpaceContext) -> None:
    common(dims, context)
    lr_mult(dims)
    dims.int("freeze_depth", 0, context.num_blocks - 1)
