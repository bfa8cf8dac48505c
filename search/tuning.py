"""Tuner wiring: one Ray Tune `Tuner` per strategy, built new or restored from its directory.

Each Tuner gets OptunaSearch (the sampler of `--searcher`, the strategy's define-by-run space
with any `--space` overrides, its preset and warm-start configs enqueued first, the study in
`--optuna-storage`), the scheduler of `--scheduler`, per-trial resources, checkpoints and
retries, TensorBoard logging and the progress table. Search, scheduler, leaderboard and kept
checkpoint all rank by one number: the trial's best epoch's val_acc (`best_val_acc`, see
trainables.trainable). With `--objective acc+time` the study also minimises the trial's training
time at its full budget; the scheduler still ranks by val_acc. With `--config`, one Tuner trains
the given hyperparameters once, without a search; with `--scheduler pbt`, the population is
drawn from the same space, since Ray runs PBT without a searcher. At most `--max-concurrent`
trials run at once; without it, as many as the cluster holds, with one more proposed and waiting
for the next free slot (trial_slots, MarkedOptunaSearch.suggest). With `--time-budget`, a Tuner
also stops once its strategy's share of the time is spent (search.budget), and without
`--samples` runs as many trials as fit in it.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime
from pathlib import Path

import optuna
import ray
import yaml
from ray import tune
from ray.tune.logger import TBXLoggerCallback
from ray.tune.search.optuna import OptunaSearch

from search.budget import budget_callbacks, budget_stopper, use_ledger
from search.pretraining import StageOutputs
from search.progress import progress_callbacks, tune_verbosity
from search.resources import LAUNCHER_CONFIG
from search.samplers import make_sampler, proposed_by
from search.schedulers import initial_population, make_scheduler, population_search
from search.spec import ExperimentSpec
from search.warm_start import study_points
from spaces import SpaceContext, get_space, run_context, to_study_params, to_trial_values
from spaces.overrides import load_space_file
from spaces.registry import get_preset, space_lr_ranges
from store.records import full_budget_seconds
from store.tune_storage import tune_filesystem
from store.uri import join_uri
from trainables.config import RunSettings
from trainables.trainable import ByBackbone, train_transfer

log = logging.getLogger(__name__)
METRIC = "best_val_acc"
HEAD_RESOURCE = "node:__internal_head__"  # the resource Ray gives its head node only
# --objective acc+time: the study's second value. Tune checks that every report holds each
# searcher metric, and only it knows a trial's time across restarts, so the searcher names
# Tune's time_total_s and turns it into the time at the full budget when the trial ends.
TIME_METRIC = "time_total_s"


class MarkedOptunaSearch(OptunaSearch):
    """OptunaSearch that gives trials TrialConfig names and marks how each study trial ended.

    The space names a parameter by its condition (lr_sgd, lr_adamw), so TPE never models one
    parameter from two ranges; the trainable gets TrialConfig's `lr`. Optuna records a trial
    that ASHA stopped as COMPLETE with its truncated score; the user attributes `epochs` and
    `stopped_early` tell it from a full-budget trial, and an errored trial, or one that diverged
    or ran out of memory, is recorded as FAIL, never with the partial score of its last report.
    """

    def __init__(self, *args, max_epochs: int, owner: str, yield_after_end: bool = False,
                 preset: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.preset = preset  # the preset's study parameters: its trial is marked "preset"
        self.max_epochs = max_epochs
        self.owner = owner  # the experiment directory: which driver asked a study trial
        self.yield_after_end = yield_after_end  # see suggest
        self._yield = False
        self._unsure: set[str] = set()  # see restore

    def suggest(self, trial_id: str) -> dict | None:
        """The next trial's parameters, or None for "not now".

        With `yield_after_end` (a trial waits for each free slot, see make_tuner), the first
        call after a trial ended, while others are live, is answered None: Tune asks for the
        next trial before it hands the freed actor to the waiting one, and sampling and writing
        a trial take tens of milliseconds (growing with the study), every one of which the
        freed slot would sit idle. Tune asks again on its next step, with the waiting trial
        running. With no trial live Tune would block and sleep a second; no yield then."""
        if getattr(self, "_yield", False):  # a searcher pickled before it existed has none
            self._yield = False
            return None
        if callable(self._space) and trial_id not in self._ot_trials:
            # claimed before its parameters are sampled and written one by one: a driver killed
            # in between leaves a trial that close_orphans knows as its own
            self._ot_trials[trial_id] = self._ot_study.ask()
            self._ot_trials[trial_id].set_user_attr("owner", self.owner)
        params = super().suggest(trial_id)
        if params is not None and trial_id in self._ot_trials:
            self._mark_proposal(trial_id)
        return None if params is None else to_trial_values(params)

    def _mark_proposal(self, trial_id: str) -> None:
        """The study trial's Tune id, and how its parameters came (read from the study's own
        records, complete once they are sampled): written as the trial is proposed, not at its
        end, where every write delays the start of the trial waiting for its slot."""
        study_trial = self._ot_trials[trial_id]
        study_trial.set_user_attr("tune_trial_id", trial_id)
        frozen = self._ot_study._storage.get_trial(study_trial._trial_id)  # no public getter
        how = proposed_by(frozen)
        preset = getattr(self, "preset", None)  # a searcher pickled before it existed has none
        if how == "warm start" and preset and frozen.system_attrs.get("fixed_params") == preset:
            how = "preset"
        study_trial.set_user_attr("proposed_by", how)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not self._told_before_restore(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if self._told_before_restore(trial_id):
            self._completed_trials.add(trial_id)
            return
        study_trial = self._ot_trials.get(trial_id)  # OptunaSearch's own map of live trials
        result = dict(result or {})
        # a trial that diverged or ran out of memory ended itself: failed, not a low score
        error = error or bool(result.get("failure"))
        epochs = int(result.get("training_iteration", 0))
        if epochs:
            result[TIME_METRIC] = full_budget_seconds(result.get(TIME_METRIC, 0.0), epochs,
                                                      self.max_epochs)
        if study_trial is not None and trial_id not in self._completed_trials:
            if "proposed_by" not in study_trial.user_attrs:  # asked by an earlier version
                self._mark_proposal(trial_id)
            study_trial.set_user_attr("epochs", epochs)
            study_trial.set_user_attr("stopped_early", 0 < epochs < self.max_epochs)
            study_trial.set_user_attr("best_epoch", result.get("best_epoch"))
            study_trial.set_user_attr("errored", bool(error))
            if result.get("failure"):
                study_trial.set_user_attr("failure", result["failure"])
        super().on_trial_complete(trial_id, None if error else result, error)
        live = len(self._ot_trials) - len(self._completed_trials)
        self._yield = getattr(self, "yield_after_end", False) and live > 0

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        # the trials the killed driver had asked and, as far as its saved state knows, not
        # ended: the only ones whose end the study may hold already (_told_before_restore)
        self._unsure = set(self._ot_trials) - self._completed_trials

    def _told_before_restore(self, trial_id: str) -> bool:
        """Whether the study already holds this trial's end, though this searcher (restored
        from Tune's saved state) does not: a driver killed after telling the study and before
        Tune saved its state. The restored Tune trial ends again, or reruns its last epochs;
        Optuna refuses any change to a finished trial (UpdateFinishedTrialError, which would
        stop the Tuner on every resume), and the study keeps the end it was first told.

        Only trials asked before the restore are read back from the study, once each until
        found unfinished: a trial this driver asked is told by no one else, and the read is a
        database round trip on every epoch's result."""
        unsure = getattr(self, "_unsure", set())  # a searcher pickled before it existed
        study_trial = self._ot_trials.get(trial_id)
        if trial_id not in unsure or study_trial is None or trial_id in self._completed_trials:
            return False
        if self._ot_study._storage.get_trial(study_trial._trial_id).state.is_finished():
            return True
        unsure.discard(trial_id)  # running here now: only this driver will tell it
        return False


