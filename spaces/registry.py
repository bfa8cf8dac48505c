"""The space registry, the dimensions every strategy searches, and the mapping between Optuna's
parameter names and TrialConfig's fields."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from spaces.dims import Dim, Dims, dimensions, explore
from trainables.config import AUGMENTATIONS, OPTIMIZERS, TrialConfig

# lr is searched under one name per optimizer: its range depends on the optimizer, and one name
# with two ranges would make TPE model one parameter from two distributions
LR_NAMES = {f"lr_{optimizer}": optimizer for optimizer in OPTIMIZERS}  # lr_sgd -> sgd
DEFAULT_OPTIMIZER = next(f.default for f in fields(TrialConfig) if f.name == "optimizer")
SGD_LR = (1e-3, 0.3)
LR_RANGES = {"sgd": SGD_LR, "adamw": (SGD_LR[0] / 100, SGD_LR[1] / 30)}  # AdamW's is lower


@dataclass(frozen=True)
class SpaceContext:
    """What a space may depend on besides the trial: the backbone's depth and the epoch budget."""

    num_blocks: int = 5  # the backbone's blocks (trainables.anatomy): what freeze_depth counts
    max_epochs: int = 6


Space = Callable[[Dims, SpaceContext], None]
SPACES: dict[str, Space] = {}


def register_space(strategy: str):
    def decorator(space: Space) -> Space:
        if strategy in SPACES:
            raise ValueError(f"a space for {strategy!r} is already registered")
        SPACES[strategy] = space
        return space

    return decorator


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
        known = space_dimensions(strategy, context)
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ValueError(f"{strategy} does not search {unknown}; its dimensions: "
                             f"{', '.join(known)}")
    return bound


def space_dimensions(strategy: str, context: SpaceContext | None = None) -> dict[str, Dim]:
    """Every dimension the strategy's built-in space can ask for, on any branch, by Optuna
    parameter name, with its built-in range."""
    return dimensions(explore(BoundSpace(SPACES[strategy], context or SpaceContext()).trace))


def to_trial_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """Optuna's parameters (and the space's constants) as TrialConfig field values: the lr of
    the trial's optimizer (lr_sgd, lr_adamw) becomes `lr`."""
    values = {k: v for k, v in params.items() if k not in LR_NAMES}
    lrs = {k: v for k, v in params.items() if k in LR_NAMES}
    if lrs:
        name = f"lr_{params.get('optimizer', DEFAULT_OPTIMIZER)}"
        if name not in lrs:
            raise ValueError(f"{sorted(lrs)} without {name}: the lr of another optimizer")
        values["lr"] = lrs[name]
    return values


def to_study_params(values: Mapping[str, Any]) -> dict[str, Any]:
    """TrialConfig field values as Optuna's parameters, to enqueue a known config into a study:
    `lr` becomes the lr of its optimizer (TrialConfig's default optimizer when absent)."""
    params = {k: v for k, v in values.items() if k != "lr"}
    if "lr" in values:
        params[f"lr_{values.get('optimizer', DEFAULT_OPTIMIZER)}"] = values["lr"]
    return params


def common(dims: Dims) -> None:
    """Optimizer and its lr (log; AdamW's range is lower than SGD's), batch size, augmentation
    policy (with RandAugment's magnitude), weight decay (log) and label smoothing."""
    optimizer = dims.categorical("optimizer", list(OPTIMIZERS))
    dims.float(f"lr_{optimizer}", *LR_RANGES[optimizer], log=True)
    dims.categorical("batch_size", [32, 64, 128])
    if dims.categorical("augment", list(AUGMENTATIONS)) == "randaugment":
        dims.int("magnitude", 1, 20)
    dims.float("weight_decay", 1e-6, 1e-2, log=True)
    dims.float("label_smoothing", 0.0, 0.2)


def lr_mult(dims: Dims) -> None:
    """The backbone's lr as a fraction of the head's (discriminative fine-tuning)."""
    dims.float("lr_mult", 0.01, 1.0, log=True)
