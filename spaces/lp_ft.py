"""LP-FT: linear-probe epochs before fine-tuning everything (Kumar et al., 2022)."""

from spaces.dims import Dims
from spaces.registry import SpaceContext, common, lr_mult, register_space


@register_space("lp_ft")
def lp_ft(dims: Dims, context: SpaceContext) -> None:
    common(dims, context)
    lr_mult(dims)
    dims.int("probe_epochs", 1, max(1, context.max_epochs // 2))
