"""Reading experiment results: tidy DataFrames, leaderboards, exported best configs."""

from analysis.results import (
    export_best_configs,
    leaderboard,
    load_results,
    read_experiment,
    write_leaderboard,
)

__all__ = ["export_best_configs", "leaderboard", "load_results", "read_experiment",
           "write_leaderboard"]
