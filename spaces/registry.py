"""The space registry, the dimensions every strategy searches, and the mapping between Optuna's
parameter names and TrialConfig's fields."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from spaces.dims import Dim, Dims, dimensions, explore
from trainables.config import AUGMENTATIONS, MIXES, OPTIMIZERS, TrialConfig

# lr and weight_decay are searched under one name per optimizer: their ranges depend on the
# optimizer, and one name with two ranges would make TPE model one parameter from two
# distributions
PER_OPTIMIZER = ("lr", "weight_decay")
OPTIMIZER_PARAMS = {f"{field}_{optimizer}": (field, optimizer)  # lr_sgd -> (lr, sgd)
                    for field in PER_OPTIMIZER for optimizer in OPTIMIZERS}
LR_NAMES = {name: o for name, (f, o) in OPTIMIZER_PARAMS.items() if f == "lr"}  # lr_sgd -> sgd
DEFAULT_OPTIMIZER = next(f.default for f in fields(TrialConfig) if f.name == "optimizer")
SGD_LR = (1e-3, 0.3)
LR_RANGES = {"sgd": SGD_LR, "adamw": (SGD_LR[0] / 100, SGD_LR[1] / 30)}  # AdamW's is lower
# From random weights, the bottom of LR_RANGES (fine-tuning's lrs, BiT's 0.003) leaves a
# network barely trained in a short budget; the floors keep the from-scratch recipes at the
# smallest batch in range: SGD at 0.1 per 256 images (He et al. 2016) is 0.0125 at batch 32,
# DeiT's AdamW at 5e-4 per 512 is 1.25e-4 at batch 128
SCRATCH_LR_RANGES = {"sgd": (0.01, SGD_LR[1]), "adamw": (1e-4, LR_RANGES["adamw"][1])}
# SGD's coupled decay is small (5e-4 for ResNets on CIFAR, 1e-4 on ImageNet); AdamW's decoupled
# decay is multiplied by the lr, so its useful values are larger: 0.05 in DeiT and timm
WD_RANGES = {"sgd": (1e-6, 1e-2), "adamw": (1e-4, 0.3)}
RRC_FROM_PX = 64  # from this image side on, rrc replaces CIFAR's pad-and-crop among the choices
CPU_BATCHES = (32, 64, 128)  # a CPU trial's batch sizes, whatever the image size
# On a GPU, one trial's largest batch at 128 px: where a ResNet-18 in bf16 nearly fills an
# H100-class GPU (about 34,000 img/s at batch 256 on an H200). It scales with 1 / image side.
GPU_BATCH_AT_128PX = 512
MIN_STEPS = 8  # a batch leaves an epoch at least this many steps of the training split


@dataclass(frozen=True)
class SpaceContext:
    """What a space may depend on besides the trial: the backbone's depth (the shallowest's,
    where several are searched), the epoch budget, the trial's device, image size and training
    split (which bound its batch sizes), and the backbones to search."""

    num_blocks: int = 5  # the backbone's blocks (trainables.anatomy): what freeze_depth counts
    max_epochs: int = 6
    device: str = "cpu"  # "cuda" when each trial has a GPU, or a share of one
    image_size: int = 32
    train_images: int | None = None  # the training split's size; None where not known
    backbones: tuple[str, ...] = ()  # --backbone A,B: searched where more than one

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """A CPU's batch sizes, or on a GPU three powers of two up to one that fills it at
        this image size (512 at 128 px, 256 at 224 px), as far as the training split gives
        MIN_STEPS steps an epoch, and never smaller than a CPU's."""
        if self.device != "cuda":
            return CPU_BATCHES
        largest = 2 ** round(math.log2(GPU_BATCH_AT_128PX * 128 / self.image_size))
        if self.train_images:
            largest = min(largest, 2 ** int(math.log2(max(self.train_images // MIN_STEPS, 1))))
        largest = max(largest, CPU_BATCHES[-1])
        return (largest // 4, largest // 2, largest)

    def scaled(self, lr_ranges: Mapping[str, tuple[float, float]]
               ) -> dict[str, tuple[float, float]]:
        """Each optimizer's lr range, set for a CPU's batches, scaled with the square root of
        how much larger this context's batches are (Krizhevsky 2014; Hoffer et al. 2017): a
        GPU's 4x larger batches search lrs 2x higher."""
        scale = self.lr_scale
        return {name: (low * scale, high * scale) for name, (low, high) in lr_ranges.items()}

    @property
    def lr_scale(self) -> float:
        """How much higher the lrs go than a CPU's: the square root of the batches' growth."""
        return batch_lr_scale(self.batch_sizes[-1])


def batch_lr_scale(batch: int) -> float:
    """An lr set for a CPU's largest batch, scaled to `batch`: by the square root of the
    batch's growth (Krizhevsky 2014; Hoffer et al. 2017)."""
    return math.sqrt(batch / CPU_BATCHES[-1])


def run_context(spec: Any, train_images: int | None = None) -> SpaceContext:
    """The context of a run (an ExperimentSpec): its backbones and the shallowest one's depth
    (so freeze_depth has one range whichever is sampled), epoch budget, device (a GPU where its
    trials have one), image size and, where loaded, its training split."""
    from trainables.models import num_blocks  # loads timm and torch: only for a run

    return SpaceContext(num_blocks=min(num_blocks(b) for b in spec.backbones),
                        max_epochs=spec.max_epochs,
                        device="cuda" if spec.gpus_per_trial > 0 else "cpu",
                        image_size=spec.image_size, train_images=train_images,
                        backbones=tuple(spec.backbones))


Space = Callable[[Dims, SpaceContext], None]
Preset = Callable[[SpaceContext], dict[str, Any]]  # TrialConfig values (spaces/recipes.py)
SPACES: dict[str, Space] = {}
PRESETS: dict[str, Preset] = {}


def register_space(strategy: str, preset: Preset):
    """Register a strategy's space with its preset: the known-good config its search tries
    first."""
    def decorator(space: Space) -> Space:
        if strategy in SPACES:
            raise ValueError(f"a space for {strategy!r} is already registered")
        SPACES[strategy], PRESETS[strategy] = space, preset
        return space

    return decorator


def get_preset(strategy: str, context: SpaceContext | None = None) -> dict[str, Any]:
    """The strategy's preset as TrialConfig values, checked by TrialConfig; on the first
    backbone of --backbone where several are searched."""
    context = context or SpaceContext()
    values = PRESETS[strategy](context)
    if len(context.backbones) > 1:
        values = {**values, "backbone": context.backbones[0]}
    TrialConfig.from_dict(values)
    return values


@dataclass(frozen=True)
class BoundSpace:
    """A strategy's space with its context and overrides: Ray's define-by-run function.

    Called with a trial, it suggests through `Dims` and returns the overrides' fixed values as a
    dict of constants (empty if none), which Ray merges into the trial's config. A dataclass of
    module-level functions and plain values, so it pickles for Ray's workers.
    """

    space: Space
    context: SpaceContext
    overrides: Mapping[str, Dim] = field(default_factory=dict)

    def __call__(self, trial: Any) -> dict[str, Any]:
        return self.trace(trial).constants

    def trace(self, trial: Any) -> Dims:
        """Run the space on `trial`; the Dims it asked through records what it resolved."""
        dims = Dims(trial, self.overrides)
        self.space(dims, self.context)
        return dims


def get_space(strategy: str, context: SpaceContext | None = None,
              overrides: Mapping[str, Dim] | None = None) -> BoundSpace:
    """The strategy's define-by-run space, bound to `context` and to `overrides` (Optuna
    parameter name -> Dim, as `spaces.overrides.load_space_file` gives them per strategy).

    Raises KeyError for an unknown strategy and ValueError for an override of a dimension the
    strategy never searches."""
    if strategy not in SPACES:
        raise KeyError(f"no search space for strategy {strategy!r}; have {sorted(SPACES)}")
    context = context or SpaceContext()
    bound = BoundSpace(SPACES[strategy], context, dict(overrides or {}))
    if overrides:
        known = [*space_dimensions(strategy, context), "backbone"]  # see spaces.overrides
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ValueError(f"{strategy} does not search {unknown}; its dimensions: "
                             f"{', '.join(known)}")
    return bound


def space_dimensions(strategy: str, context: SpaceContext | None = None) -> dict[str, Dim]:
    """Every dimension the strategy's built-in space can ask for, on any branch, by Optuna
    parameter name, with its built-in range."""
    return dimensions(explore(BoundSpace(SPACES[strategy], context or SpaceContext()).trace))


def space_lr_ranges(strategy: str, context: SpaceContext | None = None
                    ) -> dict[str, tuple[float, float]]:
    """The strategy's built-in lr range per optimizer, as its space searches them."""
    dims = space_dimensions(strategy, context)
    return {optimizer: (dims[name].low, dims[name].high)
            for name, optimizer in LR_NAMES.items() if name in dims}


def to_trial_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """Optuna's parameters (and the space's constants) as TrialConfig field values: the lr and
    weight decay of the trial's optimizer (lr_sgd, weight_decay_adamw) become `lr` and
    `weight_decay`."""
    values = {k: v for k, v in params.items() if k not in OPTIMIZER_PARAMS}
    optimizer = params.get("optimizer", DEFAULT_OPTIMIZER)
    for name in PER_OPTIMIZER:
        given = sorted(k for k in params if OPTIMIZER_PARAMS.get(k, ("",))[0] == name)
        if given:
            own = f"{name}_{optimizer}"
            if own not in given:
                raise ValueError(f"{given} without {own}: the {name} of another optimizer")
            values[name] = params[own]
    return values


def to_study_params(values: Mapping[str, Any]) -> dict[str, Any]:
    """TrialConfig field values as Optuna's parameters, to enqueue a known config into a study:
    `lr` and `weight_decay` become those of its optimizer (TrialConfig's default optimizer when
    absent)."""
    params = {k: v for k, v in values.items() if k not in PER_OPTIMIZER}
    optimizer = values.get("optimizer", DEFAULT_OPTIMIZER)
    params.update({f"{k}_{optimizer}": values[k] for k in PER_OPTIMIZER if k in values})
    return params


def augmentations(image_size: int) -> list[str]:
    """The augmentation policies worth searching at this image size: a random-resized crop for
    natural images of RRC_FROM_PX and more, CIFAR's pad-and-crop below."""
    unfit = "crop_flip" if image_size >= RRC_FROM_PX else "rrc"
    return [a for a in AUGMENTATIONS if a != unfit]


def common(dims: Dims, context: SpaceContext,
           lr_ranges: Mapping[str, tuple[float, float]] = LR_RANGES) -> None:
    """Optimizer with its lr (log; `lr_ranges`, set for a CPU's batches and scaled to the
    context's) and weight decay (log; each optimizer its own ranges), batch size
    (larger on a GPU, with the lr ranges to match), augmentation policy (with RandAugment's
    magnitude or the crop's smallest scale), mixup or CutMix with its alpha, an EMA of the
    weights, the warmup's share of the schedule, and label smoothing; and the backbone, where
    the run searches several."""
    if len(context.backbones) > 1:
        dims.categorical("backbone", list(context.backbones))
    optimizer = dims.categorical("optimizer", list(OPTIMIZERS))
    dims.float(f"lr_{optimizer}", *context.scaled(lr_ranges)[optimizer], log=True)
    dims.float(f"weight_decay_{optimizer}", *WD_RANGES[optimizer], log=True)
    dims.categorical("batch_size", list(context.batch_sizes))
    augment = dims.categorical("augment", augmentations(context.image_size))
    if augment == "randaugment":
        dims.int("magnitude", 1, 20)
    if augment == "rrc":  # from ImageNet's 0.08 up to the mild crops short runs prefer
        dims.float("crop_scale", 0.08, 0.8)
    if dims.categorical("mix", list(MIXES)) != "none":
        dims.float("mix_alpha", 0.1, 1.0)
    dims.categorical("ema_decay", [0.0, 0.99, 0.999, 0.9999])
    dims.float("warmup", 0.0, 0.3)
    dims.float("label_smoothing", 0.0, 0.2)


def lr_mult(dims: Dims) -> None:
    """The backbone's lr as a fraction of the head's (discriminative fine-tuning)."""
    dims.float("lr_mult", 0.01, 1.0, log=True)
