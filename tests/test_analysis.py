"""Experiment directory -> one row per trial -> leaderboard -> best/<strategy>.yaml."""

import json

import pytest
import yaml

from analysis import export_best_configs, leaderboard, load_results, write_leaderboard


def write_trial(root, strategy, trial_id, params, accs):
    trial = root / strategy / f"trial_{trial_id}"
    trial.mkdir(parents=True)
    (trial / "params.json").write_text(json.dumps(params))
    lines = [json.dumps({"trial_id": trial_id, "training_iteration": i + 1, "val_acc": a,
                         "val_loss": 1 - a, "images_per_s": 100.0}) for i, a in enumerate(accs)]
    (trial / "result.json").write_text("\n".join(lines) + "\n")


@pytest.fixture
def exp_dir(tmp_path):
    meta = {"backbone": "resnet18", "data": "demo", "max_epochs": 4, "seed": 0,
            "strategies": {"frozen": {"pretrained": "supervised"},
                           "scratch": {"pretrained": "none"}}}
    (tmp_path / "experiment.json").write_text(json.dumps(meta))
    write_trial(tmp_path, "frozen", "a", {"lr": 0.1, "head": "mlp"}, [0.3, 0.5, 0.45, 0.4])
    write_trial(tmp_path, "frozen", "b", {"lr": 0.01, "head": "linear"}, [0.2, 0.25])
    write_trial(tmp_path, "scratch", "c", {"lr": 0.05}, [0.6, 0.7, 0.8, 0.9])
    return tmp_path


def test_one_row_per_trial_with_best_accuracy_and_early_stopping(exp_dir):
    df = load_results(exp_dir).set_index("trial_id")
    assert len(df) == 3
    assert df.loc["a", "val_acc"] == 0.5 and df.loc["a", "best_epoch"] == 2
    assert df.loc["a", "epochs"] == 4 and not df.loc["a", "stopped_early"]
    assert df.loc["b", "epochs"] == 2 and df.loc["b", "stopped_early"]
    assert df.loc["c", "pretrained"] == "none" and df.loc["b", "head"] == "linear"


def test_leaderboard_and_best_configs(exp_dir):
    board = leaderboard(load_results(exp_dir))
    assert board["strategy"].tolist() == ["scratch", "frozen"]
    assert board["val_acc"].tolist() == [0.9, 0.5]
    assert board["trials"].tolist() == [1, 2]
    assert json.loads(board.loc[1, "hyperparameters"]) == {"lr": 0.1, "head": "mlp"}
    write_leaderboard(board, exp_dir)
    assert (exp_dir / "leaderboard.csv").read_text().startswith("strategy,val_acc")
    export_best_configs(board, exp_dir)
    frozen = yaml.safe_load((exp_dir / "best" / "frozen.yaml").read_text())
    assert frozen["hyperparameters"] == {"lr": 0.1, "head": "mlp"}
    assert frozen["pretrained"] == "supervised" and frozen["backbone"] == "resnet18"
    assert frozen["val_acc"] == 0.5 and frozen["best_epoch"] == 2


def test_not_an_experiment_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="experiment.json"):
        load_results(tmp_path)
