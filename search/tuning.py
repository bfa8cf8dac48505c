"""Wiring: pretraining stages once (search.pretraining), then one Ray Tune `Tuner` per strategy.

Each Tuner gets OptunaSearch (TPE, the strategy's define-by-run space, the study persisted in the
experiment's SQLite file), the ASHA scheduler on val_acc, per-trial resources, checkpoints and
retries, and TensorBoard logging.
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

from search.pretraining import StageOutputs, run_stages, write_stage_outputs
from search.spec import ExperimentSpec
from spaces import SpaceContext, get_space
from trainables.config import RunSettings
from trainables.data.dataset import Dataset
from trainables.models import num_blocks
from trainables.trainable import train_transfer

log = logging.getLogger(__name__)


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
    context = SpaceContext(num_blocks=num_blocks(spec.backbone), max_epochs=spec.max_epochs)
    searcher = OptunaSearch(
        space=get_space(strategy, context),
        metric="val_acc",
        mode="max",
        sampler=optuna.samplers.TPESampler(seed=spec.seed),
        study_name=study_name(spec, strategy),
        storage=optuna.storages.RDBStorage(storage_url),
        seed=spec.seed,
    )
    # ASHA rungs at grace_period * 2^k epochs: a trial runs at least grace_period epochs, and
    # only the better half at each rung goes on to the next.
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=spec.max_epochs,
                              grace_period=spec.grace_period, reduction_factor=2)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(metric="val_acc", mode="max", search_alg=searcher,
                                    scheduler=scheduler, num_samples=spec.samples,
                                    trial_dirname_creator=trial_dirname,
                                    reuse_actors=True),  # no torch import per trial
        run_config=tune.RunConfig(
            name=strategy,
            storage_path=str(spec.exp_dir),
            callbacks=[TBXLoggerCallback()],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=2),
            verbose=1,
        ),
    )


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"  # short: the hyperparameters are in params.json


def study_name(spec: ExperimentSpec, strategy: str) -> str:
    return f"{spec.name}/{strategy}"


def write_experiment(spec: ExperimentSpec, data: Dataset, stages: StageOutputs,
                     storage_url: str) -> None:
    meta = {
        **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(spec).items()},
        "strategies": {s: {"pretrained": stages.labels[s], "study_name": study_name(spec, s)}
                       for s in spec.strategies},
        "optuna_storage": storage_url,
        "dataset": {"name": data.name, "classes": list(data.classes),
                    "fingerprint": data.fingerprint, "train": len(data.train),
                    "val": len(data.val), "test": len(data.test) if data.test else 0},
        "stages": stages.records,
    }
    (spec.exp_dir / "experiment.json").write_text(json.dumps(meta, indent=2))


def run_search(spec: ExperimentSpec, data: Dataset, pretrain: Dataset | None = None) -> Path:
    """Stages, then every strategy's Tuner in turn; returns the experiment directory."""
    data_ref = ray.put(data.for_search())  # one copy in the object store for stages and trials
    stages = run_stages(spec, data, data_ref, pretrain)
    spec.exp_dir.mkdir(parents=True)
    storage_url = f"sqlite:///{spec.exp_dir / 'optuna.db'}"
    write_experiment(spec, data, stages, storage_url)
    write_stage_outputs(spec.exp_dir, stages.records)
    for strategy in spec.strategies:
        print(f"searching {strategy}: {spec.samples} trials x up to {spec.max_epochs} epochs",
              flush=True)
        make_tuner(spec, strategy, data_ref, stages, storage_url).fit()
    return spec.exp_dir
