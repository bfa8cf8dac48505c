"""Trial schedulers for `--scheduler`: which trials stop, pause or restart, and when.

Every scheduler counts time in epochs (`training_iteration`: a trial reports once per epoch)
and ranks trials by the metric and mode that `tune.TuneConfig` passes to it (the scalar
`best_val_acc`, also when the Optuna study is multi-objective), so none is given them here.

- asha: asynchronous successive halving, rungs at grace_period * rf^k epochs.
- hyperband: synchronous HyperBand; it pauses trials at a bracket's milestone until the
  bracket's other trials get there, so a paused trial restarts from its latest checkpoint
  (the trainable checkpoints every epoch).
- median: stops a trial whose best result is below the median of the other trials' running
  means at the same epoch, after grace_period epochs.
- fifo: no early stopping; every trial runs max_epochs.
- pbt: population-based training. Every `perturbation_interval` epochs a trial in the bottom
  quantile continues from a top trial's checkpoint with that trial's config, `lr` and
  `weight_decay` perturbed. Ray refuses PBT with any Tune Searcher, so the population comes
  from `initial_population` (the same Optuna space, sampled up front) through
  `population_search`.

None of asha, hyperband and median stops the preset's trial before max_epochs (`KeepsPreset`;
HyperBand's first bracket, where the first trial goes, stops no trial).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import MISSING, fields

import optuna
from ray import tune
from ray.tune.schedulers import (
    ASHAScheduler,
    FIFOScheduler,
    HyperBandScheduler,
    MedianStoppingRule,
    PopulationBasedTraining,
    TrialScheduler,
)
from ray.tune.search import BasicVariantGenerator

from search.options import SCHEDULERS, UsageError
from spaces.registry import LR_RANGES, WD_RANGES, to_study_params
from trainables.config import TrialConfig

TIME_ATTR = "training_iteration"  # one per epoch: grace periods and intervals are in epochs

# PBT moves lr and weight_decay within the ranges the spaces search (spaces.registry.common):
# both depend on the optimizer (AdamW's lr range is lower than SGD's, its decay range higher),
# and lr on the device.


def check_scheduler(name: str, max_epochs: int, grace_period: int, reduction_factor: int, *,
                    samples: int | None = None, perturbation_interval: int | None = None
                    ) -> None:
    """Raise UsageError for a combination the scheduler cannot run; the message names the fix.

    Degenerate but runnable settings pass (ASHA with grace_period == max_epochs stops nothing,
    as with --max-epochs 1). `samples` and `perturbation_interval` are checked when given.
    """
    if name not in SCHEDULERS:
        raise UsageError(f"--scheduler {name}: expected one of {', '.join(SCHEDULERS)}")
    if max_epochs < 1:
        raise UsageError(f"--max-epochs {max_epochs}: train at least 1 epoch")
    if grace_period < 1:
        raise UsageError(f"--grace-period {grace_period}: use 1 epoch or more")
    if grace_period > max_epochs:
        raise UsageError(f"--grace-period {grace_period} is longer than --max-epochs "
                         f"{max_epochs}: lower --grace-period or raise --max-epochs")
    if reduction_factor < 2:
        raise UsageError(f"--reduction-factor {reduction_factor}: use 2 or more (a rung keeps "
                         "1/N of the trials; 1 would keep them all)")
    if name == "pbt":
        check_pbt(max_epochs, grace_period, samples, perturbation_interval)


def check_pbt(max_epochs: int, grace_period: int, samples: int | None,
              perturbation_interval: int | None) -> None:
    interval = pbt_interval(grace_period, perturbation_interval)
    source = "--grace-period" if perturbation_interval is None else "perturbation_interval"
    if interval < 1:
        raise UsageError(f"PBT's {source} {interval}: use 1 epoch or more")
    if interval >= max_epochs:  # the first exploit must leave epochs to train
        raise UsageError(f"--scheduler pbt perturbs every {interval} epochs ({source}), so "
                         f"--max-epochs {max_epochs} never trains a perturbed config: raise "
                         f"--max-epochs above {interval} or lower {source}")
    if samples is not None and samples < 2:
        raise UsageError(f"--scheduler pbt with --samples {samples}: a population needs at "
                         "least 2 trials (one to copy, one to replace); raise --samples")


def pbt_interval(grace_period: int, perturbation_interval: int | None) -> int:
    """Epochs between PBT's exploit/explore steps: by default the grace period."""
    return max(1, grace_period) if perturbation_interval is None else perturbation_interval


