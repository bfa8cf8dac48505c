"""The one plot style of every figure the analysis writes, and each strategy's fixed colour.

    from analysis.style import apply_style, strategy_colours
"""

from __future__ import annotations

import seaborn as sns

CONTEXT, STYLE, PALETTE = "notebook", "whitegrid", "colorblind"


def apply_style() -> None:
    sns.set_theme(context=CONTEXT, style=STYLE, palette=PALETTE)


def strategy_colours(strategies: list[str]) -> dict[str, tuple[float, float, float]]:
    """A colour per strategy, picked by its place in `strategies`: every plot of a report passes
    all of the results' strategies, in the experiment's order, so a strategy keeps its colour
    in each plot, whichever of them the plot shows."""
    order = list(dict.fromkeys(strategies))
    colours = sns.color_palette(PALETTE, max(len(order), 1))
    return {name: colours[i % len(colours)] for i, name in enumerate(order)}
