"""Backbones as a searched dimension (--backbone A,B), and each strategy's preset as the first
trial of its search."""

import json

import optuna
import pandas as pd
import pytest
import yaml

from search.spec import parse_spec
from search.tuning import first_configs, strategy_space
from spaces import to_study_params
from spaces.registry import get_preset
from tests.helpers import BACKBONES, TINY_MODEL


@pytest.mark.slow  # the shared search of 5 trials over two backbones, a supervised stage each
def test_a_search_over_backbones_pretrains_each_once_and_names_the_winners(backbones_search):
    exp_dir, _ = backbones_search
    meta = json.loads((exp_dir / "experiment.json").read_text())
    stages = sorted(r["key"].rsplit("-", 1)[0] for r in meta["stages"])
    assert stages == [f"supervised-{b}" for b in sorted(BACKBONES)]  # once per backbone
    params = [json.loads((d / "params.json").read_text())
              for d in sorted((exp_dir / "frozen").glob("trial_*"))]
    assert {p["backbone"] for p in params} <= set(BACKBONES) and len(params) == 5
    board = pd.read_csv(exp_dir / "leaderboard.csv").set_index("strategy")
    winner = json.loads(board.loc["frozen", "hyperparameters"])["backbone"]
    assert board.loc["frozen", "backbone"] == winner
    best = yaml.safe_load((exp_dir / "best" / "frozen.yaml").read_text())
    assert best["backbone"] == best["hyperparameters"]["backbone"] == winner
    # the preset, on the first backbone listed, was the study's first trial
    study = optuna.load_study(study_name="bb/frozen", storage=f"sqlite:///{exp_dir / 'optuna.db'}")
    first = study.trials[0]
    assert first.user_attrs["proposed_by"] == "preset"
    context = strategy_space(parse_spec(["--strategy", "frozen", "--backbone",
                                         ",".join(BACKBONES), "--data", "demo:8"]),
                             "frozen").context
    assert first.params == to_study_params(get_preset("frozen", context))
    assert first.params["backbone"] == BACKBONES[0]


def test_a_space_file_narrows_the_backbones(tmp_path):
    from spaces import SpaceContext, get_space
    from spaces.overrides import load_space_file

    path = tmp_path / "s.yaml"
    path.write_text(f"all:\n  backbone: [{TINY_MODEL}]\n")
    overrides = load_space_file(str(path), ["scratch"])["scratch"]
    space = get_space("scratch", SpaceContext(backbones=BACKBONES), overrides)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        space(trial)
        assert trial.params["backbone"] == TINY_MODEL
        study.tell(trial, 0.0)


def test_no_preset_leaves_the_first_trials_to_the_sampler(tmp_path):
    argv = ["--strategy", "scratch", "--backbone", TINY_MODEL, "--storage", str(tmp_path)]
    with_preset, without = parse_spec(argv), parse_spec([*argv, "--no-preset"])
    space = strategy_space(with_preset, "scratch")
    assert first_configs(with_preset, "scratch", space) == [get_preset("scratch",
                                                                       space.context)]
    assert first_configs(without, "scratch", space) == []
