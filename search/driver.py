"""The search, start to end: data into the object store, the stages once, then each strategy's
Tuner in turn; on `--resume`, finished strategies are kept and the interrupted one restored.

Each strategy's outcomes go to trials.json as soon as its Tuner ends, so a driver that dies
loses at most the strategy it was running, and that one continues from its trials' checkpoints
and its searcher's saved state.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna
import ray
from ray import tune

from search.budget import ended_by_budget, never_started, settle_stopped, share_s
from search.outcomes import summarise_errors, trial_outcomes
from search.phases import RUN
from search.pretraining import StageData, StageOutputs, run_stages, write_stage_outputs
from search.progress import format_duration
from search.spec import ExperimentSpec
from search.study import checkpoint, open_storage, storage_label
from search.tuning import (
    METRIC,
    TIME_METRIC,
    close_orphans,
    finished,
    make_tuner,
    planned_trials,
    restore_tuner,
    study_name,
)
from store.atomic import atomic_file
from store.layout import SPACE_COPY, read_trials, write_experiment, write_trials
from store.uri import join_uri, upload
from trainables.data.dataset import Dataset


@dataclass
class Search:
    """What the search did: each finished strategy's trial outcomes, and the strategy it was
    running when it was interrupted (Ctrl-C), if any."""

    outcomes: dict[str, list[dict]] = field(default_factory=dict)
    interrupted: str | None = None


def run_search(spec: ExperimentSpec, data: Dataset, sources: StageData) -> Search:
    if spec.verbosity != "verbose":  # not "A new study created in RDB ..." per strategy
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    RUN.enter("stages")
    data_ref = ray.put(data.for_search())  # one copy in the object store for stages and trials
    stages = run_stages(spec, data, data_ref, sources)
    if not spec.resume:
        spec = start_experiment(spec, data, stages)
    storage = open_storage(spec.optuna_storage, spec.exp_dir) if spec.has_study else None
    searched = Search(outcomes=read_trials(spec.exp_dir) if spec.resume else {})
    RUN.enter("trials")
    for strategy in spec.strategies:
        if strategy in searched.outcomes:
            print(f"{strategy}: already searched, kept", flush=True)
            continue
        restored = spec.resume and tune.Tuner.can_restore(join_uri(spec.exp_uri, strategy))
        print(f"{'resuming' if restored else 'searching'} {strategy}: {plan(spec)}", flush=True)
        tuner = (restore_tuner(spec, strategy, data_ref, stages) if restored
                 else make_tuner(spec, strategy, data_ref, stages, storage, len(data.train)))
        grid = tuner.fit()
        checkpoint(storage)  # the study's write-ahead log into optuna.db, before any upload
        by_budget = ended_by_budget(spec, strategy)
        if not finished(grid, spec, by_budget):
            searched.interrupted = strategy
            publish(spec)
            return searched
        waiting = budget_spent(spec, strategy, grid, storage) if by_budget else set()
        if spec.has_study:
            orphans = close_orphans(storage, study_name(spec, strategy), str(spec.exp_dir))
            if orphans:
                print(f"{strategy}: {orphans} study trial(s) of a killed driver marked failed",
                      flush=True)
        searched.outcomes[strategy] = [o for o in trial_outcomes(grid)
                                       if o["trial_id"] not in waiting]
        write_trials(spec.exp_dir, strategy, searched.outcomes[strategy])
        print(summarise_errors(strategy, searched.outcomes[strategy]), flush=True)
        publish(spec)
    RUN.enter("finish")  # the checkpoints' pruning, the final evaluation, the leaderboard
    return searched


def plan(spec: ExperimentSpec) -> str:
    """What a strategy's Tuner will run: its trials, its share of --time-budget, or both."""
    trials, epochs = planned_trials(spec), f"up to {spec.max_epochs} epochs"
    share = share_s(spec)
    if share is None:
        return f"{trials} trials x {epochs}"
    if trials is None:
        return f"as many trials as fit in {format_duration(share)}, each of {epochs}"
    return f"{trials} trials x {epochs}, or {format_duration(share)}, whichever ends first"


def budget_spent(spec: ExperimentSpec, strategy: str, grid: tune.ResultGrid,
                 storage: optuna.storages.BaseStorage | None) -> set[str]:
    """The strategy's share of --time-budget ended its Tuner: say so, and record the trials it
    stopped in the study. Returns the ids of the trials it left waiting, never started."""
    if spec.has_study:
        metrics = [METRIC, TIME_METRIC] if spec.objective == "acc+time" else [METRIC]
        settle_stopped(storage, study_name(spec, strategy), str(spec.exp_dir), grid, metrics,
                       spec.max_epochs)
    waiting = never_started(grid)
    print(f"{strategy}: its {format_duration(share_s(spec))} of --time-budget is spent; "
          f"{len(grid) - len(waiting)} trials ran", flush=True)
    return waiting


def publish(spec: ExperimentSpec) -> None:
    """Upload the driver's files of an experiment whose --storage is a URI (Tune writes its
    strategy folders there itself)."""
    if spec.storage_uri:
        upload(spec.exp_dir, spec.exp_uri, skip=spec.strategies)


def start_experiment(spec: ExperimentSpec, data: Dataset, stages: StageOutputs
                     ) -> ExperimentSpec:
    """Create the experiment directory: experiment.json (the spec, which --resume and the
    analysis read), a copy of the --space file, and the stages' records."""
    from dataclasses import replace

    spec.exp_dir.mkdir(parents=True)
    if spec.space_file:  # the copy is what a resume reads, even if the user's file changes
        with atomic_file(spec.exp_dir / SPACE_COPY) as tmp:
            shutil.copyfile(spec.space_file, tmp)
        spec = replace(spec, space_file=str(spec.exp_dir / SPACE_COPY))
    write_experiment(spec.exp_dir, experiment_record(spec, data, stages))
    write_stage_outputs(spec.exp_dir, stages.records)
    publish(spec)
    return spec


def experiment_record(spec: ExperimentSpec, data: Dataset, stages: StageOutputs) -> dict:
    """experiment.json: the spec, its strategies' stages and studies, and the data."""
    return {
        **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(spec).items()
           if k not in ("resume", "show_space", "optuna_storage")},
        "strategies": {s: {"pretrained": stages.labels[s],
                           "study_name": study_name(spec, s) if spec.has_study else None}
                       for s in spec.strategies},
        # the study's URL for the analysis (a password masked), and the flag for --resume
        "optuna_storage": storage_label(spec.optuna_storage, spec.exp_dir),
        "optuna_storage_flag": (storage_label(spec.optuna_storage, spec.exp_dir)
                                if spec.optuna_storage else None),
        "dataset": {"name": data.name, "classes": list(data.classes),
                    "fingerprint": data.fingerprint, "train": len(data.train),
                    "val": len(data.val), "test": len(data.test) if data.test else 0},
        "stages": stages.records,
    }

