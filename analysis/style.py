"""The one plot style of every figure the analysis writes, and each strategy's fixed colour.

    from analysis.style import apply_style, strategy_colours
"""

from __future__ import annotations

import seaborn as sns

CONTEXT, STYLE, PALETTE = "notebook", "whitegrid", "colorblind"


def apply_style() -> None:
    sns.set_theme(context=CONTEXT, style=STYLE, palette=PALETTE)


def strategy_colours(strategies: list[str]) -> dict[str, tuple[float, float, float]]:
    """The same colour for a strategy in every plot: the registry's order picks it."""
    from trainables.strategies import STRATEGIES  # torch-free: names only

    order = [*STRATEGIES, *sorted(set(strategies) - set(STRATEGIES))]
    colours = sns.color_palette(PALETTE, max(len(order), 1))
    return {name: colours[i % len(colours)] for i, name in enumerate(order)}
