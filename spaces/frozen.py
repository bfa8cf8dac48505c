"""Head-only training on a frozen backbone: a linear probe or an MLP head."""

from spaces.dims import Dims
from spaces.recipes import linear_probe
from spaces.registry import SpaceContext, common, register_space


@register_space("frozen", preset=linear_probe)
def frozen(dims: Dims, context: SpaceContext) -> None:
    common(dims, context)
    if dims.categorical("head", ["linear", "mlp"]) == "mlp":
        dims.categorical("head_hidden", [128, 256, 512])
        dims.float("head_dropout", 0.0, 0.5)
        dims.categorical("head_bn", [False, True])
