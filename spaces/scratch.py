"""Training from random initialisation: every weight is new, at higher lrs than fine-tuning's."""

from spaces.dims import Dims
from spaces.recipes import fast_resnet
from spaces.registry import SCRATCH_LR_RANGES, SpaceContext, common, register_space


@register_space("scratch", preset=fast_resnet)
def scratch(dims: Dims, context: SpaceContext) -> None:
    common(dims, context, SCRATCH_LR_RANGES)
