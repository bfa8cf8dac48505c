"""The accuracy-time trade-off of `--objective acc+time`: the Pareto front of the trials.

Each trial's time is its time at the full budget (store.records.full_budget_seconds), the rule
Optuna's study and the leaderboard share.
"""

from __future__ import annotations

import pandas as pd


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