def make_trainable(spec: ExperimentSpec, strategy: str, data_ref: ray.ObjectRef,
                   stages: StageOutputs):
    """The trainable with its run settings, data, and each backbone's stage weights and
    features, of which a trial takes its own config's (trainables.trainable.ByBackbone)."""
    settings = RunSettings(strategy=strategy, backbone=spec.backbones[0],
                           max_epochs=spec.max_epochs, seed=spec.seed,
                           cpus_per_trial=spec.cpus_per_trial,
                           gpus_per_trial=spec.gpus_per_trial, compile=spec.compile)
    weights, features = (ByBackbone(refs[strategy]) if refs.get(strategy) else None
                         for refs in (stages.weights, stages.features))
    return tune.with_resources(
        tune.with_parameters(train_transfer, settings=settings, data=data_ref,
                             weights=weights, features=features),
        {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial},
    )


def strategy_space(spec: ExperimentSpec, strategy: str, context: SpaceContext | None = None):
    """The strategy's define-by-run space, in the run's context (default: `run_context(spec)`;
    its device and training split bound the batch sizes), with the --space overrides."""
    overrides = load_space_file(spec.space_file, spec.strategies) if spec.space_file else {}
    return get_space(strategy, context or run_context(spec), overrides.get(strategy))


def make_searcher(spec: ExperimentSpec, strategy: str, storage: optuna.storages.BaseStorage,
                  yield_after_end: bool = False, context: SpaceContext | None = None
                  ) -> MarkedOptunaSearch:
    multi = spec.objective == "acc+time"
    space = strategy_space(spec, strategy, context)
    points = study_points(first_configs(spec, strategy, space), space)
    return MarkedOptunaSearch(
        space=space,
        metric=[METRIC, TIME_METRIC] if multi else METRIC,
        mode=["max", "min"] if multi else "max",
        points_to_evaluate=points or None,
        preset=points[0] if spec.preset else None,
        sampler=make_sampler(spec.searcher, spec.samples, spec.seed),
        study_name=study_name(spec, strategy),
        storage=storage,
        max_epochs=spec.max_epochs,
        owner=str(spec.exp_dir),
        yield_after_end=yield_after_end,
    )


