"""Where each of an experiment's files lives, and the reads and writes of its two records.

    <experiment>/
        experiment.json     the run's settings, strategies, data and stages (write_experiment)
        trials.json         each finished strategy's trial outcomes (write_trials)
        time_budget.json    --time-budget: the seconds each strategy's Tuner has spent
                            (write_budget)
        space.yaml          the --space file as the search read it
        <strategy>/         Ray Tune's folder of the strategy's trials and checkpoints
        stages/             each pretraining stage's curves and samples
        best/<strategy>.yaml, leaderboard.csv, leaderboard.md, pareto.csv, timings.json
        eval/               the final evaluation: results.csv, summary.md, plots, model/
        report/             the report: report.md and its plots
"""

from __future__ import annotations

import json
from pathlib import Path

from store.atomic import atomic_file

EXPERIMENT_FILE = "experiment.json"
TRIALS_FILE = "trials.json"
BUDGET_FILE = "time_budget.json"
SPACE_COPY = "space.yaml"
TIMINGS_FILE = "timings.json"
LEADERBOARD_FILE = "leaderboard.csv"  # and leaderboard.md beside it
PARETO_FILE = "pareto.csv"
STAGES_DIR = "stages"
BEST_DIR = "best"
EVAL_DIR = "eval"
EVAL_RESULTS = f"{EVAL_DIR}/results.csv"
EVAL_SUMMARY = f"{EVAL_DIR}/summary.md"
MODEL_DIR = f"{EVAL_DIR}/model"


def is_experiment(exp_dir: str | Path) -> bool:
    return (Path(exp_dir) / EXPERIMENT_FILE).is_file()


def read_experiment(exp_dir: str | Path) -> dict:
    """experiment.json; FileNotFoundError names the folder when it is not an experiment."""
    path = Path(exp_dir) / EXPERIMENT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{exp_dir}: not an experiment directory (no {EXPERIMENT_FILE})")
    return json.loads(path.read_text())


def write_experiment(exp_dir: str | Path, meta: dict) -> None:
    with atomic_file(Path(exp_dir) / EXPERIMENT_FILE) as tmp:
        tmp.write_text(json.dumps(meta, indent=2))


def read_trials(exp_dir: str | Path) -> dict[str, list[dict]]:
    """Each finished strategy's trial outcomes; empty before the first strategy ends."""
    path = Path(exp_dir) / TRIALS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_trials(exp_dir: str | Path, strategy: str, outcomes: list[dict]) -> None:
    """One strategy's outcomes, beside those of the strategies that ended before it."""
    every = read_trials(exp_dir)
    every[strategy] = outcomes
    with atomic_file(Path(exp_dir) / TRIALS_FILE) as tmp:
        tmp.write_text(json.dumps(every, indent=2))


def read_budget(exp_dir: str | Path) -> dict[str, dict]:
    """Each strategy's time-budget entry (share_s, spent_s, ended); empty without one."""
    path = Path(exp_dir) / BUDGET_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_budget(exp_dir: str | Path, strategy: str, entry: dict) -> str:
    """One strategy's entry, beside the others'; returns the file's new text."""
    every = read_budget(exp_dir)
    every[strategy] = entry
    text = json.dumps(every, indent=2)
    with atomic_file(Path(exp_dir) / BUDGET_FILE) as tmp:
        tmp.write_text(text)
    return text


def best_config_path(exp_dir: str | Path, strategy: str) -> Path:
    return Path(exp_dir) / BEST_DIR / f"{strategy}.yaml"
