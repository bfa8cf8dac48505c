"""Training from random initialisation: every weight is new."""

from spaces.dims import Dims
from spaces.registry import SpaceContext, common, register_space


@register_space("scratch")
def scratch(dims: Dims, context: SpaceContext) -> None:
    common(dims, context)
