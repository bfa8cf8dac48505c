"""The accuracy-time trade-off of `--objective acc+time`: each trial's time, and the Pareto front.

A trial that the scheduler stopped early ran fewer epochs, so its measured time says nothing about
what its config costs. Its time objective is the time it would take at the full budget: seconds
per epoch so far times the epoch budget. Optuna's study and the leaderboard use this one rule.
"""

from __future__ import annotations

import pandas as pd


def full_budget_seconds(seconds: float, epochs: int, max_epochs: int) -> float:
    """Training time at the full epoch budget (s), from `seconds` over `epochs` epochs."""
    return float(seconds) * max_epochs / max(1, int(epochs))


def pareto_front(df: pd.DataFrame, acc: str = "val_acc", time: str = "trial_seconds"
                 ) -> pd.DataFrame:
    """The rows no other row beats on both columns (higher `acc`, lower `time`), by time.

    Rows missing either value (errored trials) are left out."""
    rows = df.dropna(subset=[acc, time]).sort_values([time, acc], ascending=[True, False])
    best, keep = float("-inf"), []
    for index, value in rows[acc].items():  # by rising time: kept while accuracy rises
        if value > best:
            keep.append(index)
            best = value
    return rows.loc[keep]
