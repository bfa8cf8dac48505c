"""Wiring: pretraining stages once, then one Ray Tune `Tuner` per strategy.

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

from search.spec import ExperimentSpec
from spaces import get_space
from trainables.config import RunSettings
from trainables.data import Dataset
from trainables.stages import (
    StageConfig,
    StageSpec,
    cache_path,
    load_cached,
    run_stage,
    save_cached,
)
from trainables.strategies import get_strategy
from trainables.trainable import train_transfer

log = logging.getLogger(__name__)


def stage_for(spec: ExperimentSpec, strategy: str, data: Dataset) -> StageSpec:
    """Which stage a strategy's weights come from: its default, or the user's --weights file."""
    stage = get_strategy(strategy).pretrained
    if stage == "imagenet" and data.source is not None and not spec.weights:
        stage = "supervised"  # the demo pretrains offline on its own source classes
    if spec.weights and stage != "none":
        return StageSpec("imagenet", spec.backbone, "", StageConfig(), str(spec.weights))
    fingerprints = {"supervised": data.source.fingerprint if data.source else "",
                    "colorization": data.fingerprint}
    config = StageConfig(epochs=spec.pretrain_epochs, seed=spec.seed)
    return StageSpec(stage, spec.backbone, fingerprints.get(stage, ""),
                     config if stage in fingerprints else StageConfig())


def weights_label(stage: StageSpec) -> str:
    """Where a trial's starting weights come from, as recorded in results and exported configs."""
    return f"file:{stage.weights_file}" if stage.weights_file else stage.stage


def prepare_stages(spec: ExperimentSpec, stage_specs: dict[str, StageSpec], data: Dataset,
                   cache_dir: Path) -> tuple[dict[str, ray.ObjectRef | None], list[dict]]:
    """Run each distinct stage once (or load it from the cache); weights go to the object store.

    Returns the weights reference per strategy and a record per stage. Training stages run as one
    Ray task with one trial's resources, so on a cluster they run where a trial could.
    """
    task = ray.remote(num_cpus=spec.cpus_per_trial, num_gpus=spec.gpus_per_trial,
                      max_retries=1)(run_stage)
    by_stage: dict[StageSpec, ray.ObjectRef | None] = {}
    records, running = [], {}
    for stage in dict.fromkeys(stage_specs.values()):
        path = cache_path(cache_dir, stage)
        if stage.stage == "none":
            by_stage[stage] = None
        elif stage.trains and path.is_file():
            by_stage[stage] = ray.put(load_cached(path))
            records.append({"stage": stage.stage, "key": stage.key, "cached": True,
                            "path": str(path)})
        else:  # independent stages run side by side, each as one task
            print(f"pretraining stage {stage.stage} ({stage.backbone}) ...", flush=True)
            running[stage] = task.remote(stage, data, int(spec.cpus_per_trial))
    for stage, future in running.items():
        state, record = ray.get(future)
        record["cached"] = False
        if stage.trains:
            save_cached(cache_path(cache_dir, stage), state)
            record["path"] = str(cache_path(cache_dir, stage))
        by_stage[stage] = ray.put(state)
        records.append(record)
        print(f"pretraining stage {stage.stage} done in {record['seconds']:.0f} s", flush=True)
    return {strategy: by_stage[stage] for strategy, stage in stage_specs.items()}, records


def make_tuner(spec: ExperimentSpec, strategy: str, data_ref: ray.ObjectRef,
               weights_ref: ray.ObjectRef | None, pretrained: str, storage_url: str) -> tune.Tuner:
    settings = RunSettings(strategy=strategy, backbone=spec.backbone, max_epochs=spec.max_epochs,
                           seed=spec.seed, pretrained=pretrained,
                           cpus_per_trial=spec.cpus_per_trial)
    trainable = tune.with_resources(
        tune.with_parameters(train_transfer, settings=settings, data=data_ref,
                             weights=weights_ref),
        {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial},
    )
    searcher = OptunaSearch(
        space=get_space(strategy),
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


def write_experiment(spec: ExperimentSpec, data: Dataset, stages: dict[str, str],
                     records: list[dict], storage_url: str) -> None:
    meta = {
        **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(spec).items()},
        "strategies": {s: {"pretrained": stages[s], "study_name": study_name(spec, s)}
                       for s in spec.strategies},
        "optuna_storage": storage_url,
        "dataset": {"name": data.name, "classes": list(data.classes),
                    "fingerprint": data.fingerprint, "train": len(data.train),
                    "val": len(data.val), "test": len(data.test) if data.test else 0},
        "stages": records,
    }
    (spec.exp_dir / "experiment.json").write_text(json.dumps(meta, indent=2))


def run_search(spec: ExperimentSpec, data: Dataset) -> Path:
    """Stages, then every strategy's Tuner in turn; returns the experiment directory."""
    stage_specs = {s: stage_for(spec, s, data) for s in spec.strategies}
    weights, records = prepare_stages(spec, stage_specs, data, spec.cache_dir / "stages")
    stages = {s: weights_label(stage) for s, stage in stage_specs.items()}
    spec.exp_dir.mkdir(parents=True)
    storage_url = f"sqlite:///{spec.exp_dir / 'optuna.db'}"
    write_experiment(spec, data, stages, records, storage_url)
    data_ref = ray.put(data.for_search())  # one copy in the object store for every trial
    for strategy in spec.strategies:
        print(f"searching {strategy}: {spec.samples} trials x up to {spec.max_epochs} epochs",
              flush=True)
        make_tuner(spec, strategy, data_ref, weights[strategy], stages[strategy],
                   storage_url).fit()
    return spec.exp_dir
