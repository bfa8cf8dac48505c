"""Checks that need the loaded data or the backbone, run after the data loads and before Ray
starts: the --weights file, the batch sizes against the training split, and the hub that
ImageNet weights come from. Each raises a UsageError that names the fix.
"""

from __future__ import annotations

from search.options import UsageError
from search.pretraining import StageData, stage_for
from search.spec import ExperimentSpec
from spaces import get_space, run_context
from spaces.dims import Choices, Fixed, Range, dimensions, explore
from spaces.overrides import load_space_file
from trainables.data.dataset import Dataset
from trainables.pretrain import StageError, check_imagenet_weights, file_state


def check_inputs(spec: ExperimentSpec, data: Dataset, sources: StageData) -> None:
    check_batch_sizes(spec, data)
    try:
        for backbone in spec.backbones:
            if spec.weights:  # loaded once here, with weights_only: refused before any task
                file_state(backbone, spec.weights)
            kinds = {stage_for(spec, s, data, sources).kind for s in spec.strategies}
            if not spec.weights and ("imagenet" in kinds or (
                    "colorization" in kinds and spec.pretext_init == "imagenet")):
                check_imagenet_weights(backbone)
    except StageError as error:
        raise UsageError(str(error)) from None


def smallest_batch(spec: ExperimentSpec, strategy: str, train_images: int | None = None
                   ) -> tuple[int, str]:
    """The smallest batch size a strategy's trials can have, and where it comes from."""
    if spec.hyperparameters is not None:
        return int(spec.hyperparameters["batch_size"]), f"--config {spec.config_file}"
    overrides = load_space_file(spec.space_file, spec.strategies) if spec.space_file else {}
    space = get_space(strategy, run_context(spec, train_images), overrides.get(strategy))
    dim = dimensions(explore(space.trace))["batch_size"]
    where = "--space" if "batch_size" in overrides.get(strategy, {}) else "the built-in space"
    if isinstance(dim, Range):
        return int(dim.low), where
    if isinstance(dim, Choices):
        return int(min(dim.choices)), where
    assert isinstance(dim, Fixed)
    return int(dim.value), where


def config_on_its_own_data(spec: ExperimentSpec) -> bool:
    if spec.config_file is None:
        return False
    from store.best_config import read_best_config  # read and checked once already

    return read_best_config(spec.config_file).get("data") == spec.data


def check_batch_sizes(spec: ExperimentSpec, data: Dataset) -> None:
    """Every trial's batch fits in the training split: one larger would make every epoch one
    step over the whole split, a different method from the one asked for. A best config on
    its own data is exempt: its search already ran that batch there (a space whose smallest
    choice fits may sample a larger one), and a config must rerun what it recorded."""
    for strategy in spec.strategies:
        batch, where = smallest_batch(spec, strategy, len(data.train))
        if batch > len(data.train) and not config_on_its_own_data(spec):
            raise UsageError(
                f"{strategy}: batch size {batch} (the smallest in {where}) is larger than the "
                f"training split of {data.name} ({len(data.train)} images); give smaller batch "
                f"sizes with --space (e.g. '{strategy}: {{batch_size: [8, 16]}}'), or more "
                "training data")