def make_scheduler(name: str, *, max_epochs: int, grace_period: int, reduction_factor: int,
                   seed: int, perturbation_interval: int | None = None,
                   lr_ranges: Mapping[str, tuple[float, float]] = LR_RANGES,
                   preset: Mapping | None = None) -> TrialScheduler:
    """The scheduler `name`; metric and mode come from tune.TuneConfig. PBT perturbs lr
    within `lr_ranges`, the strategy space's (space_lr_ranges). `preset`, the preset's study
    parameters, marks the trial ASHA and the median rule let run max_epochs."""
    check_scheduler(name, max_epochs, grace_period, reduction_factor,
                    perturbation_interval=perturbation_interval)
    if name == "asha":
        # rungs at grace_period * rf^k epochs: a trial runs at least grace_period epochs, and
        # only the best 1/rf at each rung goes on to the next
        return PresetASHA(time_attr=TIME_ATTR, max_t=max_epochs, grace_period=grace_period,
                          reduction_factor=reduction_factor, preset=preset,
                          full_epochs=max_epochs)
    if name == "hyperband":
        # brackets s = 0 .. s_max (s_max = round(log_rf(max_epochs))) first stop trials after
        # max_epochs / rf^s epochs. Ray fills s = 0 first, which stops nothing: the first
        # s_max + 1 trials run the full budget. No grace period: --grace-period is unused.
        return HyperBandScheduler(time_attr=TIME_ATTR, max_t=max_epochs,
                                  reduction_factor=reduction_factor)
    if name == "median":
        # min_samples_required (3): other trials with a result at that epoch before any stops
        return PresetMedian(time_attr=TIME_ATTR, grace_period=grace_period,
                            min_samples_required=3, preset=preset, full_epochs=max_epochs)
    if name == "pbt":
        return SeededPBT(seed=seed, max_t=max_epochs,
                         perturbation_interval=pbt_interval(grace_period, perturbation_interval),
                         lr_ranges=lr_ranges)
    return FIFOScheduler()


