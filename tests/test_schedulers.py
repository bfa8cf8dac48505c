"""--scheduler: every scheduler builds, impossible settings are refused, PBT's population and
explore, a restored optimizer following its new config, and tiny real runs (slow)."""

import io
import json
import random
import tempfile
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import ray
import torch
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import (
    AsyncHyperBandScheduler,
    FIFOScheduler,
    HyperBandScheduler,
    MedianStoppingRule,
    PopulationBasedTraining,
    TrialScheduler,
)
from ray.tune.search import SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from search.schedulers import (
    SCHEDULERS,
    TIME_ATTR,
    SeededPBT,
    check_scheduler,
    initial_population,
    is_preset,
    make_scheduler,
    population_search,
)
from search.spec import UsageError, parse_spec
from search.tuning import make_searcher
from spaces import SpaceContext
from spaces.registry import LR_RANGES, WD_RANGES, to_study_params
from tests.helpers import TINY_MODEL
from trainables.config import RunSettings, TrialConfig
from trainables.trainable import fit, train_transfer

METRIC = "best_val_acc"  # what search/tuning.py ranks by


def space(trial: optuna.Trial) -> dict:
    """A define-by-run space like the strategies' (conditional lr), returning constants."""
    if trial.suggest_categorical("optimizer", ["sgd", "adamw"]) == "sgd":
        trial.suggest_float("lr", 0.01, 0.3, log=True)
    else:
        trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    if trial.suggest_categorical("augment", ["none", "randaugment"]) == "randaugment":
        trial.suggest_int("magnitude", 1, 20)
    return {"batch_size": 32}


def identity(values: dict) -> dict:
    return values


# --- not slow -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, kind", [
    ("asha", AsyncHyperBandScheduler), ("hyperband", HyperBandScheduler),
    ("median", MedianStoppingRule), ("pbt", PopulationBasedTraining), ("fifo", FIFOScheduler)])
def test_every_scheduler_builds(name, kind):
    assert name in SCHEDULERS
    scheduler = make_scheduler(name, max_epochs=6, grace_period=2, reduction_factor=2, seed=0)
    assert isinstance(scheduler, kind)


def default_scheduler(name: str, tmp_path: Path, *flags: str):
    spec = parse_spec(["--strategy", "scratch", "--scheduler", name, "--storage",
                       str(tmp_path), *flags])
    return make_scheduler(name, max_epochs=spec.max_epochs, grace_period=spec.grace_period,
                          reduction_factor=spec.reduction_factor, seed=spec.seed)


def test_a_default_search_has_ray_tunes_asha_rungs_and_the_others_keep_two_epochs(tmp_path):
    """Without --grace-period and --reduction-factor: ASHA is Ray Tune's (rungs at 1 and 4 of
    the 6 default epochs, a quarter going on), the median rule waits 2 epochs and PBT perturbs
    every 2; HyperBand halves. Given values win, for every scheduler."""
    asha = default_scheduler("asha", tmp_path)
    assert sorted(m for m, _ in asha._brackets[0]._rungs) == [1, 4]
    assert asha._brackets[0].rf == 4
    assert default_scheduler("median", tmp_path)._grace_period == 2
    assert default_scheduler("pbt", tmp_path)._perturbation_interval == 2
    assert default_scheduler("hyperband", tmp_path)._eta == 2
    given = default_scheduler("asha", tmp_path, "--grace-period", "2", "--reduction-factor", "2")
    assert sorted(m for m, _ in given._brackets[0]._rungs) == [2, 4]
    assert default_scheduler("median", tmp_path, "--grace-period", "3")._grace_period == 3
    assert default_scheduler("pbt", tmp_path, "--grace-period", "1")._perturbation_interval == 1
    assert default_scheduler("hyperband", tmp_path, "--reduction-factor", "3")._eta == 3


def test_the_list_of_schedulers_is_the_tested_one():
    assert SCHEDULERS == ("asha", "hyperband", "median", "pbt", "fifo")


