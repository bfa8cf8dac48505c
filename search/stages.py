"""Driver side of the pretraining stages: which one each strategy needs, each run once, cached.

A stage that trains runs as one Ray task with one trial's resources, so on a cluster it runs where
a trial could; independent stages run side by side. Results are cached under
`<cache>/stages/<stage>-<backbone>-<hash>/` (weights, record, colorization samples), so N trials,
and later experiments on the same machine, cause one stage run. Frozen backbones also get their
train/val features computed once here, for the head-only fast path.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
from PIL import Image
from tensorboardX import SummaryWriter

from search.spec import ExperimentSpec
from trainables.data import DataError, Dataset, fingerprint
from trainables.features import Features, compute_features
from trainables.stages import (
    StageConfig,
    StageSpec,
    cache_path,
    load_cached,
    run_stage,
    save_cached,
)
from trainables.strategies import get_strategy


@dataclass(frozen=True)
class Prepared:
    """Object-store references per strategy, and what happened, for experiment.json."""

    weights: dict[str, ray.ObjectRef | None]
    features: dict[str, ray.ObjectRef | None]
    labels: dict[str, str]  # where each strategy's weights come from
    records: list[dict]


def stage_for(spec: ExperimentSpec, strategy: str, data: Dataset,
              pretrain: Dataset | None) -> StageSpec:
    """The stage a strategy's weights come from: --weights, else --pretrained, else its default
    (on the demo, `imagenet` means the demo's own supervised pretraining)."""
    default = get_strategy(strategy).pretrained
    if default == "none":
        return StageSpec("none", spec.backbone, "", StageConfig())
    if spec.weights:
        return StageSpec("imagenet", spec.backbone, "", StageConfig(), str(spec.weights))
    stage = spec.pretrained or default
    if stage == "imagenet" and not spec.pretrained and data.source is not None:
        stage = "supervised"
    if stage not in ("supervised", "colorization"):
        return StageSpec(stage, spec.backbone, "", StageConfig())
    config = StageConfig(epochs=spec.pretrain_epochs, seed=spec.seed, init=spec.pretext_init,
                         decoder_epochs=spec.pretext_decoder_epochs)
    return StageSpec(stage, spec.backbone, stage_data(stage, data, pretrain).fingerprint, config)


def stage_data(stage: str, data: Dataset, pretrain: Dataset | None) -> Dataset:
    """What a stage trains on: --pretrain-data; else the demo's source classes (supervised) or
    the target's own training images (colorization)."""
    if pretrain is not None:
        return pretrain
    if stage == "supervised":
        if data.source is None:
            raise DataError("supervised pretraining needs --pretrain-data off the demo")
        return data.source
    return data.for_search()


def check_stage_data(spec: ExperimentSpec, data: Dataset, pretrain: Dataset | None) -> None:
    """Before anything starts: every stage the strategies need has data it can train on."""
    for strategy in spec.strategies:
        stage = stage_for(spec, strategy, data, pretrain).stage
        if stage == "supervised" and stage_data(stage, data, pretrain).num_classes < 2:
            raise DataError("supervised pretraining needs a labeled --pretrain-data with two or "
                            "more classes (a flat folder of images only serves colorization)")


def weights_label(stage: StageSpec) -> str:
    return f"file:{stage.weights_file}" if stage.weights_file else stage.stage


def prepare(spec: ExperimentSpec, data: Dataset, data_ref: ray.ObjectRef,
            pretrain: Dataset | None) -> Prepared:
    """Run or load every stage, then the frozen-backbone features. `data_ref` is the search
    data already in the object store: stages and trials that use it share that one copy."""
    stage_specs = {s: stage_for(spec, s, data, pretrain) for s in spec.strategies}
    cache_dir = spec.cache_dir / "stages"
    # two returns: the weights stay in the object store where the task put them, for the trials,
    # while the driver fetches a copy to cache
    task = ray.remote(num_cpus=spec.cpus_per_trial, num_gpus=spec.gpus_per_trial,
                      max_retries=1, num_returns=2)(run_stage)
    by_stage: dict[StageSpec, ray.ObjectRef | None] = {}
    records, running = [], {}
    for stage in dict.fromkeys(stage_specs.values()):
        path = cache_path(cache_dir, stage)
        if stage.stage == "none":
            by_stage[stage] = None
        elif stage.trains and path.is_file():
            by_stage[stage] = ray.put(load_cached(path))
            record = json.loads((path.parent / "record.json").read_text())
            records.append({**record, "cached": True, "path": str(path)})
        else:
            print(f"pretraining stage {stage.stage} ({stage.backbone}) ...", flush=True)
            source = None
            if stage.trains:  # a Ray task resolves a reference argument to its value
                own = stage.stage == "colorization" and pretrain is None
                source = data_ref if own else stage_data(stage.stage, data, pretrain)
            running[stage] = task.remote(stage, source, int(spec.cpus_per_trial))
    for stage, (state_ref, record_ref) in running.items():  # started together: side by side
        state, record = ray.get([state_ref, record_ref])
        if stage.trains:
            save_stage(cache_path(cache_dir, stage), state, record)
        records.append({**record, "cached": False, "path": str(cache_path(cache_dir, stage))})
        by_stage[stage] = state_ref
        print(f"pretraining stage {stage.stage} done in {record['seconds']:.0f} s", flush=True)
    weights = {s: by_stage[stage] for s, stage in stage_specs.items()}
    features = prepare_features(spec, data, data_ref, stage_specs, weights)
    labels = {s: weights_label(stage) for s, stage in stage_specs.items()}
    return Prepared(weights, features, labels, [_public(r) for r in records])


def save_stage(path: Path, state: dict, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if "samples" in record:
        Image.fromarray(record["samples"]).save(path.parent / "samples.png")
    (path.parent / "record.json").write_text(json.dumps(_public(record), indent=2))
    save_cached(path, state)  # last: its presence marks the entry complete


def _public(record: dict) -> dict:
    return {k: v for k, v in record.items() if not isinstance(v, np.ndarray)}


def prepare_features(spec: ExperimentSpec, data: Dataset, data_ref: ray.ObjectRef,
                     stage_specs: dict[str, StageSpec], weights: dict[str, ray.ObjectRef | None]
                     ) -> dict[str, ray.ObjectRef | None]:
    """Backbone features once per (weights, data) for strategies whose backbone never trains."""
    task = ray.remote(num_cpus=spec.cpus_per_trial, num_gpus=spec.gpus_per_trial,
                      max_retries=1)(compute_features)
    refs: dict[str, ray.ObjectRef | None] = {}
    done: dict[StageSpec, ray.ObjectRef] = {}
    for strategy, stage in stage_specs.items():
        if not get_strategy(strategy).frozen_backbone:
            refs[strategy] = None
            continue
        if stage not in done:
            path = spec.cache_dir / "features" / (
                fingerprint(stage.key, data.fingerprint, spec.backbone) + ".npz")
            if path.is_file():
                cached = np.load(path)
                done[stage] = ray.put(Features(cached["train"], cached["val"]))
            else:
                done[stage] = task.remote(spec.backbone, weights[strategy], data_ref,
                                          int(spec.cpus_per_trial))
                features = ray.get(done[stage])
                path.parent.mkdir(parents=True, exist_ok=True)
                np.savez(path, train=features.train, val=features.val)
        refs[strategy] = done[stage]
    return refs


def write_stage_outputs(exp_dir: Path, records: list[dict]) -> None:
    """Each stage's loss curve as TensorBoard events and its sample grid, in the experiment."""
    for record in records:
        if not record.get("losses"):
            continue
        out = exp_dir / "stages" / record["key"]
        with SummaryWriter(str(out)) as writer:
            for epoch, loss in enumerate(record["losses"], start=1):
                writer.add_scalar(f"pretrain/{record['stage']}_loss", loss, epoch)
        samples = Path(record["path"]).parent / "samples.png"
        if samples.is_file():
            shutil.copy(samples, out / "samples.png")
