"""Optuna samplers for `--searcher`, each seeded, with a startup phase that fits the budget.

TPE and GP start with random trials before their model proposes any. Optuna's default of 10
startup trials is more than the default budget of 8 trials per strategy, and would leave the
model nothing to propose; here the startup phase is a third of the trials, at least 3 (1 for
CMA-ES, whose own population does the exploring), and 3 when a --time-budget alone bounds the
trials, whose number is not known before they run. TPE is multivariate with `group=True`, so it
models the parameters that occur together (those of one optimizer, or of the MLP head) jointly,
and with a constant liar, so trials that run side by side are not proposed at one point.
"""

from __future__ import annotations

import warnings

import optuna

# the key under which TPE (and GP) write the parameters their model proposed into a trial's
# system attributes; a trial without one was sampled at random (startup) or enqueued
MODEL_KEYS = ("tpe:relative_params", "gp:relative_params")


def startup_trials(samples: int | None) -> int:
    """Random trials before TPE or GP model the results: a third of the budget, at least 3;
    3 for an unknown number of trials (None: as many as fit in a time budget), so the model
    has the rest of them however few fit."""
    return 3 if samples is None else max(3, samples // 3)


def make_sampler(name: str, samples: int | None, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler called `name` (search.options.SEARCHERS), seeded with `seed`, for
    `samples` trials (None: as many as fit in a time budget)."""
    random = optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        with warnings.catch_warnings():  # multivariate and group are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                n_startup_trials=startup_trials(samples), multivariate=True, group=True,
                constant_liar=True, seed=seed)
    if name == "random":
        return random
    if name == "cmaes":  # categorical and conditional parameters fall back to random sampling
        return optuna.samplers.CmaEsSampler(n_startup_trials=1, independent_sampler=random,
                                            warn_independent_sampling=False, seed=seed)
    if name == "qmc":  # Sobol points over the space of the first trial, the rest at random
        return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed,
                                          independent_sampler=random,
                                          warn_independent_sampling=False,
                                          warn_asynchronous_seeding=False)
    if name == "gp":
        return optuna.samplers.GPSampler(n_startup_trials=startup_trials(samples), seed=seed,
                                         independent_sampler=random,
                                         warn_independent_sampling=False)
    raise ValueError(f"unknown searcher {name!r}")


def proposed_by(trial: optuna.trial.FrozenTrial) -> str:
    """How a study trial got its parameters, from the study's own records: `warm start`
    (enqueued), `model` (TPE's or GP's proposal) or `sampler` (random, startup, Sobol, CMA-ES)."""
    if "fixed_params" in trial.system_attrs:
        return "warm start"
    if any(key.startswith(MODEL_KEYS) for key in trial.system_attrs):
        return "model"
    return "sampler"
