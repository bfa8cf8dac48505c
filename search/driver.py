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

from search.outcomes import summarise_errors, trial_outcomes
from search.phases import RUN
from search.pretraining import StageData, StageOutputs, run_stages, write_stage_outputs
from search.spec import ExperimentSpec
from search.study import checkpoint, open_storage, storage_label
from search.tuning import (
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
        print(f"{'resuming' if restored else 'searching'} {strategy}: {planned_trials(spec)} "
              f"trials x up to {spec.max_epochs} epochs", flush=True)
        tuner = (restore_tuner(spec, strategy, data_ref, stages) if restored
                 else make_tuner(spec, strategy, data_ref, stages, storage, len(data.train)))
        grid = tuner.fit()
        checkpoint(storage)  # the study's write-ahead log into optuna.db, before any upload
        if not finished(grid, spec):
            searched.interrupted = strategy
            publish(spec)
            return searched
        if spec.has_study:
            orphans = close_orphans(storage, study_name(spec, strategy), str(spec.exp_dir))
            if orphans:
                print(f"{strategy}: {orphans} study trial(s) of a killed driver marked failed",
                      flush=True)
        searched.outcomes[strategy] = trial_outcomes(grid)
        write_trials(spec.exp_dir, strategy, searched.outcomes[strategy])
        print(summarise_errors(strategy, searched.outcomes[strategy]), flush=True)
        publish(spec)
    RUN.enter("finish")  # the checkpoints' pruning, the final evaluation, the leaderboard
    return searched


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