@pytest.mark.parametrize("name", SCHEDULERS)
def test_one_epoch_runs_with_every_scheduler_but_pbt(name):
    if name == "pbt":
        with pytest.raises(UsageError, match="raise --max-epochs above 1"):
            check_scheduler(name, 1, 1, 2)
    else:
        check_scheduler(name, 1, 1, 2)  # --max-epochs 1 clamps the grace period to 1


@pytest.mark.parametrize("args, kwargs, fix", [
    (("asha", 6, 2, 1), {}, "--reduction-factor 1: use 2 or more"),
    (("hyperband", 6, 2, 0), {}, "--reduction-factor 0: use 2 or more"),
    (("asha", 6, 8, 2), {}, "lower --grace-period or raise --max-epochs"),
    (("median", 6, 0, 2), {}, "--grace-period 0: use 1 epoch or more"),
    (("fifo", 0, 1, 2), {}, "--max-epochs 0: train at least 1 epoch"),
    (("pbt", 2, 2, 2), {}, "raise --max-epochs above 2 or lower --grace-period"),
    (("pbt", 4, 1, 2), {"perturbation_interval": 4}, "lower perturbation_interval"),
    (("pbt", 4, 1, 2), {"perturbation_interval": 0}, "perturbation_interval 0: use 1 epoch"),
    (("pbt", 6, 2, 2), {"samples": 1}, "at least 2 trials .* raise --samples"),
    (("sha", 6, 2, 2), {}, "expected one of asha, hyperband, median, pbt, fifo"),
])
def test_impossible_settings_raise_a_usage_error_naming_the_fix(args, kwargs, fix):
    with pytest.raises(UsageError, match=fix):
        check_scheduler(*args, **kwargs)


def test_make_scheduler_checks_its_arguments():
    with pytest.raises(UsageError, match="--reduction-factor"):
        make_scheduler("asha", max_epochs=6, grace_period=2, reduction_factor=1, seed=0)


@pytest.mark.parametrize("name", ["asha", "median"])
def test_the_presets_trial_runs_every_epoch_where_its_twin_is_stopped(name):
    """Four trials score high, the preset and a trial one lr away from it score low: the rule
    stops the latter at its first chance, and lets the preset run to max_epochs."""
    values = {"optimizer": "sgd", "lr": 0.05, "batch_size": 32, "augment": "crop_flip"}
    scheduler = make_scheduler(name, max_epochs=3, grace_period=1, reduction_factor=4, seed=0,
                               preset=to_study_params(values))
    scheduler.set_search_properties(METRIC, "max")
    trials = [Trial("fake", config={**values, "lr": lr}, stub=True)
              for lr in (0.01, 0.02, 0.03, 0.04, 0.05, 0.06)]
    preset, twin = trials[4], trials[5]
    controller = SimpleNamespace(get_live_trials=lambda: trials)  # the median rule asks
    for trial in trials:
        scheduler.on_trial_add(controller, trial)
    decisions = {trial: [] for trial in trials}
    for epoch in (1, 2):
        for trial, score in zip(trials, (0.8, 0.7, 0.6, 0.5, 0.1, 0.1), strict=True):
            if TrialScheduler.STOP not in decisions[trial]:
                decisions[trial].append(scheduler.on_trial_result(
                    controller, trial, {TIME_ATTR: epoch, METRIC: score}))
    assert TrialScheduler.STOP in decisions[twin]
    assert decisions[preset] == [TrialScheduler.CONTINUE] * 2
    # its last epoch is the rule's again (the median rule asserted on a trial it had stopped)
    scheduler.on_trial_result(controller, preset, {TIME_ATTR: 3, METRIC: 0.1})


def test_the_searchers_first_trial_is_the_one_the_scheduler_keeps(tmp_path):
    spec = parse_spec(["--strategy", "scratch", "--backbone", TINY_MODEL, "--max-epochs", "3",
                       "--storage", str(tmp_path)])
    context = SpaceContext(max_epochs=3)
    searcher = make_searcher(spec, "scratch", optuna.storages.InMemoryStorage(),
                             context=context)
    first, second = searcher.suggest("a"), searcher.suggest("b")
    # make_tuner hands the scheduler the searcher's preset
    assert is_preset(first, searcher.preset) and not is_preset(second, searcher.preset)
    no_preset = parse_spec(["--strategy", "scratch", "--storage", str(tmp_path), "--no-preset"])
    assert make_searcher(no_preset, "scratch", optuna.storages.InMemoryStorage(),
                         context=context).preset is None
    assert not is_preset(first, {})