def make_tuner(spec: ExperimentSpec, strategy: str, data_ref: ray.ObjectRef,
               stages: StageOutputs, storage: optuna.storages.BaseStorage,
               train_images: int | None = None) -> tune.Tuner:
    """The strategy's Tuner; `train_images`, the training split's size, bounds the batch
    sizes its space samples on a GPU."""
    context = run_context(spec, train_images)  # builds the backbone once: its depth
    trainable = make_trainable(spec, strategy, data_ref, stages)
    common = {"metric": METRIC, "mode": "max", "trial_dirname_creator": trial_dirname,
              "max_concurrent_trials": spec.max_concurrent}
    if spec.hyperparameters is not None:  # --config: these values, once, no search
        return tune.Tuner(trainable, param_space=dict(spec.hyperparameters),
                          tune_config=tune.TuneConfig(num_samples=1, **common),
                          run_config=run_config(spec, strategy))
    param_space, preset = None, None
    if spec.scheduler == "pbt":  # Ray runs PBT without a searcher: the population comes first
        population = population_configs(spec, strategy, context)
        search_alg, param_space = population_search(population)
        num_samples = len(population)
    else:
        # no --max-concurrent: every slot busy and one trial waiting for the next free one
        # (see trial_slots), which takes it while the searcher proposes the next (see suggest).
        # Not for HyperBand: it pauses trials at its milestones, a limit counts paused trials
        # as running, and would keep new trials from filling a bracket while those wait.
        slots = None if spec.max_concurrent or spec.scheduler == "hyperband" else \
            trial_slots(spec)
        if slots:
            common["max_concurrent_trials"] = slots + 1
        search_alg = make_searcher(spec, strategy, storage, yield_after_end=bool(slots),
                                   context=context)
        preset = search_alg.preset  # the trial ASHA and the median rule let run every epoch
        num_samples = -1 if spec.samples is None else spec.samples  # -1: until the budget ends
    scheduler = strategy_scheduler(spec, strategy, context, preset)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler,
                                    num_samples=num_samples,
                                    reuse_actors=True,  # no torch import per trial
                                    **common),
        run_config=run_config(spec, strategy),
    )


