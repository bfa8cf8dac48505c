"""Reading experiment results: tidy DataFrames, leaderboards, best configs, reports."""

from analysis.results import (
    export_best_configs,
    leaderboard,
    load_curves,
    load_eval,
    load_results,
    write_leaderboard,
)

__all__ = ["export_best_configs", "leaderboard", "load_curves", "load_eval", "load_results",
           "write_leaderboard"]
