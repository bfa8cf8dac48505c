"""What the run prints while a strategy's Tuner runs, and where to watch it live.

Ray Tune's own console output at RunConfig's default level (1) is a config box per trial start,
a result box per trial end and a 30-second status table with every config key and metric: over
a search of 48 trials the numbers that matter (epoch, val_acc, how a trial ended) are hard to
find. `ProgressTable` prints one compact row per trial instead, a line when a trial ends, and a
final table. For it to replace Ray's tables rather than print beside them, the Tuner must run
with `RunConfig(verbose=tune_verbosity(level))` *and* `quiet_ray_output(level)` called before
`fit()` (see `quiet_ray_output` for why the verbose number alone is not enough).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from ray.tune import Callback
from ray.tune.experiment import Trial
from tabulate import tabulate

LEVELS = ("quiet", "normal", "verbose")
STOPPED = "STOPPED"  # shown for a trial the scheduler ended before max_epochs

# The common dimensions, then the strategy-specific ones (a column only when a trial has it).
COLUMNS = [("optimizer", "opt"), ("lr", "lr"), ("batch_size", "bs"), ("augment", "augment")]
OPTIONAL_COLUMNS = [("lr_mult", "lr_mult"), ("head", "head"), ("freeze_depth", "depth")]


class ProgressTable(Callback):
    """A compact per-trial table while a strategy's Tuner runs, and a line when a trial ends.

    The table is printed at most every `every_s` seconds and only when some trial moved on (a
    new epoch or status), so a slow trial does not repeat the same table. With `tables=False`
    only the trial-end lines are printed (the `quiet` level). `out=None` writes to whatever
    `sys.stdout` is at print time (so redirect_stdout and pytest's capture see it), not the one
    at import. The callback sits in the RunConfig that Tune pickles into `tuner.pkl`; `out` is
    left out of the pickle, so an open file never breaks that and a resumed run prints to its
    own stdout.
    """

    def __init__(self, strategy: str, max_epochs: int, every_s: float = 10.0,
                 out: TextIO | None = None, tables: bool = True):
        self.strategy = strategy
        self.max_epochs = max_epochs
        self.every_s = every_s
        self.tables = tables
        self._out = out
        self._start = time.monotonic()
        self._last_print = -math.inf
        self._last_rows: list[tuple] = []
        self._total: int | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_out": None}

    # Tune's hooks -------------------------------------------------------------------------

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info) -> None:
        self._start = time.monotonic()
        self._total = total_num_samples

    def on_step_end(self, iteration: int, trials: list[Trial], **info) -> None:
        if not self.tables or time.monotonic() - self._last_print < self.every_s:
            return
        rows = [trial_row(t, self.strategy, self.max_epochs) for t in trials]
        if rows and rows != self._last_rows:  # nothing new: stay silent
            self._print_table(rows)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial,
                          **info) -> None:
        self._write(end_line(trial, self.max_epochs))

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self._write(f"trial {trial.trial_id} errored: {error_message(trial)}")

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial,
                         **info) -> None:
        self._write(f"trial {trial.trial_id} failed at epoch {epochs_done(trial)} (failure "
                    f"{trial.num_failures}), restarting from its last checkpoint: "
                    f"{error_message(trial)}")

    def on_experiment_end(self, trials: list[Trial], **info) -> None:
        if self.tables and trials:
            rows = [trial_row(t, self.strategy, self.max_epochs) for t in trials]
            self._print_table(rows, final=True)

    # Printing -----------------------------------------------------------------------------

    def _print_table(self, rows: list[tuple], final: bool = False) -> None:
        self._last_print, self._last_rows = time.monotonic(), rows
        table = format_table(rows, self.max_epochs)
        self._write(f"\n{self._heading(rows, final)}\n{table}")
        if final and any(row[-1] == STOPPED for row in rows):
            self._write(f"{STOPPED}: stopped early by the scheduler, before {self.max_epochs} "
                        "epochs")

    def _heading(self, rows: list[tuple], final: bool) -> str:
        counts: dict[str, int] = {}
        for row in rows:
            counts[row[-1]] = counts.get(row[-1], 0) + 1
        states = ", ".join(f"{n} {status.lower()}" for status, n in counts.items())
        total = f"/{self._total}" if self._total and self._total < 10**9 else ""
        elapsed = format_duration(time.monotonic() - self._start)
        word = "final" if final else elapsed
        return f"{self.strategy} trials ({len(rows)}{total}; {states}; {word}):"

    def _write(self, text: str) -> None:
        out = self._out or sys.stdout
        print(text, file=out, flush=True)


def trial_row(trial: Trial, strategy: str, max_epochs: int) -> tuple:
    """The row's raw values; compared between steps to tell whether anything changed."""
    result = trial.last_result or {}
    return (trial.trial_id, strategy, frozenset(_params(trial.config).items()),
            epochs_done(trial), result.get("val_acc"), result.get("best_val_acc"),
            trial_status(trial, max_epochs))


def format_table(rows: list[tuple], max_epochs: int) -> str:
    """One row per trial, a column per hyperparameter that some trial has.

    About 80 to 100 columns; at worst (colorization or partial, adamw, batch size 128,
    trivialaugment) 113, since the strategy column repeats on every row.
    """
    params = [dict(row[2]) for row in rows]
    optional = [(key, head) for key, head in OPTIONAL_COLUMNS if any(key in p for p in params)]
    columns = COLUMNS + optional
    headers = ["trial", "strategy", *(head for _, head in columns), "epoch", "val_acc",
               "best", "status"]
    body = [[row[0], row[1], *(format_value(key, values.get(key)) for key, _ in columns),
             f"{row[3]}/{max_epochs}", format_acc(row[4]), format_acc(row[5]), row[6]]
            for row, values in zip(rows, params, strict=True)]
    # Headers as a plain row: tabulate pads header cells by 2 more than their column needs.
    rule = ["-" * max(len(str(cell)) for cell in column)
            for column in zip(headers, *body, strict=True)]
    return tabulate([headers, rule, *body], tablefmt="plain", disable_numparse=True)


def _params(config: dict) -> dict:
    keys = [key for key, _ in COLUMNS + OPTIONAL_COLUMNS]
    return {key: config[key] for key in keys if key in config}


def format_value(key: str, value: Any) -> str:
    """Short numbers: lr=3.2e-03, lr_mult=0.31; '-' when the trial has no such key."""
    if value is None:
        return "-"
    if key == "lr":
        return f"{value:.1e}"
    if key == "lr_mult":
        return f"{value:.2g}"
    return str(value)


def format_acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def epochs_done(trial: Trial) -> int:
    return int((trial.last_result or {}).get("training_iteration", 0))


def trial_status(trial: Trial, max_epochs: int) -> str:
    """Tune's status, except that a trial the scheduler stopped (TERMINATED in Tune, with fewer
    epochs than the budget) shows as STOPPED."""
    if trial.status == Trial.TERMINATED and epochs_done(trial) < max_epochs:
        return STOPPED
    return trial.status


def end_line(trial: Trial, max_epochs: int) -> str:
    """`trial X finished: ...`, `trial X stopped early by the scheduler at epoch N ...`, or
    `trial X failed: diverged: ...`."""
    result = trial.last_result or {}
    if result.get("failure"):  # it ended itself: diverged, or out of memory
        return f"trial {trial.trial_id} failed: {result['failure']}"
    epochs = epochs_done(trial)
    best = result.get("best_val_acc", result.get("val_acc"))
    best_at = result.get("best_epoch", epochs)
    best_text = f"best val_acc {format_acc(best)} at epoch {best_at}"
    if epochs < max_epochs:
        return (f"trial {trial.trial_id} stopped early by the scheduler at epoch {epochs} "
                f"({best_text})")
    return f"trial {trial.trial_id} finished: {best_text}"


def error_message(trial: Trial) -> str:
    """The error's first line, e.g. 'ValueError: lr out of range', read from error.txt.

    Tune also pickles the error beside it, but unpickling runs code: an experiment directory
    can come from elsewhere (--resume of a copy), so the text file is the only one read.
    """
    try:
        text = Path(trial.error_file).read_text(errors="replace")
    except (OSError, TypeError):
        return "unknown error (no error file)"
    return last_exception_line(text) or "unknown error"


def last_exception_line(text: str) -> str:
    """`Type: first line of the message` of the last failure in error.txt.

    Tune appends a 'Failure # N' block per failure, each a traceback; its exception line is the
    first unindented line after the last indented (frame) line, as a message may span lines.
    """
    block = text[text.rfind("Failure # "):] if "Failure # " in text else text
    lines = [line for line in block.splitlines() if line.strip()]
    frames = [i for i, line in enumerate(lines) if line[:1].isspace()]
    if frames and frames[-1] + 1 < len(lines):
        return lines[frames[-1] + 1].strip()
    return lines[-1].strip() if lines else ""


# Verbosity ----------------------------------------------------------------------------------


def tune_verbosity(level: str) -> int:
    """`RunConfig(verbose=...)` for a --verbosity level.

    Ray 2.60 (its default "new output engine", ray.tune.experimental.output.AirVerbosity): 0
    silences the status tables and the per-trial start/end boxes; 1 (RunConfig's default) prints
    those; 2 also prints every reported result and checkpoint (3 is treated as 2). quiet and
    normal use 0, our ProgressTable replacing the tables; verbose uses 2, Ray's fullest output.
    """
    check_level(level)
    return 2 if level == "verbose" else 0


def quiet_ray_output(level: str) -> None:
    """For quiet and normal, switch Tune to its legacy reporter, which is silent at verbose=0.

    At verbose=0 the new output engine still prints a 'Configuration for experiment' box, a
    'View detailed results here' line with a TensorBoard hint pointing at Ray's temporary
    staging folder, and a result box for every errored trial. The legacy engine at 0 prints
    none of that. Tune reads RAY_AIR_NEW_OUTPUT at each `fit()`, so call this before it.
    """
    check_level(level)
    if level != "verbose":
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"


def progress_callbacks(level: str, strategy: str, max_epochs: int) -> list[Callback]:
    """Our callbacks for a level: normal, the table; quiet, only a line as each trial ends.

    quiet keeps the trial-end lines rather than printing nothing until the strategy's summary:
    a strategy's search can take many minutes, and a line per finished trial shows it is alive
    at a cost of one line per trial. verbose leaves the console to Ray's own full output.
    """
    check_level(level)
    if level == "verbose":
        return []
    return [ProgressTable(strategy, max_epochs, tables=level == "normal")]


def check_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"verbosity {level!r}: expected one of {', '.join(LEVELS)}")


# Dashboards ---------------------------------------------------------------------------------


def dashboard_lines(exp_dir: Path | str, dashboard_url: str | None,
                    optuna_command: str) -> list[str]:
    """The lines printed as the run starts: where to watch the search live."""
    if dashboard_url:
        url = dashboard_url if "://" in dashboard_url else f"http://{dashboard_url}"
        ray_line = (f"Ray dashboard:    {url} (token auth: paste the output of "
                    "`ray get-auth-token`)")
    else:
        ray_line = "Ray dashboard:    not running for this Ray instance"
    return [
        ray_line,
        f"TensorBoard:      tensorboard --logdir {exp_dir}",
        f"Optuna dashboard: {optuna_command}",
        '(tensorboard and optuna-dashboard: pip install "transfer-search[dashboards]")',
    ]
