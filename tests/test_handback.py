"""What a finished search hands back: the kept checkpoint, the final evaluation, configs that
rerun, a model that predicts, and failures that show. Slow: real tiny searches with Ray."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from analysis import load_results
from bench import stage_runs
from search.predict import find_model
from tests.helpers import TINY, TINY_MODEL, run_once, run_script, run_search
from trainables.config import TrialConfig
from trainables.data.dataset import Split
from trainables.data.load import load_dataset
from trainables.injected_faults import FAULT_ENV
from trainables.loop import evaluate
from trainables.models import build_model, normalizer
from trainables.trainable import load_checkpoint

pytestmark = pytest.mark.slow


class Untouchable:
    """Stands in for the test split's arrays: any read but its length fails the test."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getattr__(self, name):
        raise AssertionError(f"the search read the test split ({name})")

    def __getitem__(self, item):
        raise AssertionError("the search read the test split")

    def __reduce__(self):
        raise AssertionError("the search sent the test split to a worker")


@pytest.fixture(scope="module")
def handback_search(tmp_path_factory):
    """A real 3-trial search, in this process so that its test split can be made unreadable:
    any read of it by the search fails the search. Run once, whichever worker asks first."""
    import ray

    import trainables.data.load as load
    from search.run import main

    real = load.load_dataset

    def guarded(*args, **kwargs):
        data = real(*args, **kwargs)
        test = Split(Untouchable(len(data.test)), Untouchable(len(data.test)))
        return type(data)(**{**data.__dict__, "test": test})

    def search(tmp: Path) -> None:
        ray.shutdown()  # main starts its own Ray: stop ray_local's (the no_ray fixture's way)
        load.load_dataset = guarded
        try:
            code = main([*TINY, "--max-epochs", "3", "--strategy", "unfrozen", "--samples", "3",
                         "--storage", str(tmp / "exps"), "--name", "search",
                         "--cache-dir", str(tmp / "cache"), "--keep-checkpoints", "1"])
        finally:
            load.load_dataset = real
        assert code == 0

    tmp = run_once(tmp_path_factory, "handback", search)
    return tmp, tmp / "exps" / "search"


def test_the_kept_checkpoint_reproduces_the_leaderboard(handback_search):
    tmp, exp_dir = handback_search
    trials = load_results(exp_dir)
    board = pd.read_csv(exp_dir / "leaderboard.csv")
    best = trials.loc[trials["val_acc"].idxmax()]
    assert best["val_acc"] == pytest.approx(board["val_acc"].iloc[0])
    kept = sorted(exp_dir.glob("unfrozen/trial_*/checkpoint_*"))
    assert kept == [Path(best["trial_dir"]) / best["checkpoint"]]  # --keep-checkpoints 1

    state = load_checkpoint(kept[0])
    assert state["epoch"] == best["best_epoch"] == state["best_epoch"]
    hp = TrialConfig.from_dict(json.loads(best["hyperparameters"]))
    data = load_dataset("demo:8", cache_dir=tmp / "cache")
    model = build_model(TINY_MODEL, data.num_classes, hp.head)
    model.load_state_dict(state["model"])
    score = evaluate(model, torch.from_numpy(data.val.images), torch.from_numpy(data.val.labels),
                     normalize=normalizer(model), device=torch.device("cpu"))
    assert score.accuracy == pytest.approx(best["val_acc"], abs=1e-9)


def test_the_study_records_the_best_epoch_and_marks_stopped_trials(handback_search):
    import optuna

    _, exp_dir = handback_search
    meta = json.loads((exp_dir / "experiment.json").read_text())
    study = optuna.load_study(study_name=meta["strategies"]["unfrozen"]["study_name"],
                              storage=f"sqlite:///{exp_dir / 'optuna.db'}")
    trials = load_results(exp_dir).set_index("trial_id")
    for t in study.trials:
        row = trials.loc[t.user_attrs["tune_trial_id"]]
        assert t.value == pytest.approx(row["val_acc"])  # best epoch, not last epoch
        assert t.user_attrs["epochs"] == row["epochs"]
        assert t.user_attrs["stopped_early"] == row["stopped_early"]


