"""The search's options end to end: strategy lists, TPE after its startup trials, a shared
PostgreSQL study with two objectives, PBT with a space file and a warm start, packed GPU shares.
Slow: starts Ray and trains."""

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from search.samplers import startup_trials
from tests.helpers import TINY_MODEL, ok, run_search

pytestmark = pytest.mark.slow


def search(tmp_path: Path, name: str, *args: str) -> tuple[Path, str]:
    return tmp_path / "experiments" / name, ok(run_search(tmp_path, *args, name=name)).stdout


def result_rows(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]


def test_tpe_proposes_after_its_startup_trials_and_the_preset_comes_first(backbones_search):
    """On the shared search of one strategy (that a list of them gives one leaderboard is
    test_search_e2e's), over two backbones (tests/test_backbones.py)."""
    samples = 5
    exp_dir, stdout = backbones_search
    board = pd.read_csv(exp_dir / "leaderboard.csv")
    assert board["strategy"].tolist() == ["frozen"] and (board["trials"] == samples).all()
    assert "STRATEGY" not in stdout and "frozen trials (5/5" in stdout  # the progress table
    start = startup_trials(samples)
    study = optuna.load_study(study_name="bb/frozen",
                              storage=f"sqlite:///{exp_dir / 'optuna.db'}")
    # one trial at a time: each proposal sees every earlier result; the study's own
    # records (TPE's relative-parameter attributes) say which trials its model proposed;
    # the preset is the first, and counts among TPE's start-up trials
    by = [t.user_attrs["proposed_by"] for t in study.trials]
    assert by == ["preset"] + ["sampler"] * (start - 1) + ["model"] * (samples - start), by
    for trial in study.trials:  # lr under its optimizer's own name
        assert set(trial.params) & {"lr_sgd", "lr_adamw"} == {f"lr_{trial.params['optimizer']}"}
    tune_lrs = {json.loads((d / "params.json").read_text())["lr"]
                for d in (exp_dir / "frozen").glob("trial_*")}
    assert tune_lrs == {t.params[f"lr_{t.params['optimizer']}"] for t in study.trials}
    best = yaml.safe_load((exp_dir / "best" / "frozen.yaml").read_text())
    assert best["pretrained"] == "frozen=supervised"


def test_a_two_objective_study_on_postgres_and_its_pareto_front(tmp_path, postgres_url):
    exp_dir, stdout = search(tmp_path, "shared", "--strategy", "frozen", "--samples", "4",
                             "--max-epochs", "2", "--searcher", "random", "--objective",
                             "acc+time", "--optuna-storage", postgres_url)
    assert not (exp_dir / "optuna.db").exists()
    assert "optuna-dashboard postgresql" in stdout
    from search.study import check_storage_url

    study = optuna.load_study(study_name="shared/frozen", storage=check_storage_url(postgres_url))
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4 and all(len(t.values) == 2 for t in done)
    results = {d.name.removeprefix("trial_"): result_rows(d)
               for d in (exp_dir / "frozen").glob("trial_*")}
    for t in done:  # the study's values are Tune's: best val_acc, and time at the full budget
        rows = results[t.user_attrs["tune_trial_id"]]
        assert t.values[0] == pytest.approx(max(r["val_acc"] for r in rows))
        assert t.values[1] == pytest.approx(rows[-1]["time_total_s"] * 2 / len(rows))
    front = pd.read_csv(exp_dir / "pareto.csv")
    assert 1 <= len(front) <= 4 and front["trial_seconds"].is_monotonic_increasing
    assert front["val_acc"].is_monotonic_increasing  # slower only if more accurate
    assert "Pareto front" in (exp_dir / "leaderboard.md").read_text()
    assert "Pareto front" in stdout


def test_pbt_with_a_space_file_and_a_warm_start(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("unfrozen:\n  batch_size: 32\n  augment: [none, flip]\n"
                     "  optimizer: sgd\n")
    warm = {"lr": 0.05, "batch_size": 32, "augment": "flip", "weight_decay": 1e-4,
            "optimizer": "sgd", "lr_mult": 0.5, "label_smoothing": 0.0}
    warm_file = tmp_path / "unfrozen.yaml"
    warm_file.write_text(yaml.safe_dump({"transfer_search_config": 1, "strategy": "unfrozen",
                                         "data": "demo:8", "hyperparameters": warm}))
    exp_dir, stdout = search(tmp_path, "pbt", "--strategy", "unfrozen", "--scheduler", "pbt",
                             "--samples", "3", "--max-epochs", "3", "--grace-period", "1",
                             "--space", str(space), "--warm-start", str(warm_file))
    trials = sorted((exp_dir / "unfrozen").glob("trial_*"))
    assert len(trials) == 3 and "unfrozen: 3 trials, 0 errored" in stdout
    first = [result_rows(d)[0]["config"] for d in trials]
    assert {k: v for k, v in first[0].items() if k in warm} == warm  # the warm start first
    for config in first:  # the space file's constants and choices held for every trial
        assert config["batch_size"] == 32 and config["optimizer"] == "sgd"
        assert config["augment"] in ("none", "flip")
    assert list(exp_dir.glob("unfrozen/pbt_policy_*.txt")) or \
        (exp_dir / "unfrozen" / "pbt_global.txt").is_file()
    assert (exp_dir / "space.yaml").read_text() == space.read_text()


def test_four_quarter_gpu_trials_run_at_once(tmp_path, tiny_demo, ray_local):
    """Ray's fake resources: one GPU, which four CPU trials of a quarter each hold at once."""
    import threading

    ray = ray_local

    from search.pretraining import StageOutputs
    from search.spec import parse_spec
    from search.study import open_storage
    from search.tuning import make_tuner

    spec = parse_spec(["--strategy", "scratch", "--backbone", TINY_MODEL, "--samples", "4",
                       "--max-epochs", "2", "--gpus-per-trial", "0.25", "--cpus-per-trial",
                       "0.5", "--scheduler", "fifo", "--storage", str(tmp_path), "--name", "gpu"])
    free_gpu, done = [], threading.Event()

    def watch():  # what is left of the GPU while the trials hold their shares
        while not done.is_set():
            free = ray.available_resources()
            free_gpu.append((free.get("CPU", 0.0), free.get("GPU", 0.0)))
            done.wait(0.05)

    watcher = threading.Thread(target=watch)
    try:
        stages = StageOutputs({"scratch": None}, {"scratch": None}, {"scratch": "none"}, [])
        spec.exp_dir.mkdir(parents=True)
        tuner = make_tuner(spec, "scratch", ray.put(tiny_demo.for_search()), stages,
                           open_storage(None, spec.exp_dir))
        watcher.start()
        grid = tuner.fit()
    finally:
        done.set()
        watcher.join()
    assert grid.num_errors == 0 and len(grid) == 4
    # at one moment every CPU and the whole GPU were held, which only four trials of half a CPU
    # and a quarter GPU each can do: all four were placed side by side, none queued
    assert (0.0, 0.0) in free_gpu, sorted(set(free_gpu))
