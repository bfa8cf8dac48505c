"""--time-budget: each strategy's share of the wall-clock budget, spent by a Ray Tune Stopper
whose count survives Ctrl-C, a killed driver and --resume.

The budget is split equally between the run's strategies, whose Tuners run one after another,
so each strategy is searched for the same time. A strategy's `BudgetStopper` counts the seconds
its Tuner runs from its first trial's start on (`TrialStarted`): the wait for a trial's
resources and its actor's start (importing torch and timm, 9 s on an idle 2-core machine and
more on a busy one) are no strategy's search time. Once its share is spent it ends the Tuner:
Tune's `stop_all` path starts no more trials (the searcher is set finished) and stops the
running ones, which end TERMINATED with their last epoch's results. Tune tells neither the
searcher nor the callbacks about those, so `settle_stopped` records them in the Optuna study.

Tune's own `TuneConfig(time_budget_s=...)` is not used: its clock is kept only inside Tune. A
restored Tuner builds a new TimeoutStopper with the whole budget from the TuneConfig pickled
into tuner.pkl when the Tuner was made; the time already spent comes back only through the
copy of the stopper in Tune's newest experiment-state snapshot (TuneController's saved state,
which replaces the stopper on restore), written at Ctrl-C and otherwise at most every 10 s,
less often for a large experiment. A driver killed between two snapshots resumes with that
time given back, and nothing outside Tune can tell how long a strategy ran or whether its
budget, rather than Ctrl-C, ended its Tuner. This stopper is kept in those snapshots too, and
also writes what it has spent to the experiment's ledger (store.layout.BUDGET_FILE; for an
experiment at a URI, a copy there too) every few seconds and when it ends; after a restore it
counts on from the larger of the ledger's count and its own.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import pyarrow.fs as pafs
from ray.tune import Callback, ResultGrid
from ray.tune.stopper import Stopper

from search.spec import ExperimentSpec
from store.layout import BUDGET_FILE, read_budget, write_budget
from store.records import PARAMS_FILE, full_budget_seconds
from store.uri import RemoteError, join_uri, open_uri

log = logging.getLogger(__name__)
WRITE_EVERY_S = 5.0  # how often the ledger is written while a Tuner runs: what a kill can lose
STOPPED_BY = "time budget"  # the user attribute `stopped_by` of study trials the budget ended


@dataclass(frozen=True)
class Ledger:
    """The experiment's time-budget ledger: a JSON file in the experiment directory the driver
    owns (for an experiment at a URI, its local staging copy), copied to `uri` if given."""

    exp_dir: Path
    uri: str | None = None

    def read(self, strategy: str) -> dict:
        try:
            return read_budget(self.exp_dir).get(strategy, {})
        except (OSError, ValueError) as error:  # unreadable: the stopper's own count stands
            log.warning("time budget: cannot read %s (%s)", self.exp_dir / BUDGET_FILE, error)
            return {}

    def write(self, strategy: str, entry: dict) -> None:
        try:
            text = write_budget(self.exp_dir, strategy, entry)
            if self.uri:  # a resume elsewhere starts from the URI's files
                fs, path = open_uri(join_uri(self.uri, BUDGET_FILE))
                with fs.open_output_stream(path) as out:
                    out.write(text.encode())
        except (OSError, RemoteError) as error:  # the budget still holds in this process
            log.warning("time budget: cannot write %s (%s)", self.exp_dir / BUDGET_FILE, error)


# Each strategy's ledger where this driver finds the experiment now. Tune's restore replaces
# the stopper a Tuner was given with the copy in its newest experiment-state snapshot, whose
# ledger names the experiment where it was then (it may have been moved since, or staged from
# a URI into another cache); such a copy takes its ledger from here.
_LEDGERS: dict[str, Ledger] = {}
# The strategies whose Tuner in this driver has started a trial. Tune tells a stopper of no
# trial, and replaces it on restore with a copy, so what starts its clock is kept here.
_STARTED: set[str] = set()


def trial_started(strategy: str) -> None:
    _STARTED.add(strategy)


class TrialStarted(Callback):
    """Starts the strategy's budget clock once Tune has started a trial's actor, or a trial
    failed: a Tuner whose actors cannot start still ends with its share."""

    def __init__(self, strategy: str):
        self.strategy = strategy

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        trial_started(self.strategy)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        trial_started(self.strategy)


class BudgetStopper(Stopper):
    """Ends a strategy's Tuner once it has spent `share_s` seconds, over all its runs.

    `clock` is read at every check (Tune's every step); only differences between two reads in
    one process after the Tuner's first trial started count, so neither the time before it nor
    the time a driver was down is spent. Tune pickles the stopper into tuner.pkl and its
    experiment-state snapshots; an unpickled copy reads the ledger first.
    """

    def __init__(self, strategy: str, share_s: float, ledger: Ledger,
                 clock: Callable[[], float] = time.monotonic,
                 write_every_s: float = WRITE_EVERY_S):
        self.strategy = strategy
        self.share_s = float(share_s)
        self.ledger = ledger
        self.clock = clock
        self.write_every_s = write_every_s
        self.spent_s = 0.0
        self.ended = False
        self._last: float | None = None  # the clock at the last check in this process
        self._written = -math.inf

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_last": None, "_written": -math.inf}

    def __call__(self, trial_id: str, result: dict) -> bool:
        trial_started(self.strategy)  # a Tuner saved without the TrialStarted callback
        return False  # the budget ends the whole Tuner, in stop_all

    def stop_all(self) -> bool:
        now = self.clock()
        if self._last is None:  # the first check since built or unpickled: the ledger first
            self._load()
        elif not self.ended and self.strategy in _STARTED:
            self.spent_s += now - self._last
        self._last = now
        if self.ended:
            return True
        self.ended = self.spent_s >= self.share_s
        if self.ended or now - self._written >= self.write_every_s:
            self._written = now
            self.ledger.write(self.strategy, {"share_s": self.share_s,
                                              "spent_s": round(self.spent_s, 3),
                                              "ended": self.ended})
        return self.ended

    def _load(self) -> None:
        self.ledger = _LEDGERS.get(self.strategy, self.ledger)
        entry = self.ledger.read(self.strategy)
        self.spent_s = max(self.spent_s, float(entry.get("spent_s", 0.0)))
        self.ended = self.ended or bool(entry.get("ended"))


def without_fetch_warning(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Failed to fetch metrics")


def share_s(spec: ExperimentSpec) -> float | None:
    """Each strategy's seconds of --time-budget; None without one."""
    if spec.time_budget_s is None:
        return None
    return spec.time_budget_s / len(spec.strategies)


def use_ledger(spec: ExperimentSpec, strategy: str) -> Ledger:
    """The strategy's ledger in the experiment as this driver has it, for every stopper of it
    in this process, the restored ones included."""
    ledger = Ledger(spec.exp_dir, spec.exp_uri if spec.storage_uri else None)
    _LEDGERS[strategy] = ledger
    _STARTED.discard(strategy)  # this Tuner's clock waits for its own first trial
    # Tune warns, with a FileNotFoundError each, of every trial without results once a Tuner
    # ends; a budget leaves a trial or two waiting for a free slot, never started (never_started)
    logging.getLogger("ray.tune.analysis.experiment_analysis").addFilter(without_fetch_warning)
    return ledger


def budget_callbacks(spec: ExperimentSpec, strategy: str) -> list[Callback]:
    """What a Tuner of `strategy` needs besides its stopper; none without --time-budget."""
    return [] if spec.time_budget_s is None else [TrialStarted(strategy)]


def budget_stopper(spec: ExperimentSpec, strategy: str,
                   clock: Callable[[], float] = time.monotonic) -> BudgetStopper | None:
    """The stopper of a new Tuner of `strategy`; None without --time-budget."""
    share = share_s(spec)
    if share is None:
        return None
    return BudgetStopper(strategy, share, use_ledger(spec, strategy), clock)


def never_started(grid: ResultGrid) -> set[str]:
    """The ids of the trials the budget left waiting for a free slot: Tune made their folders
    but never started them (they have no params.json), so they are no trials of the search."""
    return {Path(r.path).name.removeprefix("trial_") for r in grid
            if r.filesystem.get_file_info(f"{r.path}/{PARAMS_FILE}").type
            == pafs.FileType.NotFound}


def ended_by_budget(spec: ExperimentSpec, strategy: str) -> bool:
    """Whether the strategy's share of --time-budget is spent, by its ledger."""
    return spec.time_budget_s is not None and \
        bool(read_budget(spec.exp_dir).get(strategy, {}).get("ended"))


def settle_stopped(storage: optuna.storages.BaseStorage, study_name: str, owner: str,
                   grid: ResultGrid, metrics: list[str], max_epochs: int) -> int:
    """Record in the study the trials the budget stopped while they ran; returns how many.

    Tune stops them without telling its searcher, which would leave their study trials RUNNING
    (and then failed as orphans). Each is told the score of its best epoch so far, as for a
    trial the scheduler stopped, with `stopped_by` = "time budget"; one stopped before its
    first epoch has no score and fails. `metrics` are the study's objectives (val_acc, and the
    trial's time for --objective acc+time, which counts at the full budget)."""
    # by the folder's name: a trial that never reported has, for metrics, what its (reused)
    # actor filled in, which may be an earlier trial's id
    results = {Path(r.path).name.removeprefix("trial_"): r for r in grid}
    running = optuna.load_study(study_name=study_name, storage=storage).get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    settled = 0
    for trial in running:
        result = results.get(trial.user_attrs.get("tune_trial_id"))
        if result is None or trial.user_attrs.get("owner") != owner:
            continue
        reported = result.metrics or {}
        epochs = int(reported.get("training_iteration", 0))
        values = [reported.get(metrics[0])]
        if len(metrics) > 1:
            values.append(full_budget_seconds(reported.get(metrics[1], 0.0), epochs, max_epochs))
        attrs = {"epochs": epochs, "stopped_early": 0 < epochs < max_epochs,
                 "best_epoch": reported.get("best_epoch"), "errored": False,
                 "stopped_by": STOPPED_BY}
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial._trial_id, key, value)
        scored = epochs > 0 and None not in values
        storage.set_trial_state_values(
            trial._trial_id, optuna.trial.TrialState.COMPLETE if scored
            else optuna.trial.TrialState.FAIL, values if scored else None)
        settled += 1
    return settled
