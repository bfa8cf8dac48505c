"""Wiring: pretraining stages once (search.pretraining), then one Ray Tune `Tuner` per strategy.

Each Tuner gets OptunaSearch (TPE, the strategy's define-by-run space, the study persisted in the
experiment's SQLite file), the ASHA scheduler, per-trial resources, checkpoints and retries, and
TensorBoard logging. Search, scheduler, leaderboard and kept checkpoint all rank by one number:
the trial's best epoch's val_acc (`best_val_acc`, see trainables.trainable). With `--config`, one
Tuner trains the given hyperparameters once, without a search.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import optuna
import ray
from ray import tune
from ray.tune.logger import TBXLoggerCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from search.outcomes import summarise_errors, trial_outcomes, write_outcomes
from search.pretraining import StageOutputs, run_stages, write_stage_outputs
from search.spec import ExperimentSpec
from spaces import SpaceContext, get_space
from trainables.config import RunSettings
from trainables.data.dataset import Dataset
from trainables.models import num_blocks
from trainables.trainable import train_transfer

log = logging.getLogger(__name__)
METRIC = "best_val_acc"


class MarkedOptunaSearch(OptunaSearch):
    """OptunaSearch that marks each study trial with how it ended.

    Optuna records a trial that ASHA stopped as COMPLETE with its truncated score; the user
    attributes `epochs` and `stopped_early` tell it from a full-budget trial, and an errored
    trial is recorded as FAIL, never with the partial score of its last report.
    """

    def __init__(self, *args, max_epochs: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_epochs = max_epochs

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        study_trial = self._ot_trials.get(trial_id)  # OptunaSearch's own map of live trials
        if study_trial is not None and trial_id not in self._completed_trials:
            epochs = int((result or {}).get("training_iteration", 0))
            study_trial.set_user_attr("tune_trial_id", trial_id)
            study_trial.set_user_attr("epochs", epochs)
            study_trial.set_user_attr("stopped_early", 0 < epochs < self.max_epochs)
            study_trial.set_user_attr("best_epoch", (result or {}).get("best_epoch"))
            study_trial.set_user_attr("errored", bool(error))
        super().on_trial_complete(trial_id, None if error else result, error)


def make_tuner(spec: ExperimentSpec, strategy: str, data_ref: ray.ObjectRef,
               stages: StageOutputs, storage_url: str) -> tune.Tuner:
    settings = RunSettings(strategy=strategy, backbone=spec.backbone, max_epochs=spec.max_epochs,
                           seed=spec.seed, cpus_per_trial=spec.cpus_per_trial)
    trainable = tune.with_resources(
        tune.with_parameters(train_transfer, settings=settings, data=data_ref,
                             weights=stages.weights[strategy],
                             features=stages.features[strategy]),
        {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial},
    )
    if spec.hyperparameters is not None:  # --config: these values, once, no search
        tune_config = tune.TuneConfig(metric=METRIC, mode="max", num_samples=1,
                                      trial_dirname_creator=trial_dirname)
        return tune.Tuner(trainable, param_space=dict(spec.hyperparameters),
                          tune_config=tune_config, run_config=run_config(spec, strategy))
    context = SpaceContext(num_blocks=num_blocks(spec.backbone), max_epochs=spec.max_epochs)
    searcher = MarkedOptunaSearch(
        space=get_space(strategy, context),
        metric=METRIC,
        mode="max",
        sampler=optuna.samplers.TPESampler(seed=spec.seed),
        study_name=study_name(spec, strategy),
        storage=optuna.storages.RDBStorage(storage_url),
        seed=spec.seed,
        max_epochs=spec.max_epochs,
    )
    # ASHA rungs at grace_period * 2^k epochs: a trial runs at least grace_period epochs, and
    # only the better half at each rung goes on to the next.
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=spec.max_epochs,
                              grace_period=spec.grace_period, reduction_factor=2)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", search_alg=searcher,
                                    scheduler=scheduler, num_samples=spec.samples,
                                    trial_dirname_creator=trial_dirname,
                                    reuse_actors=True),  # no torch import per trial
        run_config=run_config(spec, strategy),
    )


def run_config(spec: ExperimentSpec, strategy: str) -> tune.RunConfig:
    # Tune keeps the best-val_acc epoch's checkpoint (the one the leaderboard's number comes
    # from) and, apart from it, always the latest, which a failed trial resumes from.
    return tune.RunConfig(
        name=strategy,
        storage_path=str(spec.exp_dir),
        callbacks=[TBXLoggerCallback()],
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1,
                                                checkpoint_score_attribute="val_acc",
                                                checkpoint_score_order="max"),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        verbose=1,
    )


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"  # short: the hyperparameters are in params.json


def study_name(spec: ExperimentSpec, strategy: str) -> str:
    return f"{spec.name}/{strategy}"


def write_experiment(spec: ExperimentSpec, data: Dataset, stages: StageOutputs,
                     storage_url: str) -> None:
    meta = {
        **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(spec).items()},
        "strategies": {s: {"pretrained": stages.labels[s],
                           "study_name": None if spec.hyperparameters else study_name(spec, s)}
                       for s in spec.strategies},
        "optuna_storage": storage_url,
        "dataset": {"name": data.name, "classes": list(data.classes),
                    "fingerprint": data.fingerprint, "train": len(data.train),
                    "val": len(data.val), "test": len(data.test) if data.test else 0},
        "stages": stages.records,
    }
    (spec.exp_dir / "experiment.json").write_text(json.dumps(meta, indent=2))


def run_search(spec: ExperimentSpec, data: Dataset, pretrain: Dataset | None = None
               ) -> dict[str, list[dict]]:
    """Stages, then every strategy's Tuner in turn; returns each strategy's trial outcomes."""
    data_ref = ray.put(data.for_search())  # one copy in the object store for stages and trials
    stages = run_stages(spec, data, data_ref, pretrain)
    spec.exp_dir.mkdir(parents=True)
    storage_url = f"sqlite:///{spec.exp_dir / 'optuna.db'}"
    write_experiment(spec, data, stages, storage_url)
    write_stage_outputs(spec.exp_dir, stages.records)
    outcomes = {}
    for strategy in spec.strategies:
        print(f"searching {strategy}: {spec.samples} trials x up to {spec.max_epochs} epochs",
              flush=True)
        grid = make_tuner(spec, strategy, data_ref, stages, storage_url).fit()
        outcomes[strategy] = trial_outcomes(grid)
        write_outcomes(spec.exp_dir, strategy, outcomes[strategy])
        print(summarise_errors(strategy, outcomes[strategy]), flush=True)
    return outcomes
