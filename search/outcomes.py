"""After each Tuner: which trials failed and why, and after the search, which checkpoints stay.

`fit()` returns a ResultGrid; an errored trial would otherwise vanish from the leaderboard
without a word. Its status is written to `<experiment>/trials.json`, which the analysis reads.
Every trial keeps its best epoch's checkpoint and its latest one (model and optimizer state,
~100 MB for ResNet-18); once the search is over, only the best checkpoint of each strategy's top
trials is kept, unless the user asks for all.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import ray
from ray import tune

from store.records import RESULT_FILE
from store.uri import checkpoint_dirs, delete_dir
from trainables.failures import OUT_OF_MEMORY


def trial_outcomes(grid: tune.ResultGrid) -> list[dict]:
    """One entry per trial: its id, whether it errored, the first line of the error, its log.

    A trial that diverged or ran out of memory ended itself, without an error for Tune; its
    last result names the failure (`failure_kind`: diverged, out of memory), and it counts as
    errored too."""
    outcomes = []
    for result in grid:
        trial_id = Path(result.path).name.removeprefix("trial_")
        failure = (result.metrics or {}).get("failure")
        entry = {"trial_id": trial_id, "errored": result.error is not None or bool(failure),
                 "path": result.path}
        if failure:
            entry.update(error=failure, failure=result.metrics.get("failure_kind"),
                         error_file=str(Path(result.path) / RESULT_FILE))
        elif result.error is not None:
            entry.update(error=error_line(result.error, result.config or {}),
                         error_file=str(Path(result.path) / "error.txt"))
            if entry["error"].startswith("out of memory"):
                entry["failure"] = OUT_OF_MEMORY
        outcomes.append(entry)
    return outcomes


def error_line(error: BaseException, config: dict) -> str:
    """The last line of a trial's error; a worker that Ray's memory monitor killed (host
    memory nearly full) is named as running out of memory, with the batch size it ran."""
    message = str(error).strip().splitlines()
    line = message[-1] if message else type(error).__name__
    if isinstance(error, ray.exceptions.OutOfMemoryError) or "OutOfMemoryError" in str(error):
        return f"out of memory at batch size {config.get('batch_size')} on the host ({line})"
    return line


def summarise_errors(strategy: str, outcomes: list[dict]) -> str:
    """'scratch: 8 trials, 2 errored; first: ... (log: ...)'."""
    errored = [o for o in outcomes if o["errored"]]
    line = f"{strategy}: {len(outcomes)} trials, {len(errored)} errored"
    if errored:
        line += f"; first: {errored[0]['error']} (log: {errored[0]['error_file']})"
    return line


def prune_checkpoints(trials: pd.DataFrame, keep: int | None, exp_dir: Path, exp_uri: str
                      ) -> list[str]:
    """Delete every checkpoint but the best-epoch one of each strategy's `keep` best trials.

    `trials` is analysis.load_results' table of the experiment read at `exp_dir`; the
    checkpoints are deleted where Tune wrote them, `exp_uri` (the same folder, or a URI).
    `keep=None` keeps everything. Returns the kept checkpoints, relative to the experiment.
    """
    def relative(trial_dir: str) -> str:
        return Path(trial_dir).relative_to(exp_dir).as_posix()

    ranked = trials[~trials["errored"]].sort_values("val_acc", ascending=False)
    kept = {f"{relative(row['trial_dir'])}/{row['checkpoint']}"
            for _, row in ranked.groupby("strategy").head(keep or len(trials)).iterrows()
            if isinstance(row["checkpoint"], str)}
    if keep is None:
        return sorted(kept)
    for trial in map(relative, trials["trial_dir"]):
        for folder in checkpoint_dirs(exp_uri, trial):
            if f"{trial}/{folder.rsplit('/', 1)[-1]}" not in kept:
                delete_dir(exp_uri, folder)
    return sorted(kept)
