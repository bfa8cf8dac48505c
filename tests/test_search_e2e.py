"""End to end through search/run.py: Ray, Optuna, ASHA, stages, results. Slow: starts Ray."""

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
import yaml

from tests.helpers import TINY_MODEL, ok, run_search
from trainables.strategies import STRATEGIES

pytestmark = pytest.mark.slow


def search(tmp_path: Path, name: str, *args: str) -> Path:
    result = ok(run_search(tmp_path, "--max-epochs", "1", *args, name=name))
    exp_dir = tmp_path / "experiments" / name
    assert f"experiment: {exp_dir}" in result.stdout
    assert "leaderboard" in result.stdout
    return exp_dir


def test_unfrozen_search_writes_leaderboard_best_config_study_and_tensorboard(
        all_strategies_search):
    exp_dir, _ = all_strategies_search
    board = pd.read_csv(exp_dir / "leaderboard.csv").set_index("strategy")
    assert 0 <= board.loc["unfrozen", "val_acc"] <= 1
    assert board.loc["unfrozen", "trials"] == 2

    best = yaml.safe_load((exp_dir / "best" / "unfrozen.yaml").read_text())
    assert best["strategy"] == "unfrozen" and best["pretrained"] == "unfrozen=supervised"
    sampled = {"optimizer", "lr", "batch_size", "augment", "weight_decay", "label_smoothing",
               "lr_mult", "mix", "ema_decay", "warmup"}
    on_branches = {"magnitude", "mix_alpha"}  # with randaugment, with mixup or cutmix
    assert sampled <= set(best["hyperparameters"]) <= sampled | on_branches
    assert best["val_acc"] == pytest.approx(board.loc["unfrozen", "val_acc"])

    meta = json.loads((exp_dir / "experiment.json").read_text())
    study = optuna.load_study(study_name=meta["strategies"]["unfrozen"]["study_name"],
                              storage=f"sqlite:///{exp_dir / 'optuna.db'}")
    assert len(study.trials) == 2
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert max(t.value for t in study.trials) == pytest.approx(best["val_acc"])

    events = list((exp_dir / "unfrozen").glob("*/events.out.tfevents.*"))
    assert len(events) == 2 and all(e.stat().st_size > 0 for e in events)
    assert "test" not in meta["dataset"] or meta["dataset"]["test"] > 0


def test_colorization_stage_runs_once_for_many_trials(all_strategies_search):
    """That a second search takes a stage from the cache is test_handback's rerun of a best
    config."""
    exp_dir, _ = all_strategies_search
    cache = exp_dir.parents[1] / "cache"
    stages = json.loads((exp_dir / "experiment.json").read_text())["stages"]
    (colorization,) = [s for s in stages if s["stage"] == "colorization"]
    assert colorization["cached"] is False
    assert len(list((cache / "stages").glob("colorization-*"))) == 1
    trials = list((exp_dir / "colorization").glob("trial_*/result.json"))
    assert len(trials) == 2  # two trials, one stage
    stage_out = exp_dir / "stages" / colorization["key"]
    assert (stage_out / "samples.png").stat().st_size > 0  # grey / predicted / true colours
    assert list(stage_out.glob("events.out.tfevents.*"))  # the pretext loss curve


def test_frozen_search_from_a_local_weights_file(tmp_path):
    import timm

    weights = tmp_path / "imagenet-like.pth"
    torch.save(timm.create_model(TINY_MODEL, num_classes=1000).state_dict(), weights)
    exp_dir = search(tmp_path, "file", "--strategy", "frozen", "--samples", "1",
                     "--weights", str(weights))
    best = yaml.safe_load((exp_dir / "best" / "frozen.yaml").read_text())
    assert best["weights"] == str(weights) and best["pretrained"] is None
    board = pd.read_csv(exp_dir / "leaderboard.csv")
    assert board["pretrained"].iloc[0] == f"file:{weights}"
    assert best["hyperparameters"]["head"] in ("linear", "mlp")


def test_all_registered_strategies_search_with_the_same_budget(all_strategies_search):
    exp_dir, stdout = all_strategies_search
    board = pd.read_csv(exp_dir / "leaderboard.csv")
    assert set(board["strategy"]) == set(STRATEGIES)
    assert (board["trials"] == 2).all()
    for strategy in STRATEGIES:
        assert f"{strategy}: 2 trials, 0 errored" in stdout
    # each strategy's default stage, with the demo's offline supervised stand-in for imagenet
    offline = {"imagenet": "supervised"}
    assert dict(zip(board["strategy"], board["pretrained"], strict=True)) == {
        name: offline.get(s.pretrained, s.pretrained) for name, s in STRATEGIES.items()}
    stages = json.loads((exp_dir / "experiment.json").read_text())["stages"]
    trained = {offline.get(s.pretrained, s.pretrained) for s in STRATEGIES.values()} - {"none"}
    assert sorted(s["stage"] for s in stages) == sorted(trained)
    for strategy in board["strategy"]:
        assert (exp_dir / "best" / f"{strategy}.yaml").is_file()
    # --final-eval 2: every strategy tested over 2 seeds, the winner's model kept
    results = pd.read_csv(exp_dir / "eval" / "results.csv")
    assert results.groupby("strategy")["seed"].apply(sorted).tolist() == [[0, 1]] * 6
    assert (board["test_seeds"] == 2).all() and board["test_acc_mean"].between(0, 1).all()
    assert [p.name for p in (exp_dir / "eval" / "model").iterdir()] == [board["strategy"][0]]
