"""--space files, lr per optimizer, --show-space's round trip and --warm-start: no Ray."""

import json
import logging
import pickle
import warnings

import optuna
import pandas as pd
import pytest

from analysis.results import leaderboard, write_leaderboard
from search.spec import UsageError
from search.warm_start import load_warm_start, study_points
from spaces import (
    SPACES,
    SpaceContext,
    get_space,
    space_dimensions,
    to_study_params,
    to_trial_values,
)
from spaces.dims import Choices, Fixed, Range
from spaces.overrides import SpaceFileError, describe_space, describe_spaces, load_space_file
from spaces.registry import LR_NAMES, LR_RANGES
from store.best_config import best_config, write_best_config
from trainables.config import TrialConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)

# every form, on dimensions of every strategy; all of it inside what TrialConfig accepts
OVERRIDES = """\
all:
  batch_size: [32, 64]                 # choices
  label_smoothing: 0.05                # fixed
  weight_decay: {low: 1.0e-5, high: 1.0e-4, log: true}
  augment: {choices: [flip, randaugment]}
  magnitude: {low: 3, high: 5}         # type: int from TrialConfig
  lr:
    sgd: {low: 0.01, high: 0.02}
    adamw: {low: 1e-4, high: 2.0e-4, log: true}   # 1e-4: text to PyYAML, read as a number
unfrozen:
  lr_mult: {low: 0.5, high: 0.6}
frozen:
  head: [mlp]
  head_hidden: 64
  head_dropout: {low: 0.1, high: 0.2}
lp_ft:
  probe_epochs: 2
partial:
  freeze_depth: {low: 2, high: 3, type: int}
colorization:
  freeze_depth: [0, 4]
  lr: {low: 0.001, high: 0.002, log: true}      # one range for both optimizers
"""


