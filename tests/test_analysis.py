"""Experiment directory -> one row per trial -> leaderboard -> best/<strategy>.yaml.

The fixture is a hand-built experiment in Ray Tune's file layout, so every number the
leaderboard shows can be checked by hand.
"""

import json
import math

import pytest
import yaml

from analysis import (
    export_best_configs,
    leaderboard,
    load_curves,
    load_eval,
    load_results,
    write_leaderboard,
)
from analysis.stats import gap_ci, mean_ci
from tests.helpers import write_trial

META = {"backbone": "resnet18", "data": "demo", "max_epochs": 4, "seed": 0, "image_size": 32,
        "split": [0.7, 0.15, 0.15], "pretrain_epochs": 10, "weights": None,
        "strategies": {"frozen": {"pretrained": "supervised"}, "scratch": {"pretrained": "none"},
                       "unfrozen": {"pretrained": "supervised"}}}


@pytest.fixture
def exp_dir(tmp_path):
    (tmp_path / "experiment.json").write_text(json.dumps(META))
    # frozen: a full trial whose best epoch ties (0.5 at epochs 2 and 4: the later one counts),
    # one stopped by ASHA after 2 epochs, and one that errored after a good first epoch
    write_trial(tmp_path, "frozen", "a", {"lr": 0.1, "head": "mlp"}, [0.3, 0.5, 0.45, 0.5])
    write_trial(tmp_path, "frozen", "b", {"lr": 0.01, "head": "linear"}, [0.2, 0.25])
    write_trial(tmp_path, "frozen", "e", {"lr": 1.0, "head": "linear"}, [0.9])
    write_trial(tmp_path, "scratch", "c", {"lr": 0.05}, [0.6, 0.7, 0.8, 0.9])
    write_trial(tmp_path, "unfrozen", "d", {"lr": 0.05}, [])  # raised before its first report
    statuses = {"frozen": [{"trial_id": "a", "errored": False}, {"trial_id": "b", "errored": False},
                           {"trial_id": "e", "errored": True, "error": "RuntimeError: boom"}],
                "scratch": [{"trial_id": "c", "errored": False}],
                "unfrozen": [{"trial_id": "d", "errored": True, "error": "ValueError: x"}]}
    (tmp_path / "trials.json").write_text(json.dumps(statuses))
    return tmp_path


def test_one_row_per_trial_with_its_best_epoch_and_how_it_ended(exp_dir):
    df = load_results(exp_dir).set_index("trial_id")
    assert len(df) == 5
    assert df.loc["a", "val_acc"] == 0.5 and df.loc["a", "best_epoch"] == 4  # tie: the later
    assert df.loc["a", "checkpoint"] == "checkpoint_000003"
    assert df.loc["a", "epochs"] == 4 and not df.loc["a", "stopped_early"]
    assert df.loc["b", "epochs"] == 2 and df.loc["b", "stopped_early"]
    assert df.loc["e", "errored"] and not df.loc["e", "stopped_early"]
    assert df.loc["e", "error"] == "RuntimeError: boom"
    assert df.loc["c", "pretrained"] == "none" and df.loc["b", "head"] == "linear"
    assert df.loc["c", "trial_hours"] == pytest.approx(4 * 36 / 3600)
    assert math.isnan(df.loc["d", "val_acc"]) and df.loc["d", "epochs"] == 0


def test_leaderboard_counts_topk_errored_and_stopped_trials(exp_dir):
    board = leaderboard(load_results(exp_dir), top_k=2).set_index("strategy")
    assert board.index.tolist() == ["scratch", "frozen", "unfrozen"]  # all-failed strategy last
    frozen = board.loc["frozen"]
    assert frozen["val_acc"] == 0.5  # the errored trial's 0.9 never counts
    assert frozen["top2_mean"] == pytest.approx(0.375)
    assert frozen["top2_std"] == pytest.approx(math.sqrt(2 * 0.125**2))
    assert (frozen["trials"], frozen["errored"], frozen["stopped_early"]) == (3, 1, 1)
    assert frozen["trial_hours"] == pytest.approx((4 + 2 + 1) * 36 / 3600)
    assert json.loads(frozen["hyperparameters"]) == {"lr": 0.1, "head": "mlp"}
    assert math.isnan(board.loc["unfrozen", "val_acc"]) and board.loc["unfrozen", "errored"] == 1


def test_leaderboard_files_and_best_configs(exp_dir):
    board = leaderboard(load_results(exp_dir))
    write_leaderboard(board, exp_dir)
    assert (exp_dir / "leaderboard.csv").read_text().startswith("strategy,val_acc")
    assert "| scratch" in (exp_dir / "leaderboard.md").read_text()
    written = export_best_configs(board, exp_dir)
    assert sorted(p.stem for p in written) == ["frozen", "scratch"]  # none for unfrozen
    frozen = yaml.safe_load((exp_dir / "best" / "frozen.yaml").read_text())
    assert frozen["hyperparameters"] == {"lr": 0.1, "head": "mlp"}
    assert frozen["pretrained"] == "frozen=supervised" and frozen["backbone"] == "resnet18"
    assert frozen["val_acc"] == 0.5 and frozen["best_epoch"] == 4
    assert (frozen["data"], frozen["image_size"], frozen["split"]) == ("demo", 32, "0.7,0.15,0.15")
    assert frozen["max_epochs"] == 4 and frozen["seed"] == 0


def test_curves_are_one_row_per_epoch(exp_dir):
    curves = load_curves(exp_dir)
    assert len(curves) == 4 + 2 + 1 + 4
    a = curves[curves["trial_id"] == "a"]
    assert a["epoch"].tolist() == [1, 2, 3, 4] and a["val_acc"].tolist() == [0.3, 0.5, 0.45, 0.5]


def test_test_columns_come_from_the_final_evaluation(exp_dir):
    (exp_dir / "eval").mkdir()
    (exp_dir / "eval" / "results.csv").write_text(
        "strategy,seed,test_acc\nscratch,0,0.80\nscratch,1,0.84\nscratch,2,0.82\n"
        "frozen,0,0.5\n")
    board = leaderboard(load_results(exp_dir), evals=load_eval(exp_dir)).set_index("strategy")
    scratch = board.loc["scratch"]
    assert scratch["test_acc_mean"] == pytest.approx(0.82)
    assert scratch["test_acc_std"] == pytest.approx(0.02)
    half = 4.302653 * 0.02 / math.sqrt(3)  # t(0.975, 2) * std / sqrt(n)
    assert scratch["test_ci_low"] == pytest.approx(0.82 - half, rel=1e-4)
    assert scratch["test_ci_high"] == pytest.approx(0.82 + half, rel=1e-4)
    assert board.loc["frozen", "test_seeds"] == 1 and math.isnan(board.loc["frozen", "test_ci_low"])
    assert math.isnan(board.loc["unfrozen", "test_acc_mean"])


def test_interval_statistics():
    one = mean_ci([0.7])
    assert one.mean == 0.7 and math.isnan(one.std) and math.isnan(one.low)
    gap = gap_ci([0.8, 0.82, 0.84], [0.5, 0.6, 0.7])
    assert gap.mean == pytest.approx(0.22)
    assert gap.low < 0.22 < gap.high


def test_not_an_experiment_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="experiment.json"):
        load_results(tmp_path)