class KeepsPreset:
    """For a scheduler that stops trials on their results: the preset's trial always runs
    `full_epochs`. It is the reference the search must beat at the full budget, and a rung that
    cuts it after an epoch or two can hand back a config worse than the preset alone (ASHA's
    first rung of 3 epochs on the CIFAR-10 slice cut it by 0.001 val_acc). A trial is the
    preset's by its config, which survives Tune's restore."""

    def __init__(self, *args, preset: Mapping | None, full_epochs: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.preset = dict(preset or {})
        self.full_epochs = full_epochs

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and result.get(TIME_ATTR, 0) < self.full_epochs \
                and is_preset(trial.config, self.preset):
            self._kept(trial)
            return TrialScheduler.CONTINUE
        return decision

    def _kept(self, trial) -> None:
        """Undo what the scheduler recorded of the stop it decided."""


def is_preset(config: Mapping, preset: Mapping) -> bool:
    """Whether a Tune trial's config is the preset's (its study parameters, all it fixes)."""
    params = to_study_params(config)
    return bool(preset) and all(params.get(k) == v for k, v in preset.items())


class PresetASHA(KeepsPreset, ASHAScheduler):
    def _kept(self, trial) -> None:
        self._num_stopped -= 1  # shown in its status line


class PresetMedian(KeepsPreset, MedianStoppingRule):
    def _kept(self, trial) -> None:
        self._stopped_trials.discard(trial)  # a stopped trial's next result fails an assert


class SeededPBT(PopulationBasedTraining):
    """PopulationBasedTraining with its own seeded random stream and bounded, optimizer-aware
    perturbations of lr and weight_decay.

    Ray's PBT draws from the global `random` module (which top trial to copy, resample or
    perturb, by which factor) and cannot be seeded; here its callbacks run with a private
    `random` state, so the draws depend on the seed and the order of results only. Explore:
    with probability `resample_probability` a value is redrawn log-uniformly from its range,
    otherwise multiplied by one of `perturbation_factors`, then clipped into the range.
    No exploit happens on a trial's last epoch (max_t): there is nothing left to train.
    """

    def __init__(self, *, seed: int, max_t: int, perturbation_interval: int,
                 quantile_fraction: float = 0.25, resample_probability: float = 0.25,
                 perturbation_factors: tuple[float, float] = (1.2, 0.8),
                 lr_ranges: Mapping[str, tuple[float, float]] = LR_RANGES):
        super().__init__(
            time_attr=TIME_ATTR,
            perturbation_interval=perturbation_interval,
            # the keys PBT mutates; these domains only fill a config that lacks the key
            hyperparam_mutations={"lr": tune.loguniform(*lr_ranges["sgd"]),
                                  "weight_decay": tune.loguniform(*WD_RANGES["sgd"])},
            quantile_fraction=quantile_fraction,  # bottom 25% copy the top 25%
            resample_probability=resample_probability,
            perturbation_factors=perturbation_factors,
        )
        self._max_t = max_t
        self._lr_ranges = dict(lr_ranges)
        self._random_state = random.Random(seed).getstate()

    @contextmanager
    def _private_random(self) -> Iterator[None]:
        outer = random.getstate()
        random.setstate(self._random_state)
        try:
            yield
        finally:
            self._random_state = random.getstate()
            random.setstate(outer)

    def on_trial_add(self, tune_controller, trial) -> None:
        with self._private_random():
            super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(self._time_attr, 0) >= self._max_t:
            return TrialScheduler.CONTINUE
        with self._private_random():
            return super().on_trial_result(tune_controller, trial, result)

    def _get_new_config(self, trial, trial_to_clone) -> tuple[dict, dict]:
        """Explore: the top trial's config, lr and weight_decay perturbed (PBT's hook)."""
        config = copy.deepcopy(trial_to_clone.config)
        operations = {}
        for key in self._hyperparam_mutations:
            low, high = pbt_bounds(key, config, getattr(self, "_lr_ranges", LR_RANGES))
            if random.random() < self._resample_probability:
                value, operations[key] = log_uniform(low, high), "resample"
            else:
                factor = random.choice(self._perturbation_factors)
                value, operations[key] = config[key] * factor, f"* {factor}"
            config[key] = min(max(value, low), high)
        return config, operations


def pbt_bounds(key: str, config: dict, lr_ranges: Mapping[str, tuple[float, float]]
               ) -> tuple[float, float]:
    if key == "lr":
        return lr_ranges[config.get("optimizer", "sgd")]
    return WD_RANGES[config.get("optimizer", "sgd")]


def log_uniform(low: float, high: float) -> float:
    return math.exp(random.uniform(math.log(low), math.log(high)))


def initial_population(space: Callable[[optuna.Trial], dict | None], n: int,
                       sampler: optuna.samplers.BaseSampler,
                       to_values: Callable[[dict], dict]) -> list[dict]:
    """n configs from the define-by-run `space`, for PBT, which cannot use a Tune Searcher.

    An in-memory study asks n trials (never told: nothing is optimised, and a sampler such
    as TPE draws its startup trials independently anyway); each config is the trial's params
    with the constants the space returns merged over them, mapped through `to_values`.
    """
    study = optuna.create_study(sampler=sampler)
    configs = []
    for _ in range(n):
        trial = study.ask()
        constants = space(trial) or {}
        configs.append(to_values({**trial.params, **constants}))
    return configs


def population_search(configs: list[dict]) -> tuple[BasicVariantGenerator, dict]:
    """(search_alg, param_space) that start one PBT trial per config; use num_samples=len(configs).

    Tune raises KeyError for a pre-set key missing from param_space, and gives a key missing
    from a config param_space's value. So every config gets every key (TrialConfig's default
    where its space did not sample it, e.g. magnitude without RandAugment), and param_space
    holds None for each: a falsy value also skips Tune's "pre-set value differs" warning.
    BasicVariantGenerator is not a SearchGenerator, which is what PBT refuses.
    """
    defaults = {f.name: f.default for f in fields(TrialConfig) if f.default is not MISSING}
    keys = sorted(set().union(*configs))
    complete = [{k: config.get(k, defaults.get(k)) for k in keys} for config in configs]
    return BasicVariantGenerator(points_to_evaluate=complete), dict.fromkeys(keys)