def space_file(tmp_path, text, name="space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def run_space(space, n=25, sampler=None):
    """n trials of a real study through the define-by-run `space`: (trial, constants) each."""
    study = optuna.create_study(sampler=sampler or optuna.samplers.RandomSampler(seed=0))
    asked = []
    for _ in range(n):
        trial = study.ask()
        constants = space(trial)
        asked.append((trial, constants))
        study.tell(trial, trial.number % 7 / 7)  # some signal, so TPE models something
    return asked


# --- bad files ---------------------------------------------------------------------------------

BAD_FILES = {
    "unknown strategy": ("unfrozn:\n  batch_size: [32]\n",
                         r"'unfrozn' is not a strategy \(did you mean unfrozen or frozen\?\)"),
    "unknown dimension": ("all:\n  batchsize: [32]\n",
                          r"all\.batchsize: not a hyperparameter \(did you mean batch_size\?\)"),
    "not in the strategy": ("unfrozen:\n  head: mlp\n",
                            r"unfrozen\.head: unfrozen does not search head; its dimensions "
                            r"are .*lr_mult"),
    "low >= high": ("all:\n  lr_mult: {low: 0.5, high: 0.1}\n", r"low 0\.5 is not below high"),
    "log with low <= 0": ("all:\n  weight_decay: {low: 0, high: 0.1, log: true}\n",
                          r"weight_decay: a log range needs low > 0"),
    "int bounds not whole": ("all:\n  magnitude: {low: 2.5, high: 9, type: int}\n",
                             r"magnitude\.low: 2\.5 is a number; magnitude takes a whole"),
    "int type on a float": ("all:\n  lr_mult: {low: 1, high: 3, type: int}\n",
                            r"lr_mult takes floats"),
    "range of text": ("all:\n  augment: {low: 1, high: 2}\n", r"augment is not a number"),
    "unknown form": ("all:\n  lr_mult: {min: 0.1, max: 1}\n", r"\{min, max\} is no form"),
    "empty choices": ("all:\n  batch_size: []\n", r"batch_size: the list of choices is empty"),
    "repeated choices": ("all:\n  batch_size: [32, 32]\n", r"repeat a value"),
    "bad constant": ("all:\n  augment: sepia\n", r"augment='sepia' is refused by TrialConfig"),
    "bad choice": ("frozen:\n  head: [linear, transformer]\n",
                   r"head='transformer' is refused by TrialConfig"),
    "constant out of range": ("all:\n  magnitude: 40\n",
                              r"magnitude=40 is refused by TrialConfig \(out of range\)"),
    "wrong type": ("all:\n  batch_size: big\n", r"'big' is text; batch_size takes a whole"),
    "bad lr optimizer": ("all:\n  lr: {sgd: {low: 0.1, high: 0.2}, adam: 0.1}\n",
                         r"all\.lr: \{sgd, adam\} is no form I know.*one mapping per optimizer"),
    "broken YAML": ("unfrozen:\n  batch_size: [32, 64\n  lr_mult: 0.5\n",
                    r"not valid YAML at line 3, column 10"),
    "top level a list": ("- unfrozen\n- frozen\n", r"the top level is a list"),
    "strategy not a mapping": ("unfrozen: [batch_size]\n", r"unfrozen is a list"),
    "all twice": ("all: {}\n'*': {}\n", r"both 'all' and '\*'"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_space_file_is_refused_with_one_line(tmp_path, case):
    text, message = BAD_FILES[case]
    path = space_file(tmp_path, text)
    with pytest.raises(SpaceFileError, match=message) as error:
        load_space_file(path, ["unfrozen"])
    assert str(error.value).startswith(f"--space {path}: ") and "\n" not in str(error.value)


def test_a_missing_space_file(tmp_path):
    with pytest.raises(SpaceFileError, match=r"--space .*nope\.yaml: no such file"):
        load_space_file(str(tmp_path / "nope.yaml"), ["unfrozen"])


def test_a_block_of_a_strategy_outside_the_run_is_checked_too(tmp_path):
    with pytest.raises(SpaceFileError, match="frozen.head"):
        load_space_file(space_file(tmp_path, "frozen:\n  head: [conv]\n"), ["unfrozen"])


def test_get_space_refuses_an_override_the_strategy_never_asks_for():
    with pytest.raises(ValueError, match="unfrozen does not search.*its dimensions: optimizer"):
        get_space("unfrozen", overrides={"head": Fixed("mlp")})


# --- overrides take effect ---------------------------------------------------------------------

def test_the_file_reads_into_overrides_by_optuna_name(tmp_path):
    overrides = load_space_file(space_file(tmp_path, OVERRIDES), list(SPACES))
    assert set(overrides) == set(SPACES)
    unfrozen, colorization = overrides["unfrozen"], overrides["colorization"]
    assert unfrozen["batch_size"] == Choices((32, 64))
    assert unfrozen["label_smoothing"] == Fixed(0.05)
    assert unfrozen["magnitude"] == Range(3, 5, integer=True)
    assert unfrozen["lr_adamw"] == Range(1e-4, 2e-4, log=True)
    assert unfrozen["lr_mult"] == Range(0.5, 0.6)
    assert colorization["lr_sgd"] == colorization["lr_adamw"] == Range(1e-3, 2e-3, log=True)
    assert "lr_mult" not in overrides["scratch"]  # `all` reaches only the strategies that ask
    assert "head" not in overrides["unfrozen"]


@pytest.mark.parametrize("strategy", sorted(SPACES))
def test_sampled_values_lie_inside_the_overrides(tmp_path, strategy):
    overrides = load_space_file(space_file(tmp_path, OVERRIDES), list(SPACES))[strategy]
    fixed = {name: dim.value for name, dim in overrides.items() if isinstance(dim, Fixed)}
    space = get_space(strategy, SpaceContext(), overrides)
    seen = set()
    for trial, constants in run_space(space):
        assert constants == fixed  # returned, never suggested
        assert not set(fixed) & set(trial.params)
        for name, value in trial.params.items():
            assert name not in overrides or overrides[name].contains(value), (name, value)
        seen |= set(trial.params)
        TrialConfig.from_dict(to_trial_values({**trial.params, **constants}))
    assert {"batch_size", "augment", "magnitude"} <= seen
    assert seen & {"weight_decay_sgd", "weight_decay_adamw"}


@pytest.mark.parametrize("strategy", sorted(SPACES))
def test_every_space_gives_trial_config_values(strategy):
    for trial, constants in run_space(get_space(strategy), n=15):
        values = to_trial_values({**trial.params, **constants})
        assert "lr" in values and not set(values) & set(LR_NAMES)
        TrialConfig.from_dict(values)


def test_a_fixed_branch_settles_its_conditions(tmp_path):
    text = "frozen:\n  head: linear\n  augment: flip\n  optimizer: sgd\n  mix: none\n"
    overrides = load_space_file(space_file(tmp_path, text), ["frozen"])["frozen"]
    for trial, constants in run_space(get_space("frozen", overrides=overrides), n=10):
        assert constants == {"head": "linear", "augment": "flip", "optimizer": "sgd",
                             "mix": "none"}
        assert set(trial.params) == {"lr_sgd", "weight_decay_sgd", "batch_size", "ema_decay",
                                     "warmup", "label_smoothing"}
        values = to_trial_values({**trial.params, **constants})
        assert (values["lr"], values["weight_decay"]) == (trial.params["lr_sgd"],
                                                          trial.params["weight_decay_sgd"])


# --- lr per optimizer --------------------------------------------------------------------------

def test_each_optimizer_has_its_own_lr_parameter():
    with warnings.catch_warnings():  # multivariate and group are experimental in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(multivariate=True, group=True, seed=0,
                                             n_startup_trials=5)
        asked = run_space(get_space("unfrozen"), n=30, sampler=sampler)
    optimizers = set()
    for trial, _ in asked:
        optimizer = trial.params["optimizer"]
        optimizers.add(optimizer)
        lrs = {n for n in trial.params if n in LR_NAMES}
        assert lrs == {f"lr_{optimizer}"}
        assert {n for n in trial.params if n.startswith("weight_decay_")} == {
            f"weight_decay_{optimizer}"}
        low, high = LR_RANGES[optimizer]
        assert low <= trial.params[f"lr_{optimizer}"] <= high
        assert trial.distributions[f"lr_{optimizer}"].log
    assert optimizers == {"sgd", "adamw"}


def test_trial_values_and_study_params_map_lr_both_ways():
    values = {"lr": 0.01, "optimizer": "adamw", "batch_size": 32}
    assert to_study_params(values) == {"lr_adamw": 0.01, "optimizer": "adamw", "batch_size": 32}
    assert to_trial_values(to_study_params(values)) == values
    assert to_study_params({"lr": 0.1}) == {"lr_sgd": 0.1}  # TrialConfig's default optimizer
    assert to_trial_values({"lr_sgd": 0.1}) == {"lr": 0.1}
    with pytest.raises(ValueError, match="lr of another optimizer"):
        to_trial_values({"lr_sgd": 0.1, "optimizer": "adamw"})
    assert to_study_params({"weight_decay": 0.05, "optimizer": "adamw"}) == {
        "weight_decay_adamw": 0.05, "optimizer": "adamw"}


# --- --show-space ------------------------------------------------------------------------------

UNFROZEN = """\
unfrozen:
  optimizer: [sgd, adamw]
  lr:
    sgd: {low: 0.001, high: 0.3, log: true}
    adamw: {low: 1.0e-05, high: 0.01, log: true}
  weight_decay:
    sgd: {low: 1.0e-06, high: 0.01, log: true}
    adamw: {low: 0.0001, high: 0.3, log: true}
  batch_size: [32, 64, 128]
  augment: [none, flip, crop_flip, trivialaugment, randaugment]
  magnitude: {low: 1, high: 20, type: int}  # when augment=randaugment
  mix: [none, mixup, cutmix]
  mix_alpha: {low: 0.1, high: 1.0}  # when mix in [mixup, cutmix]
  ema_decay: [0.0, 0.99, 0.999, 0.9999]
  warmup: {low: 0.0, high: 0.3}
  label_smoothing: {low: 0.0, high: 0.2}
  lr_mult: {low: 0.01, high: 1.0, log: true}
  # preset, tried first (unless --no-preset): optimizer=sgd lr=0.0015 weight_decay=1e-06
  #   batch_size=128 augment=crop_flip mix=none ema_decay=0 warmup=0.05 label_smoothing=0 lr_mult=1
"""


def test_describe_prints_the_space_with_its_conditions():
    assert describe_space("unfrozen") == UNFROZEN
    frozen = describe_space("frozen")
    assert "  head_hidden: [128, 256, 512]  # when head=mlp\n" in frozen
    assert "  head_bn: [false, true]  # when head=mlp\n" in frozen
    assert "  freeze_depth: {low: 0, high: 1, type: int}\n" in describe_space(
        "colorization", SpaceContext(num_blocks=2))


def test_describe_shows_overrides(tmp_path):
    text = "unfrozen:\n  optimizer: sgd\n  augment: randaugment\n  lr_mult: [0.1, 1.0]\n"
    overrides = load_space_file(space_file(tmp_path, text), ["unfrozen"])
    described = describe_spaces(["unfrozen"], overrides=overrides)
    assert "  optimizer: sgd\n  lr:\n    sgd: {low: 0.001" in described
    assert "adamw" not in described
    assert "  magnitude: {low: 1, high: 20, type: int}\n" in described  # no condition left
    assert "  lr_mult: [0.1, 1.0]\n" in described


@pytest.mark.parametrize("with_overrides", [False, True])
@pytest.mark.parametrize("context", [SpaceContext(), SpaceContext(num_blocks=2, max_epochs=1)])
def test_show_space_output_loads_back_to_the_same_space(tmp_path, with_overrides, context):
    strategies = list(SPACES)
    overrides = (load_space_file(space_file(tmp_path, OVERRIDES), strategies)
                 if with_overrides else None)
    described = describe_spaces(strategies, context, overrides)
    again = load_space_file(space_file(tmp_path, described, "shown.yaml"), strategies)
    assert describe_spaces(strategies, context, again) == described
    for strategy in strategies:  # every dimension of every branch is in the file
        assert set(again[strategy]) == set(space_dimensions(strategy, context))


def test_a_bound_space_pickles(tmp_path):
    overrides = load_space_file(space_file(tmp_path, OVERRIDES), ["frozen"])["frozen"]
    space = pickle.loads(pickle.dumps(get_space("frozen", SpaceContext(), overrides)))
    assert run_space(space, n=1)[0][1] == {"label_smoothing": 0.05, "head_hidden": 64}


# --- --warm-start ------------------------------------------------------------------------------

HYPERPARAMETERS = {"lr": 0.05, "optimizer": "sgd", "batch_size": 64, "augment": "flip",
                   "weight_decay": 1e-4, "label_smoothing": 0.1, "lr_mult": 0.3}
META = {"data": "demo", "image_size": 32, "backbone": "resnet18", "pretrain_epochs": 10,
        "max_epochs": 6, "seed": 0}


def best_yaml(tmp_path, strategy="unfrozen", hyperparameters=HYPERPARAMETERS):
    path = tmp_path / f"{strategy}.yaml"
    write_best_config(path, best_config(META, strategy, "supervised", hyperparameters,
                                        {"val_acc": 0.6, "best_epoch": 4}))
    return str(path)


def leaderboard_csv(tmp_path, hyperparameters=None):
    """A leaderboard as analysis writes it: unfrozen's best of two trials, frozen's one trial,
    scratch with every trial errored (no hyperparameters)."""
    trials = [("unfrozen", "a", 0.5, HYPERPARAMETERS), ("unfrozen", "b", 0.6,
              hyperparameters or {**HYPERPARAMETERS, "lr": 0.005, "optimizer": "adamw"}),
              ("frozen", "c", 0.4, {**HYPERPARAMETERS, "head": "linear"}),
              ("scratch", "d", float("nan"), HYPERPARAMETERS)]
    df = pd.DataFrame([{"strategy": s, "trial_id": t, "val_acc": acc, "errored": s == "scratch",
                        "stopped_early": False, "trial_hours": 0.1, "best_epoch": 3,
                        "pretrained": "supervised", "hyperparameters": json.dumps(hp)}
                       for s, t, acc, hp in trials])
    return str(write_leaderboard(leaderboard(df), tmp_path))


def test_warm_start_from_a_best_yaml(tmp_path):
    found = load_warm_start(best_yaml(tmp_path), ["unfrozen", "frozen"])
    assert found == {"unfrozen": [HYPERPARAMETERS], "frozen": []}


def test_warm_start_from_a_leaderboard(tmp_path):
    found = load_warm_start(leaderboard_csv(tmp_path), ["unfrozen", "frozen", "scratch"])
    assert found["unfrozen"] == [{**HYPERPARAMETERS, "lr": 0.005, "optimizer": "adamw"}]
    assert found["frozen"] == [{**HYPERPARAMETERS, "head": "linear"}]
    assert found["scratch"] == []  # every trial errored: nothing to start from


WARM_ERRORS = {
    "missing file": (lambda p: str(p / "nope.yaml"), ["unfrozen"], "no such file"),
    "not yaml or csv": (lambda p: space_file(p, "x", "notes.txt"), ["unfrozen"],
                        "neither .yaml nor .csv"),
    "broken yaml": (lambda p: space_file(p, "a: [1\n", "best.yaml"), ["unfrozen"],
                    "not valid YAML"),
    "not a best config": (lambda p: space_file(p, "a: 1\n", "best.yaml"), ["unfrozen"],
                          "not a best config"),
    "strategy not in the run": (best_yaml, ["frozen", "scratch"],
                                "a config of unfrozen, which this run does not search"),
    "bad yaml hyperparameters": (
        lambda p: best_yaml(p, hyperparameters={**HYPERPARAMETERS, "augment": "sepia"}),
        ["unfrozen"], "bad hyperparameters for unfrozen .*augment='sepia'"),
    "no rows for the run": (leaderboard_csv, ["scratch", "partial"],
                            "no config for scratch, partial .it has frozen, scratch, unfrozen"),
    "bad csv hyperparameters": (
        lambda p: leaderboard_csv(p, {**HYPERPARAMETERS, "learning_rate": 1}), ["unfrozen"],
        r"row 2: bad hyperparameters for unfrozen .*unknown trial config keys"),
    "csv without the columns": (lambda p: space_file(p, "a,b\n1,2\n", "board.csv"),
                                ["unfrozen"], "no strategy and no hyperparameters column"),
    "csv not JSON": (lambda p: space_file(p, "strategy,hyperparameters\nunfrozen,{lr\n",
                                          "board.csv"), ["unfrozen"],
                     "row 2: hyperparameters is not JSON"),
}


@pytest.mark.parametrize("case", sorted(WARM_ERRORS))
def test_a_bad_warm_start_is_a_usage_error(tmp_path, case):
    make, strategies, message = WARM_ERRORS[case]
    path = make(tmp_path)
    with pytest.raises(UsageError, match=message) as error:
        load_warm_start(path, strategies)
    assert str(error.value).startswith(f"--warm-start {path}") and "\n" not in str(error.value)


def test_warm_start_points_are_the_first_trials(tmp_path):
    configs = load_warm_start(leaderboard_csv(tmp_path), ["unfrozen"])["unfrozen"]
    space = get_space("unfrozen")
    points = study_points(configs, space)
    assert points == study_points(configs) == [to_study_params(configs[0])]
    study = optuna.create_study()
    for point in points:
        study.enqueue_trial(point)
    trial = study.ask()
    constants = space(trial)
    # the config's values, and the sampler's for what the config does not name
    assert to_trial_values({**trial.params, **constants}).items() >= configs[0].items()


def test_points_outside_an_overridden_space_leave_those_values_to_the_sampler(tmp_path, caplog):
    text = ("unfrozen:\n  batch_size: [32]\n  lr: {low: 0.1, high: 0.2}\n  augment: flip\n"
            "  lr_mult: 0.3\n")
    overrides = load_space_file(space_file(tmp_path, text), ["unfrozen"])["unfrozen"]
    space = get_space("unfrozen", overrides=overrides)
    config = {**HYPERPARAMETERS, "augment": "crop_flip"}  # batch 64 and lr 0.05: outside
    with caplog.at_level(logging.WARNING, logger="search.warm_start"):
        [point] = study_points([config], space)
    assert point == {"optimizer": "sgd", "weight_decay_sgd": 1e-4, "label_smoothing": 0.1}
    assert "outside the space, so sampled: batch_size=64, lr_sgd=0.05" in caplog.text
    assert "not searched here: augment='crop_flip'" in caplog.text
    assert "lr_mult" not in caplog.text  # fixed by the file to the config's own value
    study = optuna.create_study()
    study.enqueue_trial(point)
    trial = study.ask()
    assert space(trial) == {"augment": "flip", "lr_mult": 0.3}
    assert trial.params["batch_size"] == 32 and 0.1 <= trial.params["lr_sgd"] <= 0.2
    assert trial.params["weight_decay_sgd"] == 1e-4


def test_optuna_would_fail_on_a_choice_outside_the_space():
    """Why study_points fits points to the space: Optuna 5 refuses an enqueued categorical
    value outside the choices (and only warns for a number outside its range)."""
    study = optuna.create_study()
    study.enqueue_trial({"batch_size": 64, "unknown": 1})
    with pytest.raises(ValueError, match="not in"):
        study.ask().suggest_categorical("batch_size", [32])