def test_initial_population_samples_n_configs_inside_the_space():
    configs = initial_population(space, 8, optuna.samplers.TPESampler(seed=3), identity)
    assert len(configs) == 8
    for c in configs:
        low, high = (0.01, 0.3) if c["optimizer"] == "sgd" else (1e-4, 1e-2)
        assert low <= c["lr"] <= high and 1e-6 <= c["weight_decay"] <= 1e-2
        assert ("magnitude" in c) == (c["augment"] == "randaugment")
        assert c["batch_size"] == 32  # the space's constants are merged in
    assert len({c["lr"] for c in configs}) == 8
    again = initial_population(space, 8, optuna.samplers.TPESampler(seed=3), identity)
    assert again == configs  # the sampler's seed fixes the population


def test_initial_population_maps_names_through_to_values():
    def to_values(values: dict) -> dict:
        return {("learning_rate" if k == "lr" else k): v for k, v in values.items()}

    configs = initial_population(space, 2, optuna.samplers.RandomSampler(seed=0), to_values)
    assert all("learning_rate" in c and "lr" not in c for c in configs)


def test_population_search_gives_every_config_every_key():
    configs = [{"lr": 0.1, "augment": "randaugment", "magnitude": 12},
               {"lr": 0.2, "augment": "flip"}]
    search_alg, param_space = population_search(configs)
    assert not isinstance(search_alg, SearchGenerator)  # PBT refuses SearchGenerators only
    assert param_space == {"augment": None, "lr": None, "magnitude": None}
    presets = search_alg._points_to_evaluate
    assert presets[1] == {"augment": "flip", "lr": 0.2,
                          "magnitude": TrialConfig.__dataclass_fields__["magnitude"].default}
    assert presets[0]["magnitude"] == 12


def explore(pbt: SeededPBT, config: dict) -> dict:
    with pbt._private_random():  # as inside on_trial_result
        new, operations = pbt._get_new_config(SimpleNamespace(config={}),
                                              SimpleNamespace(config=config))
    assert set(operations) == {"lr", "weight_decay"}
    return new


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_pbt_explore_is_seeded_bounded_by_optimizer_and_leaves_global_random_alone(device):
    """Within the space's lr range of each optimizer: a GPU's is higher, as its batches are."""
    lr_ranges = SpaceContext(device=device, image_size=128).scaled(LR_RANGES)
    outer = random.getstate()
    configs = [{"optimizer": "sgd", "lr": 0.3, "weight_decay": 1e-6, "batch_size": 64},
               {"optimizer": "adamw", "lr": 1e-5, "weight_decay": 1e-2, "batch_size": 32}]
    runs = []
    for _ in range(2):
        pbt = make_scheduler("pbt", max_epochs=6, grace_period=1, reduction_factor=2, seed=7,
                             lr_ranges=lr_ranges)
        runs.append([explore(pbt, c) for c in configs * 50])
    assert runs[0] == runs[1]
    assert random.getstate() == outer
    for old, new in zip(configs * 50, runs[0], strict=True):
        low, high = lr_ranges[old["optimizer"]]
        assert low <= new["lr"] <= high
        low, high = WD_RANGES[old["optimizer"]]  # each optimizer's decay in its own range
        assert low <= new["weight_decay"] <= high
        assert (new["optimizer"], new["batch_size"]) == (old["optimizer"], old["batch_size"])
    assert len({new["lr"] for new in runs[0]}) > 10  # resampled and perturbed, not stuck


# --- slow: training, and tiny real Tuner runs -----------------------------------------------

def captured_fit(settings: RunSettings, hp: TrialConfig, demo, **kwargs) -> list:
    """fit(); the (metrics, checkpoint state as saved and loaded) of every epoch."""
    reports = []

    def report(metrics: dict, state) -> None:
        buffer = io.BytesIO()
        torch.save(state(), buffer)
        buffer.seek(0)
        reports.append((metrics, torch.load(buffer, weights_only=True)))

    fit(settings, hp, demo.train, demo.val, None, num_classes=demo.num_classes,
        report=report, **kwargs)
    return reports


