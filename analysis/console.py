"""The leaderboard and the Pareto front as plain text for a terminal, at most 120 columns wide.

Pure functions over the DataFrames that analysis.results builds (`leaderboard`,
`pareto_trials`): one compact table per frame, and beneath the leaderboard each strategy's best
hyperparameters, rounded to 3 significant digits, one wrapped line per strategy. The full
precision stays in leaderboard.csv, pareto.csv and best/<strategy>.yaml. An experiment run with
--time-budget gets a line under the table: its budget, each strategy's share and the trials
each strategy ran in it.
"""

from __future__ import annotations

import json
import re
import textwrap

import pandas as pd
from tabulate import tabulate

WIDTH = 120
MISSING = "-"
# read first on each line; the rest follow in their stored (alphabetical) order
LEADING_PARAMS = ("lr", "batch_size", "augment")


def leaderboard_text(board: pd.DataFrame, width: int = WIDTH, meta: dict | None = None) -> str:
    """The leaderboard table, then the best trial's hyperparameters of each strategy; with
    `meta` (experiment.json) of a --time-budget run, the budget's line under the table.

    `width` bounds the hyperparameter lines; the table's cells are of fixed size, ~100
    columns with the test columns and the longest strategy name (colorization)."""
    if board.empty:
        return "leaderboard: no trial has reported yet"
    heading = "leaderboard (val_acc of each strategy's best epoch of its best trial):"
    parts = [heading, _table(leaderboard_columns(board))]
    budget = budget_line(meta or {}, dict(zip(board["strategy"], board["trials"], strict=True)))
    if budget:
        parts.append(budget)
    params = hyperparameter_lines(board, width)
    if params:
        parts += ["", "hyperparameters of each strategy's best trial (3 significant digits):",
                  *params]
    return "\n".join(parts)


def leaderboard_columns(board: pd.DataFrame) -> pd.DataFrame:
    """The shown cells as text; the test column only once the final evaluation has run."""
    k = top_k(board)
    table = pd.DataFrame({
        "strategy": board["strategy"],
        "val_acc": board["val_acc"].map(_acc),
        f"top-{k} mean ± std": list(map(_pm, board[f"top{k}_mean"], board[f"top{k}_std"])),
        "trials": board["trials"].map(_int),
        "errored": board["errored"].map(_int),
        "stopped early": board["stopped_early"].map(_int),
    })
    if "test_acc_mean" in board:
        # the t-interval is symmetric about the mean, so half its width is the ± of the mean
        half = (board["test_ci_high"] - board["test_ci_low"]) / 2
        table["test mean ± 95% CI"] = list(map(_pm, board["test_acc_mean"], half))
        table["seeds"] = board["test_seeds"].map(_int)
    return table


def budget_line(meta: dict, trials: dict[str, int]) -> str | None:
    """'time budget 10m: 5m per strategy; trials in that time: scratch 7, frozen 12' for an
    experiment (its experiment.json) run with --time-budget, `trials` run per strategy; None
    for one without. With --samples too, whichever ended first."""
    budget = meta.get("time_budget_s")
    if not budget:
        return None
    strategies = list(meta.get("strategies") or trials)
    share = duration_text(budget / max(1, len(strategies)))
    cap = f" (or {meta['samples']} trials, whichever ended first)" if meta.get("samples") else ""
    counts = ", ".join(f"{s} {_int(trials.get(s, 0))}" for s in strategies)
    return (f"time budget {duration_text(budget)}: {share} per strategy{cap}; trials in that "
            f"time: {counts}")


def duration_text(seconds: float) -> str:
    """90 -> 1m30s, 600 -> 10m, 5400 -> 1h30m, 22.5 -> 22.5s."""
    hours, rest = divmod(round(float(seconds), 1), 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{int(hours)}h" if hours else "", f"{int(minutes)}m" if minutes else "",
             f"{secs:.3g}s" if secs or not (hours or minutes) else ""]
    return "".join(parts)