def strategy_scheduler(spec: ExperimentSpec, strategy: str, context: SpaceContext,
                       preset: dict | None = None):
    """The strategy's trial scheduler: PBT perturbs lrs within its space's lr ranges, and
    ASHA and the median rule let the trial of `preset` (study parameters) run every epoch."""
    # only PBT reads lr ranges; they take a trace of every branch of the space
    lrs = {"lr_ranges": space_lr_ranges(strategy, context)} if spec.scheduler == "pbt" else {}
    return make_scheduler(spec.scheduler, max_epochs=spec.max_epochs,
                          grace_period=spec.grace_period,
                          reduction_factor=spec.reduction_factor, seed=spec.seed,
                          preset=preset, **lrs)


def trial_slots(spec: ExperimentSpec) -> int | None:
    """How many trials the cluster can hold at once: on its live nodes or, if more, on its head
    and every worker the cluster launcher of `ray up` may start (an autoscaling cluster starts
    with none). None before ray.init.

    This is what "as many as the resources allow" (no --max-concurrent) means to the searcher.
    Left to itself, Ray Tune keeps one trial pending at a time for a searcher, so trials start
    one after another: each only once the one before has its actor. And as a reused actor
    takes over the pending trial (dropping the actor being started for it), a trial shorter
    than an actor's start-up never lets a second one come up: 500 trials of 1 s on 2 CPUs ran
    one at a time. Given max_concurrent_trials, Tune keeps that many pending (all actors start
    together, and an autoscaler sees the whole demand), and the searcher runs only as far
    ahead of the free slots as that allows.
    """
    if not ray.is_initialized():
        return None
    live = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    head = [r for r in live if HEAD_RESOURCE in r]
    launchable = head + launchable_nodes(LAUNCHER_CONFIG.expanduser())
    most = max(sum(node_slots(r, spec.cpus_per_trial, spec.gpus_per_trial) for r in nodes)
               for nodes in (live, launchable))
    return max(1, most)


def node_slots(resources: dict, cpus: float, gpus: float) -> int:
    """How many trials of `cpus` CPUs and `gpus` GPUs one node holds (fractions add up, as
    Ray's do: 0.25 GPU each is four to a GPU)."""
    fits = [math.floor(resources.get("CPU", 0.0) / cpus + 1e-9)] if cpus > 0 else []
    fits += [math.floor(resources.get("GPU", 0.0) / gpus + 1e-9)] if gpus > 0 else []
    return min(fits, default=0)


def launchable_nodes(config_file: Path) -> list[dict]:
    """The resources of each worker the cluster launcher may start: its node types' max_workers
    each, at most the cluster's max_workers in all."""
    if not config_file.is_file():
        return []
    config = yaml.safe_load(config_file.read_text()) or {}
    types = [t for name, t in (config.get("available_node_types") or {}).items()
             if name != config.get("head_node_type")]
    workers = [t.get("resources", {}) for t in types for _ in range(int(t.get("max_workers", 0)))]
    return workers[: int(config.get("max_workers", len(workers)))]


def population_configs(spec: ExperimentSpec, strategy: str,
                       context: SpaceContext | None = None) -> list[dict]:
    """PBT's first generation: the preset (where the space holds all of it) and warm-start
    configs, then draws of the sampler from the space."""
    space = strategy_space(spec, strategy, context)
    first = first_configs(spec, strategy, space)
    if spec.preset and study_points(first[:1], space)[0] != to_study_params(first[0]):
        first = first[1:]  # a --space that excludes part of it: PBT cannot sample the rest
    first = first[: spec.samples]
    drawn = initial_population(space, spec.samples - len(first),
                               make_sampler(spec.searcher, spec.samples, spec.seed),
                               to_trial_values)
    return first + drawn


def first_configs(spec: ExperimentSpec, strategy: str, space) -> list[dict]:
    """The configs a strategy's search tries first: its preset (unless --no-preset), then the
    --warm-start configs, as TrialConfig values."""
    preset = [get_preset(strategy, space.context)] if spec.preset else []
    return preset + list((spec.warm_start or {}).get(strategy, []))