@pytest.mark.slow
def test_a_restored_optimizer_trains_with_its_new_lr_and_weight_decay(tiny_demo):
    settings = RunSettings(strategy="scratch", backbone=TINY_MODEL, max_epochs=3, seed=0)
    old = TrialConfig(lr=0.01, batch_size=32, augment="none", weight_decay=1e-5)
    new = TrialConfig(lr=0.2, batch_size=32, augment="none", weight_decay=3e-3)
    (_, state), = captured_fit(settings, old, tiny_demo, epochs=1)

    resumed = captured_fit(settings, new, tiny_demo, epochs=2, resume=state)
    fresh = captured_fit(settings, new, tiny_demo, epochs=2)
    metrics, after = resumed[0]
    assert metrics["epoch"] == 2
    groups = after["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [new.weight_decay, 0.0]  # none on norms, biases
    assert all(g["initial_lr"] == new.lr for g in groups)
    assert after["optimizer"]["state"]  # the momentum buffers came from the checkpoint
    assert metrics["lr"] == pytest.approx(fresh[1][0]["lr"])  # the new config's lr curve


@pytest.fixture
def two_cpus(ray_local):
    assert ray.cluster_resources()["CPU"] == 2


def tuner(tmp_path, name: str, trainable, *, scheduler, search_alg, param_space=None,
          num_samples: int) -> tune.Tuner:
    """A Tuner as search/tuning.py builds one: reuse_actors, the best checkpoint and the latest
    kept per trial, except with PBT, which keeps every checkpoint: a trial restarts from a top
    trial's checkpoint of the exploit's epoch, maybe after that trial has reported more, and
    with num_to_keep=1 Tune may have deleted it by then ("Could not recover from checkpoint
    as it does not exist on storage anymore": the trial errors)."""
    keep = None if isinstance(scheduler, PopulationBasedTraining) else 1
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", search_alg=search_alg,
                                    scheduler=scheduler, num_samples=num_samples,
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=name, storage_path=str(tmp_path), verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep,
                                                    checkpoint_score_attribute="val_acc",
                                                    checkpoint_score_order="max")),
    )


def transfer(demo, max_epochs: int):
    settings = RunSettings(strategy="scratch", backbone=TINY_MODEL, max_epochs=max_epochs,
                           seed=0)
    return tune.with_parameters(train_transfer, settings=settings, data=demo.for_search(),
                                weights=None)


def rows(result) -> list[dict]:
    return [json.loads(line)
            for line in (Path(result.path) / "result.json").read_text().splitlines()]


def assert_all_finished(grid, n: int, max_epochs: int) -> list[int]:
    """Every trial ended without error, and resumed where it paused: its epochs per trial."""
    assert len(grid) == n
    assert [r.error for r in grid] == [None] * n
    epochs = []
    for result in grid:
        history = rows(result)
        # a restart that found no checkpoint would report epoch 1 at a later iteration
        assert all(r["epoch"] == r["training_iteration"] for r in history)
        epochs.append(history[-1]["epoch"])
    assert all(1 <= e <= max_epochs for e in epochs)
    return epochs


@pytest.mark.slow
def test_pbt_copies_and_perturbs_trials_and_every_trial_finishes(tmp_path, two_cpus,
                                                                 tiny_demo):
    configs = initial_population(space, 4, optuna.samplers.TPESampler(seed=0), identity)
    search_alg, param_space = population_search(configs)
    scheduler = make_scheduler("pbt", max_epochs=4, grace_period=1, reduction_factor=2, seed=0,
                               perturbation_interval=1)
    grid = tuner(tmp_path, "pbt", transfer(tiny_demo, 4), scheduler=scheduler,
                 search_alg=search_alg, param_space=param_space, num_samples=4).fit()

    assert_all_finished(grid, 4, 4)
    assert all(rows(r)[-1]["epoch"] == 4 for r in grid)  # PBT stops no trial
    exploits = (tmp_path / "pbt" / "pbt_global.txt").read_text().splitlines()
    assert exploits
    policies = list((tmp_path / "pbt").glob("pbt_policy_*.txt"))
    assert policies
    finals = {r.metrics["trial_id"]: r.config for r in grid}
    for policy in policies:  # an exploited trial trains on with the last config it was given
        trial_id = policy.stem.removeprefix("pbt_policy_")
        last = json.loads(policy.read_text().splitlines()[-1])
        assert finals[trial_id]["lr"] == pytest.approx(last[-1]["lr"])
        assert finals[trial_id]["optimizer"] == last[-1]["optimizer"]