def top_k(board: pd.DataFrame) -> int:
    """k of the board's top{k}_mean column (refresh_leaderboard's top_k)."""
    for column in board.columns:
        found = re.fullmatch(r"top(\d+)_mean", str(column))
        if found:
            return int(found.group(1))
    raise KeyError("the leaderboard has no top{k}_mean column")


def hyperparameter_lines(board: pd.DataFrame, width: int = WIDTH) -> list[str]:
    """`unfrozen: lr=0.000312 batch_size=64 augment=light ...`, wrapped under its first value;
    strategies without a successful trial have no best config and no line."""
    rows = board.dropna(subset=["val_acc"])
    rows = rows[rows["hyperparameters"].fillna("").astype(str) != ""]
    if rows.empty:
        return []
    name_width = max(len(str(s)) for s in rows["strategy"]) + 2  # the name and ": "
    lines = []
    for strategy, raw in zip(rows["strategy"], rows["hyperparameters"], strict=True):
        text = format_params(json.loads(raw))
        # break_long_words (textwrap's default) splits a value longer than the whole line
        # rather than let it past the width
        lines += textwrap.wrap(text, width, initial_indent=f"{strategy}: ".ljust(name_width),
                               subsequent_indent=" " * name_width, break_on_hyphens=False)
    return lines


def format_params(params: dict) -> str:
    """key=value pairs, lr first; floats to 3 significant digits."""
    order = [k for k in LEADING_PARAMS if k in params] + \
        [k for k in params if k not in LEADING_PARAMS]
    return " ".join(f"{key}={format_value(params[key])}" for key in order)


def format_value(value) -> str:
    """0.000312345678 -> 0.000312; ints, strings and flags as they are."""
    if isinstance(value, float):
        # a decay such as 0.9999 keeps its digits: at 3 it would read as 1, a different value
        return f"{value:.6g}" if 0.99 < value < 1 else f"{value:.3g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def pareto_text(front: pd.DataFrame) -> str:
    """The Pareto front: trials no other trial beats on both val_acc and full-budget time."""
    heading = "Pareto front (val_acc against training time at the full budget, s):"
    if front.empty:
        return f"{heading}\n(no successful trial)"
    table = pd.DataFrame({
        "strategy": front["strategy"],
        "trial": front["trial_id"].astype(str),
        "val_acc": front["val_acc"].map(_acc),
        "time (s)": front["trial_seconds"].map(_seconds),
        "best epoch": front["best_epoch"].map(_int),
        "epochs": front["epochs"].map(_int),
    })
    return f"{heading}\n{_table(table)}"


def _table(table: pd.DataFrame) -> str:
    # Headers as a plain row under which a rule is drawn: tabulate pads header cells by 2 more
    # than their column needs, which would cost the table ~15 columns. The cells are text
    # already: numparse would re-format them, and "-" is no number.
    headers = [str(c) for c in table.columns]
    body = table.to_numpy().tolist()
    rule = ["-" * max(len(str(cell)) for cell in column)
            for column in zip(headers, *body, strict=True)]
    align = ["left" if c in ("strategy", "trial") else "right" for c in headers]
    return tabulate([headers, rule, *body], tablefmt="plain", disable_numparse=True,
                    colalign=align)


def _missing(value) -> bool:
    return value is None or bool(pd.isna(value))


def _acc(value) -> str:
    return MISSING if _missing(value) else f"{value:.3f}"


def _pm(mean, spread) -> str:
    """mean ± spread; the mean alone where there is no spread to show (one trial or seed)."""
    if _missing(mean):
        return MISSING
    return f"{mean:.3f}" if _missing(spread) else f"{mean:.3f} ± {spread:.3f}"


def _int(value) -> str:
    return MISSING if _missing(value) else str(int(value))


def _seconds(value) -> str:
    return MISSING if _missing(value) else f"{value:.1f}"
