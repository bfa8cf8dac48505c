"""Driver side of the pretraining stages: which one each strategy needs, each run once, cached.

A stage that trains runs as one Ray task with one trial's resources, so on a cluster it runs where
a trial could; independent stages run side by side. Results are cached under
`<cache>/stages/<stage>-<backbone>-<hash>/` (weights, record, colorization samples), so N trials,
and later experiments on the same machine, cause one stage run per backbone searched. Frozen
backbones also get their train/val features computed once here, for the head-only fast path.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import ray
from tensorboardX import SummaryWriter

from search.checks import parse_schedule, stage_kind
from search.spec import ExperimentSpec
from store.atomic import atomic_file
from store.layout import STAGES_DIR
from trainables.cache import area
from trainables.data.dataset import DataError, Dataset
from trainables.features import (
    compute_features,
    features_key,
    read_features,
    write_features,
)
from trainables.pretrain import (
    SAMPLES_FILE,
    Stage,
    StageConfig,
    public_record,
    read_stage,
    run_stage,
    write_stage,
)
from trainables.strategies import get_strategy


@dataclass(frozen=True)
class StageOutputs:
    """Object-store references per strategy and backbone, and what happened, for
    experiment.json."""

    weights: dict[str, dict[str, ray.ObjectRef | None]]  # strategy -> backbone -> weights
    features: dict[str, dict[str, ray.ObjectRef | None]]
    labels: dict[str, str]  # where each strategy's weights come from
    records: list[dict]


@dataclass(frozen=True)
class StageData:
    """The stages' own data: the supervised stage's labeled source (--pretrain-data) and the
    colorization stage's unlabeled images (--pretext-data); None: the default for each."""

    pretrain: Dataset | None = None
    pretext: Dataset | None = None


def load_stage_data(spec: ExperimentSpec) -> StageData:
    from trainables.data.load import load_pretrain_data

    def load(name: str | None) -> Dataset | None:
        return load_pretrain_data(name, spec.image_size, spec.seed, spec.cache_dir) \
            if name else None

    return StageData(load(spec.pretrain_data), load(spec.pretext_data))


def stage_for(spec: ExperimentSpec, strategy: str, data: Dataset,
              sources: StageData = StageData(), backbone: str | None = None) -> Stage:
    """The stage a strategy's weights come from, for `backbone` (default: the run's first):
    --weights, else its stage_kind."""
    backbone = backbone or spec.backbones[0]
    if get_strategy(strategy).pretrained == "none":
        return Stage("none", backbone, "", StageConfig())
    if spec.weights:
        return Stage("imagenet", backbone, "", StageConfig(), str(spec.weights))
    kind = stage_kind(spec.pretrained, strategy, is_demo=data.source is not None)
    if kind not in ("supervised", "colorization"):
        return Stage(kind, backbone, "", StageConfig())
    pretext = {"loss": spec.pretext_loss, "schedule": parse_schedule(spec.pretext_schedule)} \
        if kind == "colorization" else {}
    config = StageConfig(epochs=spec.pretrain_epochs, seed=spec.seed, init=spec.pretext_init,
                         decoder_epochs=spec.pretext_decoder_epochs,
                         patience=spec.pretrain_patience, **pretext)
    return Stage(kind, backbone, stage_data(kind, data, sources).fingerprint, config)


def stage_data(kind: str, data: Dataset, sources: StageData) -> Dataset:
    """What a stage trains on: supervised, --pretrain-data or else the demo's source classes;
    colorization, --pretext-data or else the target's own training images."""
    if kind == "supervised":
        if sources.pretrain is not None:
            return sources.pretrain
        if data.source is None:
            raise DataError("supervised pretraining needs --pretrain-data off the demo")
        return data.source
    return sources.pretext if sources.pretext is not None else data.for_search()


def check_stage_data(spec: ExperimentSpec, data: Dataset, sources: StageData) -> None:
    """Before anything starts: every stage the strategies need has data it can train on."""
    for strategy in spec.strategies:
        kind = stage_for(spec, strategy, data, sources).kind
        if kind == "supervised" and stage_data(kind, data, sources).num_classes < 2:
            raise DataError("supervised pretraining needs a labeled --pretrain-data with two or "
                            "more classes (a flat folder of images only serves colorization; "
                            "pass it as --pretext-data)")


def weights_label(stage: Stage) -> str:
    return f"file:{stage.weights_file}" if stage.weights_file else stage.kind


