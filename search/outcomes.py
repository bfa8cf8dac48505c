"""After each Tuner: which trials failed and why, and after the search, which checkpoints stay.

`fit()` returns a ResultGrid; an errored trial would otherwise vanish from the leaderboard
without a word. Its status is written to `<experiment>/trials.json`, which the analysis reads.
Every trial keeps its best epoch's checkpoint and its latest one (model and optimizer state,
~100 MB for ResNet-18); once the search is over, only the best checkpoint of each strategy's top
trials is kept, unless the user asks for all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
from ray import tune

from trainables.cache import atomic_file

TRIALS_FILE = "trials.json"


def trial_outcomes(grid: tune.ResultGrid) -> list[dict]:
    """One entry per trial: its id, whether it errored, the first line of the error, its log."""
    outcomes = []
    for result in grid:
        trial_id = Path(result.path).name.removeprefix("trial_")
        entry = {"trial_id": trial_id, "errored": result.error is not None,
                 "path": result.path}
        if result.error is not None:
            message = str(result.error).strip().splitlines()
            entry["error"] = message[-1] if message else type(result.error).__name__
            entry["error_file"] = str(Path(result.path) / "error.txt")
        outcomes.append(entry)
    return outcomes


def read_outcomes(exp_dir: Path) -> dict[str, list[dict]]:
    """Each finished strategy's trial outcomes, as write_outcomes left them."""
    path = exp_dir / TRIALS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_outcomes(exp_dir: Path, strategy: str, outcomes: list[dict]) -> None:
    path = exp_dir / TRIALS_FILE
    every = read_outcomes(exp_dir)
    every[strategy] = outcomes
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(every, indent=2))


def summarise_errors(strategy: str, outcomes: list[dict]) -> str:
    """'scratch: 8 trials, 2 errored; first: ... (log: ...)'."""
    errored = [o for o in outcomes if o["errored"]]
    line = f"{strategy}: {len(outcomes)} trials, {len(errored)} errored"
    if errored:
        line += f"; first: {errored[0]['error']} (log: {errored[0]['error_file']})"
    return line


def prune_checkpoints(trials: pd.DataFrame, keep: int | None) -> list[Path]:
    """Delete every checkpoint but the best-epoch one of each strategy's `keep` best trials.

    `trials` is analysis.load_results' table; `keep=None` keeps everything. Returns the kept
    checkpoint folders.
    """
    kept: list[Path] = []
    ranked = trials[~trials["errored"]].sort_values("val_acc", ascending=False)
    for _, row in ranked.groupby("strategy").head(keep or len(trials)).iterrows():
        if isinstance(row["checkpoint"], str):
            kept.append(Path(row["trial_dir"]) / row["checkpoint"])
    if keep is None:
        return kept
    for trial_dir in trials["trial_dir"]:
        for folder in Path(trial_dir).glob("checkpoint_*"):
            if folder not in kept:
                shutil.rmtree(folder, ignore_errors=True)
    return kept


def disk_use(folder: Path) -> int:
    """Bytes of every file under `folder`."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
