"""A trial's result records as Ray Tune writes them, and the two rules every reader shares.

"Best" is the epoch with the highest val_acc, the latest such epoch on a tie: the one whose
checkpoint Tune keeps and whose score the Optuna study records. A trial's time, for the
accuracy-time objective, is its time at the full epoch budget, so that a trial the scheduler
stopped early is not taken for a fast config.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULT_FILE, PARAMS_FILE = "result.json", "params.json"  # Tune's, in each trial's folder


def epoch_rows(trial_dir: Path) -> list[dict]:
    """The trial's reports in order (result.json: one JSON object per line)."""
    path = Path(trial_dir) / RESULT_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def best_row(rows: list[dict]) -> dict | None:
    """The report of the best epoch: highest val_acc, the latest one on a tie."""
    scored = [r for r in rows if isinstance(r.get("val_acc"), (int, float))]
    return max(reversed(scored), key=lambda r: r["val_acc"], default=None)


def trial_dirs(exp_dir: Path, strategy: str) -> list[Path]:
    """The folders of one strategy's trials, each with the hyperparameters Tune gave it."""
    return sorted(p.parent for p in (Path(exp_dir) / strategy).glob(f"*/{PARAMS_FILE}"))


def full_budget_seconds(seconds: float, epochs: int, max_epochs: int) -> float:
    """Training time at the full epoch budget (s), from `seconds` over `epochs` epochs."""
    return float(seconds) * max_epochs / max(1, int(epochs))