def lineage(config: dict) -> None:
    """Reports, every epoch, which trial wrote the checkpoint it started from ("origin")."""
    checkpoint = tune.get_checkpoint()
    start, origin = 0, None
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            saved = json.loads((Path(directory) / "state.json").read_text())
        start, origin = saved["epoch"], saved["writer"]
    me = tune.get_context().get_trial_id()
    for epoch in range(start + 1, 5):
        with tempfile.TemporaryDirectory() as directory:
            (Path(directory) / "state.json").write_text(json.dumps({"epoch": epoch, "writer": me}))
            tune.report({METRIC: config["quality"] * epoch, "origin": origin, "epoch": epoch,
                         "lr": config["lr"]},
                        checkpoint=tune.Checkpoint.from_directory(directory))


@pytest.mark.slow
def test_with_reused_actors_an_exploited_trial_starts_from_the_copied_trials_checkpoint(
        tmp_path, two_cpus):
    configs = [{"quality": q, "lr": 0.1, "weight_decay": 1e-4, "optimizer": "sgd"}
               for q in (1.0, 2.0, 3.0, 4.0)]
    search_alg = tune.search.BasicVariantGenerator(points_to_evaluate=configs)
    scheduler = make_scheduler("pbt", max_epochs=4, grace_period=1, reduction_factor=2, seed=0)
    grid = tuner(tmp_path, "lineage", lineage, scheduler=scheduler, search_alg=search_alg,
                 param_space=dict.fromkeys(configs[0]), num_samples=4).fit()

    assert [r.error for r in grid] == [None] * 4
    assert (tmp_path / "lineage" / "pbt_global.txt").read_text()
    copied = 0
    for result in grid:
        me = result.metrics["trial_id"]
        for row in rows(result):
            assert row["epoch"] == row["training_iteration"]
            copied += row["origin"] not in (None, me)
    assert copied  # a restart after an exploit read another trial's checkpoint


def optuna_searcher(seed: int = 0) -> OptunaSearch:
    """As search/tuning.py builds it, with the study in memory."""
    return OptunaSearch(space=space, metric=METRIC, mode="max",
                        sampler=optuna.samplers.TPESampler(seed=seed), seed=seed)


@pytest.mark.slow
def test_hyperband_with_optuna_pauses_stops_and_finishes_every_trial(tmp_path, two_cpus,
                                                                     tiny_demo):
    # max_t 2, rf 2: brackets s=0 (2 trials, 2 epochs, never stopped) and s=1 (2 trials; at
    # epoch 1 the first to get there pauses for the other, the better one goes on to 2)
    scheduler = make_scheduler("hyperband", max_epochs=2, grace_period=1, reduction_factor=2,
                               seed=0)
    grid = tuner(tmp_path, "hyperband", transfer(tiny_demo, 2), scheduler=scheduler,
                 search_alg=optuna_searcher(), num_samples=4).fit()
    assert sorted(assert_all_finished(grid, 4, 2)) == [1, 2, 2, 2]


@pytest.mark.slow
def test_median_stopping_with_optuna_finishes_every_trial(tmp_path, two_cpus, tiny_demo):
    scheduler = make_scheduler("median", max_epochs=3, grace_period=1, reduction_factor=2,
                               seed=0)
    grid = tuner(tmp_path, "median", transfer(tiny_demo, 3), scheduler=scheduler,
                 search_alg=optuna_searcher(), num_samples=4).fit()
    assert_all_finished(grid, 4, 3)
