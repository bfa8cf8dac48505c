"""Experiment directories -> tidy DataFrames -> leaderboard and best configs.

Reads result files only (experiment.json, trials.json, each trial's params.json and result.json
as Ray Tune writes them, and eval/results.csv), so it works on a copy of an experiment without
Ray or the code that produced it.

"Best" is store.records' best epoch: the highest val_acc, the latest such epoch on a tie.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from analysis.pareto import pareto_front
from analysis.stats import mean_ci
from store.atomic import atomic_file
from store.best_config import best_config, write_best_config
from store.layout import (
    BEST_DIR,
    EVAL_RESULTS,
    LEADERBOARD_FILE,
    PARETO_FILE,
    best_config_path,
    read_experiment,
    read_trials,
)
from store.records import PARAMS_FILE, best_row, epoch_rows, full_budget_seconds, trial_dirs

# per-trial columns that are not sampled hyperparameters
RESULT_COLUMNS = ("experiment", "strategy", "trial_id", "pretrained", "val_acc", "val_loss",
                  "best_epoch", "epochs", "stopped_early", "errored", "error", "trial_hours",
                  "trial_seconds",
                  "images_per_s", "checkpoint", "trial_dir", "hyperparameters")
CURVE_METRICS = ("val_acc", "val_loss", "train_acc", "train_loss", "lr", "time_total_s")


def trial_statuses(exp_dir: Path) -> dict[str, dict]:
    """trial_id -> {errored, error, ...} from trials.json (absent if the search was cut short)."""
    return {o["trial_id"]: o for outcomes in read_trials(exp_dir).values() for o in outcomes}


def trial_row(exp_dir: Path, strategy: str, trial_dir: Path, meta: dict, status: dict) -> dict:
    rows = epoch_rows(trial_dir)
    best = best_row(rows) or {}
    epochs = max((r.get("training_iteration", 0) for r in rows), default=0)
    errored = bool(status.get("errored", False))
    seconds = max((r.get("time_total_s", 0.0) for r in rows), default=0.0)
    params = json.loads((trial_dir / PARAMS_FILE).read_text())
    return {
        "experiment": exp_dir.name,
        "strategy": strategy,
        "trial_id": trial_dir.name.removeprefix("trial_"),
        "pretrained": meta["strategies"][strategy]["pretrained"],
        **params,
        # the trial's own where the search sampled one (--backbone A,B), else the run's
        "backbone": params.get("backbone") or meta.get("backbone"),
        "val_acc": best.get("val_acc", math.nan),
        "val_loss": best.get("val_loss", math.nan),
        "best_epoch": best.get("training_iteration", 0),
        "epochs": epochs,
        "stopped_early": not errored and 0 < epochs < meta["max_epochs"],
        "errored": errored,
        "error": status.get("error"),
        "trial_hours": seconds / 3600,
        # the time objective of --objective acc+time: at the full epoch budget
        "trial_seconds": full_budget_seconds(seconds, epochs, meta["max_epochs"]) if epochs
        else math.nan,
        "images_per_s": pd.Series([r.get("images_per_s") for r in rows], dtype=float).median(),
        "checkpoint": best.get("checkpoint_dir_name"),
        "trial_dir": str(trial_dir),
        # as sampled: the columns above turn ints into floats where other strategies lack them
        "hyperparameters": json.dumps(params, sort_keys=True),
    }


def load_results(*exp_dirs: str | Path) -> pd.DataFrame:
    """One row per trial of every experiment: its hyperparameters and how it went."""
    rows = []
    for exp_dir in map(Path, exp_dirs):
        meta, statuses = read_experiment(exp_dir), trial_statuses(Path(exp_dir))
        for strategy in meta["strategies"]:
            for trial_dir in trial_dirs(exp_dir, strategy):
                status = statuses.get(trial_dir.name.removeprefix("trial_"), {})
                rows.append(trial_row(exp_dir, strategy, trial_dir, meta, status))
    return pd.DataFrame(rows, columns=None if rows else list(RESULT_COLUMNS))


def load_curves(*exp_dirs: str | Path) -> pd.DataFrame:
    """One row per (trial, epoch): the learning curves, long form."""
    rows = []
    for exp_dir in map(Path, exp_dirs):
        for strategy in read_experiment(exp_dir)["strategies"]:
            for trial_dir in trial_dirs(exp_dir, strategy):
                for r in epoch_rows(trial_dir):
                    rows.append({"experiment": exp_dir.name, "strategy": strategy,
                                 "trial_id": trial_dir.name.removeprefix("trial_"),
                                 "epoch": r.get("training_iteration"),
                                 **{m: r.get(m) for m in CURVE_METRICS}})
    return pd.DataFrame(rows, columns=["experiment", "strategy", "trial_id", "epoch",
                                       *CURVE_METRICS])


def load_eval(*exp_dirs: str | Path) -> pd.DataFrame:
    """The final evaluation's test accuracy, one row per (strategy, seed); empty if none ran."""
    frames = [pd.read_csv(Path(d) / EVAL_RESULTS).assign(experiment=Path(d).name)
              for d in exp_dirs if (Path(d) / EVAL_RESULTS).is_file()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["strategy", "seed", "test_acc", "experiment"])