def test_the_final_evaluation_reports_test_accuracy_over_seeds(all_strategies_search):
    exp_dir, _ = all_strategies_search
    results = pd.read_csv(exp_dir / "eval" / "results.csv")
    assert results["test_acc"].between(0, 1).all()
    board = pd.read_csv(exp_dir / "leaderboard.csv").set_index("strategy")
    for strategy, tested in results.groupby("strategy"):
        assert sorted(tested["seed"]) == [0, 1]
        row = board.loc[strategy]
        assert row["test_acc_mean"] == pytest.approx(tested["test_acc"].mean())
        assert row["test_acc_std"] == pytest.approx(tested["test_acc"].std(ddof=1))
        assert row["test_ci_low"] <= row["test_acc_mean"] <= row["test_ci_high"]
        # the experiment's own seed retrains the searched model: the same val_acc
        own = tested.set_index("seed").loc[0]
        assert own["val_acc"] == pytest.approx(row["val_acc"]), strategy
        report = pd.read_csv(exp_dir / "eval" / f"classification_report_{strategy}.csv",
                             index_col=0)
        assert {"precision", "recall", "f1-score"} <= set(report.columns)
        for png in ("confusion.png", "tsne.png"):
            assert Image.open(exp_dir / "eval" / strategy / png).size[0] > 300
    # the kept model carries its strategy's spread, for serve's /metadata
    kept = json.loads((find_model(exp_dir) / "model.json").read_text())
    over, row = kept["test_acc_over_seeds"], board.loc[kept["strategy"]]
    assert (over["mean"], over["low"], over["high"], over["seeds"]) == pytest.approx(
        (row["test_acc_mean"], row["test_ci_low"], row["test_ci_high"], 2))


def test_predict_matches_the_evaluation_and_survives_a_corrupt_file(all_strategies_search,
                                                                     tmp_path):
    exp_dir, _ = all_strategies_search
    (winner,) = [p.name for p in (exp_dir / "eval" / "model").iterdir()]
    data = load_dataset("demo:8", cache_dir=exp_dir.parents[1] / "cache")
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"test_{i}.png")
        Image.fromarray(data.test.images[i].transpose(1, 2, 0)).save(paths[-1])
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not a jpeg")
    result = run_script("predict.py", str(exp_dir / "eval" / "model" / winner), str(paths[0]),
                        str(corrupt), *map(str, paths[1:]))
    assert result.returncode == 1  # one image failed; the others were predicted
    assert "corrupt.jpg\terror:" in result.stderr
    predicted = [line.split("\t")[1] for line in result.stdout.splitlines()]
    expected = pd.read_csv(exp_dir / "eval" / winner / "predictions.csv")["predicted"]
    assert predicted == expected[:6].tolist()


def test_a_best_config_reruns_with_the_same_hyperparameters(handback_search):
    tmp, exp_dir = handback_search
    config = exp_dir / "best" / "unfrozen.yaml"
    result = run_script("run.py", "--config", str(config), "--storage", str(tmp / "exps"),
                        "--name", "rerun", "--cache-dir", str(tmp / "cache"), "--no-dashboard")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    exported = yaml.safe_load(config.read_text())
    rerun = load_results(tmp / "exps" / "rerun")
    assert len(rerun) == 1
    assert json.loads(rerun["hyperparameters"].iloc[0]) == exported["hyperparameters"]
    assert rerun["val_acc"].iloc[0] == pytest.approx(exported["val_acc"])
    assert not (tmp / "exps" / "rerun" / "optuna.db").exists()  # no search, no study
    # the search's cache already holds the supervised stage: the rerun trains none
    assert stage_runs.count(tmp / "exps" / "rerun") == {"ran": {}, "cached": {"supervised": 1},
                                                         "trials": 1}


def test_a_strategy_whose_only_trial_raises_is_shown_and_exits_1(tmp_path):
    result = run_search(tmp_path, "--max-epochs", "3", "--strategy", "scratch", "--samples",
                        "1", "--max-failures", "1", name="broken", env={FAULT_ENV: "scratch:1"})
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    first = "scratch: 1 trials, 1 errored; first: trainables.injected_faults.InjectedFault"
    assert first in result.stdout
    assert "no successful trial for scratch" in result.stderr
    log = result.stdout.split("(log: ")[1].split(")")[0]
    assert "InjectedFault" in Path(log).read_text()  # the log the message points to exists
    board = pd.read_csv(tmp_path / "experiments" / "broken" / "leaderboard.csv")
    assert board[["strategy", "trials", "errored"]].values.tolist() == [["scratch", 1, 1]]
    assert np.isnan(board["val_acc"].iloc[0])
    assert not (tmp_path / "experiments" / "broken" / "best" / "scratch.yaml").exists()
