"""Experiment directory -> tidy DataFrame (one row per trial) -> leaderboard and best configs.

Reads result files only (experiment.json, and each trial's params.json and result.json as
written by Ray Tune), so it works on a copy of an experiment directory without Ray or the code
that produced it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

EXPERIMENT_FILE = "experiment.json"


def read_experiment(exp_dir: Path) -> dict:
    path = Path(exp_dir) / EXPERIMENT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{exp_dir}: not an experiment directory (no {EXPERIMENT_FILE})")
    return json.loads(path.read_text())


def _results(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trial_row(strategy: str, trial_dir: Path, max_epochs: int, pretrained: str) -> dict:
    params = json.loads((trial_dir / "params.json").read_text())
    results = _results(trial_dir)
    best = max(results, key=lambda r: r["val_acc"], default=None)
    epochs = max((r.get("training_iteration", 0) for r in results), default=0)
    return {
        "strategy": strategy,
        "trial_id": results[0]["trial_id"] if results else trial_dir.name,
        "pretrained": pretrained,
        **params,
        "val_acc": best["val_acc"] if best else float("nan"),
        "val_loss": best["val_loss"] if best else float("nan"),
        "best_epoch": best["training_iteration"] if best else 0,
        "epochs": epochs,
        "stopped_early": 0 < epochs < max_epochs,
        "images_per_s": pd.Series([r["images_per_s"] for r in results]).median()
        if results else float("nan"),
        "trial_dir": str(trial_dir),
    }


def load_results(exp_dir: str | Path) -> pd.DataFrame:
    """One row per trial: strategy, hyperparameters, best val_acc, epochs run, stopped early."""
    exp_dir = Path(exp_dir)
    meta = read_experiment(exp_dir)
    rows = []
    for strategy, info in meta["strategies"].items():
        for params in sorted((exp_dir / strategy).glob("*/params.json")):
            rows.append(trial_row(strategy, params.parent, meta["max_epochs"],
                                  info["pretrained"]))
    return pd.DataFrame(rows)


def hyperparameters(df: pd.DataFrame, row: pd.Series) -> dict:
    """The sampled hyperparameters of one row: the params columns that are not NaN."""
    fixed = {"strategy", "trial_id", "pretrained", "val_acc", "val_loss", "best_epoch", "epochs",
             "stopped_early", "images_per_s", "trial_dir"}
    return {k: _plain(row[k]) for k in df.columns if k not in fixed and pd.notna(row[k])}


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def leaderboard(df: pd.DataFrame) -> pd.DataFrame:
    """The best trial per strategy, best strategy first."""
    if df.empty:
        return pd.DataFrame(columns=["strategy", "val_acc", "trials", "hyperparameters"])
    scored = df.dropna(subset=["val_acc"])
    best = scored.loc[scored.groupby("strategy")["val_acc"].idxmax()]
    board = pd.DataFrame({
        "strategy": best["strategy"].values,
        "val_acc": best["val_acc"].values,
        "best_epoch": best["best_epoch"].values,
        "trials": df.groupby("strategy").size().reindex(best["strategy"]).values,
        "pretrained": best["pretrained"].values,
        "trial_id": best["trial_id"].values,
        "hyperparameters": [json.dumps(hyperparameters(df, row)) for _, row in best.iterrows()],
    })
    return board.sort_values("val_acc", ascending=False, ignore_index=True)


def export_best_configs(board: pd.DataFrame, exp_dir: str | Path) -> list[Path]:
    """Write best/<strategy>.yaml: the winning hyperparameters plus the settings to rerun them."""
    exp_dir = Path(exp_dir)
    meta = read_experiment(exp_dir)
    out = exp_dir / "best"
    out.mkdir(exist_ok=True)
    written = []
    for _, row in board.iterrows():
        config = {
            "strategy": row["strategy"],
            "backbone": meta["backbone"],
            "data": meta["data"],
            "pretrained": row["pretrained"],
            "max_epochs": meta["max_epochs"],
            "seed": meta["seed"],
            "hyperparameters": json.loads(row["hyperparameters"]),
            "val_acc": float(row["val_acc"]),
            "best_epoch": int(row["best_epoch"]),
            "trial_id": row["trial_id"],
        }
        path = out / f"{row['strategy']}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        written.append(path)
    return written


def write_leaderboard(board: pd.DataFrame, exp_dir: str | Path) -> Path:
    path = Path(exp_dir) / "leaderboard.csv"
    board.to_csv(path, index=False)
    return path