def leaderboard(df: pd.DataFrame, top_k: int = 3, evals: pd.DataFrame | None = None
                ) -> pd.DataFrame:
    """One row per strategy, best val_acc first; strategies whose every trial failed last.

    Trials of the same strategy from several experiments are pooled into one row.

    Columns: the best trial's val_acc, best_epoch, backbone, trial_id and hyperparameters; the
    mean and std of the top-k trials' val_acc; trials run, errored, stopped early; trial-hours;
    and, when the final evaluation ran, test accuracy as mean, std and 95% interval over seeds.
    """
    rows = []
    for strategy, group in df.groupby("strategy", sort=False):
        ok = group[~group["errored"]].dropna(subset=["val_acc"])
        top = ok.nlargest(top_k, "val_acc")["val_acc"]
        best = ok.loc[ok["val_acc"].idxmax()] if len(ok) else None
        rows.append({
            "strategy": strategy,
            "val_acc": best["val_acc"] if best is not None else math.nan,
            f"top{top_k}_mean": top.mean(),
            f"top{top_k}_std": top.std(ddof=1) if len(top) > 1 else math.nan,
            "trials": len(group),
            "errored": int(group["errored"].sum()),
            "stopped_early": int(group["stopped_early"].sum()),
            "trial_hours": group["trial_hours"].sum(),
            "best_epoch": int(best["best_epoch"]) if best is not None else math.nan,
            "pretrained": group["pretrained"].iloc[0],
            "backbone": best.get("backbone") if best is not None else None,
            "trial_id": best["trial_id"] if best is not None else None,
            "hyperparameters": best["hyperparameters"] if best is not None else "",
        })
    board = pd.DataFrame(rows, columns=None if rows else ["strategy", "val_acc"])
    if evals is not None and len(evals):
        board = board.merge(test_summary(evals), on="strategy", how="left")
    return board.sort_values("val_acc", ascending=False, ignore_index=True, na_position="last")


def test_summary(evals: pd.DataFrame) -> pd.DataFrame:
    """Per strategy: test accuracy mean, std and 95% t-interval over the evaluated seeds."""
    rows = []
    for strategy, group in evals.groupby("strategy", sort=False):
        stats = mean_ci(group["test_acc"].to_numpy())
        rows.append({"strategy": strategy, "test_acc_mean": stats.mean,
                     "test_acc_std": stats.std, "test_ci_low": stats.low,
                     "test_ci_high": stats.high, "test_seeds": stats.n})
    return pd.DataFrame(rows)


def export_best_configs(board: pd.DataFrame, exp_dir: str | Path) -> list[Path]:
    """Write best/<strategy>.yaml for every strategy with a successful trial."""
    exp_dir = Path(exp_dir)
    meta = read_experiment(exp_dir)
    (exp_dir / BEST_DIR).mkdir(exist_ok=True)
    written = []
    for _, row in board.dropna(subset=["val_acc"]).iterrows():
        record = {"best_epoch": int(row["best_epoch"]), "val_acc": float(row["val_acc"]),
                  "trial_id": row["trial_id"], "experiment": str(exp_dir)}
        config = best_config(meta, row["strategy"], row["pretrained"],
                             json.loads(row["hyperparameters"]), record)
        path = best_config_path(exp_dir, row["strategy"])
        write_best_config(path, config)
        written.append(path)
    return written


def write_leaderboard(board: pd.DataFrame, exp_dir: str | Path,
                      front: pd.DataFrame | None = None) -> Path:
    """leaderboard.csv, and leaderboard.md beside it for reading; with `front`, pareto.csv and
    the front as a second table in leaderboard.md."""
    path = Path(exp_dir) / LEADERBOARD_FILE
    with atomic_file(path) as tmp:
        board.to_csv(tmp, index=False)
    text = board.to_markdown(index=False, floatfmt=".4g") + "\n"
    if front is not None:
        with atomic_file(path.with_name(PARETO_FILE)) as tmp:
            front.to_csv(tmp, index=False)
        text += ("\n## Pareto front: val_acc against training time at the full budget (s)\n\n"
                 + front.to_markdown(index=False, floatfmt=".4g") + "\n")
    with atomic_file(path.with_suffix(".md")) as tmp:
        tmp.write_text(text)
    return path


PARETO_COLUMNS = ("strategy", "trial_id", "val_acc", "trial_seconds", "best_epoch", "epochs",
                  "hyperparameters")


def pareto_trials(df: pd.DataFrame) -> pd.DataFrame:
    """The trials of every strategy that no other trial beats on both val_acc and time."""
    ok = df[~df["errored"]] if len(df) else df
    return pareto_front(ok).loc[:, list(PARETO_COLUMNS)].reset_index(drop=True)


def refresh_leaderboard(exp_dir: str | Path, top_k: int = 3) -> pd.DataFrame:
    """Recompute the experiment's leaderboard (with test columns once evaluated) and write it,
    with the best configs, and the Pareto front when the study had two objectives."""
    results = load_results(exp_dir)
    board = leaderboard(results, top_k, evals=load_eval(exp_dir))
    multi = read_experiment(exp_dir).get("objective") == "acc+time"
    write_leaderboard(board, exp_dir, pareto_trials(results) if multi else None)
    export_best_configs(board, exp_dir)
    return board