def run_stages(spec: ExperimentSpec, data: Dataset, data_ref: ray.ObjectRef,
               sources: StageData = StageData()) -> StageOutputs:
    """Run or load every stage, once per (stage, backbone), then the frozen-backbone features.
    `data_ref` is the search data already in the object store: stages and trials that use it
    share that one copy."""
    stages = {(s, b): stage_for(spec, s, data, sources, b)
              for s in spec.strategies for b in spec.backbones}
    cache = area(spec.cache_dir, "stages")
    # two returns: the weights stay in the object store where the task put them, for the trials,
    # while the driver fetches a copy to cache
    task = ray.remote(num_cpus=spec.cpus_per_trial, num_gpus=spec.gpus_per_trial,
                      max_retries=1, num_returns=2)(run_stage)
    by_stage: dict[Stage, ray.ObjectRef | None] = {}
    records, running = [], {}
    for stage in dict.fromkeys(stages.values()):
        cached = read_stage(cache / stage.key) if stage.trains else None
        if stage.kind == "none":
            by_stage[stage] = None
        elif cached is not None:
            by_stage[stage] = ray.put(cached[0])
            records.append({**cached[1], "cached": True, "path": str(cache / stage.key)})
        else:
            print(f"pretraining stage {stage.kind} ({stage.backbone}) ...", flush=True)
            source = None
            if stage.trains:  # a Ray task resolves a reference argument to its value
                own = stage.kind == "colorization" and sources.pretext is None
                source = data_ref if own else stage_data(stage.kind, data, sources)
            running[stage] = task.remote(stage, source, int(spec.cpus_per_trial),
                                         spec.gpus_per_trial)
    for stage, (state_ref, record_ref) in running.items():  # started together: side by side
        state, record = ray.get([state_ref, record_ref])
        if stage.trains:
            write_stage(cache / stage.key, state, record)
        records.append({**public_record(record), "cached": False,
                        "path": str(cache / stage.key)})
        by_stage[stage] = state_ref
        print(f"pretraining stage {stage.kind} done in {record['seconds']:.0f} s"
              f"{stage_quality(record)}", flush=True)
    weights = {key: by_stage[stage] for key, stage in stages.items()}
    features = run_features(spec, data, data_ref, stages, weights)
    return StageOutputs(per_strategy(weights), per_strategy(features),
                        {s: weights_label(stage) for (s, _), stage in stages.items()}, records)


def per_strategy(refs: dict[tuple[str, str], ray.ObjectRef | None]
                 ) -> dict[str, dict[str, ray.ObjectRef | None]]:
    """(strategy, backbone) -> ref, as strategy -> backbone -> ref."""
    out: dict[str, dict[str, ray.ObjectRef | None]] = {}
    for (strategy, backbone), ref in refs.items():
        out.setdefault(strategy, {})[backbone] = ref
    return out


def stage_quality(record: dict) -> str:
    """', held-out val_acc 0.53' (supervised) or ', held-out ab error 9.1 Lab units'."""
    if record.get("val_acc"):
        return f", held-out source val_acc {record['val_acc'][-1]:.3f}"
    if record.get("val_l1"):
        return f", held-out ab error {record['val_l1'][-1]:.2f} Lab units"
    return ""


Key = tuple[str, str]  # (strategy, backbone)


def run_features(spec: ExperimentSpec, data: Dataset, data_ref: ray.ObjectRef,
                 stages: dict[Key, Stage], weights: dict[Key, ray.ObjectRef | None]
                 ) -> dict[Key, ray.ObjectRef | None]:
    """Backbone features once per (weights, data) for strategies whose backbone never trains."""
    task = ray.remote(num_cpus=spec.cpus_per_trial, num_gpus=spec.gpus_per_trial,
                      max_retries=1)(compute_features)
    refs: dict[Key, ray.ObjectRef | None] = {}
    done: dict[Stage, ray.ObjectRef] = {}
    for key, stage in stages.items():
        if not get_strategy(key[0]).frozen_backbone:
            refs[key] = None
            continue
        if stage not in done:
            path = area(spec.cache_dir, "features") / (features_key(
                stage.key, data.fingerprint, stage.backbone, spec.gpus_per_trial) + ".npz")
            cached = read_features(path)
            if cached is not None:
                done[stage] = ray.put(cached)
            else:
                done[stage] = task.remote(stage.backbone, weights[key], data_ref,
                                          int(spec.cpus_per_trial), spec.gpus_per_trial)
                write_features(path, ray.get(done[stage]))
        refs[key] = done[stage]
    return refs


def write_stage_outputs(exp_dir: Path, records: list[dict]) -> None:
    """Each stage's loss curve as TensorBoard events and its sample grid, in the experiment."""
    for record in records:
        if not record.get("losses"):
            continue
        out = exp_dir / STAGES_DIR / record["key"]
        with SummaryWriter(str(out)) as writer:
            for epoch, loss in enumerate(record["losses"], start=1):
                writer.add_scalar(f"pretrain/{record['stage']}_loss", loss, epoch)
            for name in ("val_acc", "val_l1"):  # held-out quality, per epoch
                for epoch, value in enumerate(record.get(name) or [], start=1):
                    writer.add_scalar(f"pretrain/{record['stage']}_{name}", value, epoch)
        samples = Path(record["path"]) / SAMPLES_FILE
        if samples.is_file():
            with atomic_file(out / SAMPLES_FILE) as tmp:
                shutil.copyfile(samples, tmp)