def restore_tuner(spec: ExperimentSpec, strategy: str, data_ref: ray.ObjectRef,
                  stages: StageOutputs) -> tune.Tuner:
    """The strategy's interrupted Tuner, from its directory: trials resume from their latest
    checkpoints, and the searcher (with its study) from its saved state. The trainable is built
    again, since its data and weights live in this Ray session's object store. A --time-budget
    goes on with the time left (search.budget)."""
    if spec.time_budget_s is not None:  # Tune's copy of the stopper finds the ledger here
        use_ledger(spec, strategy)
    return tune.Tuner.restore(join_uri(spec.exp_uri, strategy),
                              trainable=make_trainable(spec, strategy, data_ref, stages),
                              resume_unfinished=True, resume_errored=False,
                              restart_errored=False,
                              storage_filesystem=tune_filesystem(spec.exp_uri))


def run_config(spec: ExperimentSpec, strategy: str) -> tune.RunConfig:
    # Tune keeps the best-val_acc epoch's checkpoint (the one the leaderboard's number comes
    # from) and, apart from it, always the latest, which a failed trial resumes from. PBT keeps
    # all until the search ends: a trial it exploits copies another's checkpoint, which must
    # still exist (run.py prunes them afterwards).
    keep = None if spec.scheduler == "pbt" and spec.hyperparameters is None else 1
    return tune.RunConfig(
        name=strategy,
        storage_path=spec.exp_uri,  # a local path, or a URI Tune writes to through pyarrow
        storage_filesystem=tune_filesystem(spec.exp_uri),  # a killed driver leaves no half file
        callbacks=[TBXLoggerCallback(),
                   *progress_callbacks(spec.verbosity, strategy, spec.max_epochs),
                   *budget_callbacks(spec, strategy)],
        checkpoint_config=tune.CheckpointConfig(num_to_keep=keep,
                                                checkpoint_score_attribute="val_acc",
                                                checkpoint_score_order="max"),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        verbose=tune_verbosity(spec.verbosity),
        stop=budget_stopper(spec, strategy),  # --time-budget: this strategy's share
    )


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"  # short: the hyperparameters are in params.json


def study_name(spec: ExperimentSpec, strategy: str) -> str:
    return f"{spec.name}/{strategy}"


def close_orphans(storage: optuna.storages.BaseStorage, name: str, owner: str) -> int:
    """Mark FAIL this experiment's study trials still RUNNING once its Tuner has finished: a
    driver killed between asking the study and saving Tune's state leaves one behind, which no
    Tune trial will ever tell. Trials other drivers of a shared study run are theirs, and left
    alone. Returns how many were closed."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # no study: --config, or PBT
        return 0
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    orphans = [t for t in running if t.user_attrs.get("owner") == owner or unclaimed(t)]
    for trial in orphans:
        storage.set_trial_user_attr(trial._trial_id, "orphaned", True)
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    return len(orphans)


def unclaimed(trial: optuna.trial.FrozenTrial, after_s: float = 10.0) -> bool:
    """A trial asked but never claimed by an owner: its driver was killed between the two,
    which are milliseconds apart in a live driver."""
    age = (datetime.now() - trial.datetime_start).total_seconds() if trial.datetime_start else 0
    return "owner" not in trial.user_attrs and age > after_s


def planned_trials(spec: ExperimentSpec) -> int | None:
    """Trials per strategy; None: as many as fit in --time-budget."""
    return 1 if spec.hyperparameters is not None else spec.samples


def finished(grid: tune.ResultGrid, spec: ExperimentSpec, by_budget: bool = False) -> bool:
    """Whether every planned trial ended (done or errored), or `by_budget` --time-budget ended
    the Tuner with every trial it started; False after Ctrl-C."""
    planned = planned_trials(spec)
    enough = by_budget or (planned is not None and len(grid) >= planned)
    return enough and grid.num_terminated + grid.num_errors == len(grid)
