"""The progress table printed while a Tuner runs, the verbosity levels, the dashboard lines, and
the TensorBoard events Tune writes for every trial."""

import io
import json
import pickle
import time
from types import SimpleNamespace

import pytest
from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from search.progress import (
    ProgressTable,
    dashboard_lines,
    end_line,
    error_message,
    format_table,
    progress_callbacks,
    quiet_ray_output,
    trial_row,
    tune_verbosity,
)

MAX_EPOCHS = 4
CONFIG = {"optimizer": "sgd", "lr": 0.0032, "batch_size": 64, "augment": "flip"}


def fake_trial(config):
    """val_acc = base + 0.1 per epoch; kind 'boom' raises at epoch 2 (Ray 2.60 refuses a
    trainable defined in __main__, so it lives in this importable module)."""
    best, best_epoch = 0.0, 0
    for epoch in range(1, MAX_EPOCHS + 1):
        if config["kind"] == "boom" and epoch == 2:
            raise ValueError("boom at epoch 2\nsecond line")
        val_acc = config["base"] + 0.1 * epoch
        if val_acc >= best:
            best, best_epoch = val_acc, epoch
        time.sleep(0.05)
        tune.report({"epoch": epoch, "val_acc": val_acc, "best_val_acc": best,
                     "best_epoch": best_epoch})


class StopWeakAtEpoch2(FIFOScheduler):
    """Stops the 'weak' trial at epoch 2, as ASHA would stop a bad one at its first rung."""

    def on_trial_result(self, tune_controller, trial, result):
        if trial.config["kind"] == "weak" and result["training_iteration"] >= 2:
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


def fake(trial_id, status, epochs=0, val_acc=None, best=None, **config):
    """A Trial-like object with what ProgressTable reads."""
    result = {} if not epochs else {"training_iteration": epochs, "val_acc": val_acc,
                                     "best_val_acc": best, "best_epoch": epochs}
    return SimpleNamespace(trial_id=trial_id, status=status, config={**CONFIG, **config},
                           last_result=result, num_failures=0, pickled_error_file=None,
                           error_file=None)


def test_table_rows_show_short_hyperparameters_epochs_and_stopped_early():
    trials = [fake("a_00000", "TERMINATED", 4, 0.81, 0.83),
              fake("a_00001", "TERMINATED", 2, 0.4, 0.5, lr_mult=0.3123),
              fake("a_00002", "RUNNING", 3, 0.7, 0.7),
              fake("a_00003", "PENDING")]
    lines = format_table([trial_row(t, "unfrozen", 4) for t in trials], 4).splitlines()
    assert lines[0].split() == ["trial", "strategy", "opt", "lr", "bs", "augment", "lr_mult",
                                "epoch", "val_acc", "best", "status"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert rows["a_00000"][3:] == ["3.2e-03", "64", "flip", "-", "4/4", "0.810", "0.830",
                                   "TERMINATED"]
    assert rows["a_00001"][6] == "0.31" and rows["a_00001"][-1] == "STOPPED"
    assert rows["a_00002"][-4:] == ["3/4", "0.700", "0.700", "RUNNING"]
    assert rows["a_00003"][-4:] == ["0/4", "-", "-", "PENDING"]
    assert max(len(line) for line in lines) < 100


def test_widest_row_stays_near_100_columns():
    trial = fake("7c569_00001", "TERMINATED", 6, 0.81, 0.83, optimizer="adamw", batch_size=128,
                 augment="trivialaugment", lr_mult=0.031, freeze_depth=2)
    table = format_table([trial_row(trial, "colorization", 6)], 6)
    assert max(len(line) for line in table.splitlines()) <= 113


def test_end_lines_tell_finished_from_stopped_early():
    assert end_line(fake("a_0", "TERMINATED", 4, 0.8, 0.812), 4) == (
        "trial a_0 finished: best val_acc 0.812 at epoch 4")
    assert end_line(fake("a_1", "TERMINATED", 2, 0.4, 0.5), 4) == (
        "trial a_1 stopped early by the scheduler at epoch 2 (best val_acc 0.500 at epoch 2)")


def test_error_message_falls_back_to_the_last_line_of_error_txt(tmp_path):
    (tmp_path / "error.txt").write_text("Failure # 1\nTraceback ...\nValueError: bad lr\n")
    trial = fake("a_0", "ERROR", 1, 0.1, 0.1)
    trial.error_file = str(tmp_path / "error.txt")
    assert error_message(trial) == "ValueError: bad lr"
    assert error_message(fake("a_1", "ERROR")).startswith("unknown error")


def test_table_is_throttled_and_not_repeated_when_nothing_changed():
    out = io.StringIO()
    table = ProgressTable("frozen", 4, every_s=3600, out=out)
    trials = [fake("a_0", "RUNNING", 1, 0.3, 0.3)]
    table.on_step_end(1, trials)
    trials[0].last_result["training_iteration"] = 2
    table.on_step_end(2, trials)  # within every_s: silent
    assert out.getvalue().count("a_0") == 1
    table.every_s = 0
    table.on_step_end(3, trials)  # epoch 2 is new
    table.on_step_end(4, trials)  # nothing new: silent
    assert out.getvalue().count("a_0") == 2


def test_quiet_prints_only_the_trial_end_lines():
    out = io.StringIO()
    (table,) = progress_callbacks("quiet", "frozen", 4)
    table._out = out
    trials = [fake("a_0", "TERMINATED", 4, 0.8, 0.8)]
    table.on_step_end(1, trials)
    table.on_trial_complete(1, trials, trials[0])
    table.on_experiment_end(trials)
    assert out.getvalue() == "trial a_0 finished: best val_acc 0.800 at epoch 4\n"


def test_verbosity_levels():
    assert [tune_verbosity(level) for level in ("quiet", "normal", "verbose")] == [0, 0, 2]
    assert progress_callbacks("verbose", "frozen", 4) == []
    assert isinstance(progress_callbacks("normal", "frozen", 4)[0], ProgressTable)
    with pytest.raises(ValueError, match="loud"):
        tune_verbosity("loud")


def test_callback_pickles_for_tuner_pkl_even_with_an_open_file(tmp_path):
    with open(tmp_path / "log.txt", "w") as out:  # plain pickle refuses open files
        copy = pickle.loads(pickle.dumps(ProgressTable("frozen", 4, out=out)))
    assert copy.max_epochs == 4 and copy._out is None


def test_dashboard_lines():
    lines = dashboard_lines("/x/exp", "127.0.0.1:8265", "optuna-dashboard sqlite:////x/o.db")
    text = "\n".join(lines)
    assert "http://127.0.0.1:8265" in text and "ray get-auth-token" in text
    assert "tensorboard --logdir /x/exp" in text
    assert "optuna-dashboard sqlite:////x/o.db" in text
    assert 'pip install "transfer-search[dashboards]"' in text
    assert "not running" in dashboard_lines("/x", None, "c")[0]


@pytest.mark.parametrize("address", [None, "10.0.0.1:6379"])
def test_no_dashboard_asks_a_local_ray_for_none_and_leaves_a_clusters_alone(monkeypatch,
                                                                            address):
    """--no-dashboard: a local instance starts without one; a cluster keeps its own, and Ray
    refuses include_dashboard from a driver that joins one."""
    import ray

    from search import reaper, resources

    asked = []
    monkeypatch.setattr(ray, "init", lambda **kwargs: asked.append(kwargs))
    monkeypatch.setattr(reaper, "start_reaper", lambda pids: None)
    monkeypatch.setattr(resources, "listen_on_loopback", lambda: None)
    resources.init_ray(address, "127.0.0.1", dashboard=False)
    resources.init_ray(address, "127.0.0.1")
    if address is None:
        assert asked == [{"address": "local", "include_dashboard": False},
                         {"address": "local", "dashboard_host": "127.0.0.1"}]
    else:
        assert asked == [{"address": address}] * 2


@pytest.mark.slow
def test_progress_of_a_real_tuner(tmp_path, monkeypatch, capsys, ray_local):
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")  # restored after the test
    quiet_ray_output("normal")
    out = io.StringIO()
    tuner = tune.Tuner(
        fake_trial,
        param_space={**CONFIG, "base": 0.5, "kind": tune.grid_search(["good", "weak", "boom"])},
        tune_config=tune.TuneConfig(metric="best_val_acc", mode="max",
                                    scheduler=StopWeakAtEpoch2()),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path), name="progress", verbose=tune_verbosity("normal"),
            callbacks=[ProgressTable("frozen", MAX_EPOCHS, every_s=0, out=out)],
            failure_config=tune.FailureConfig(max_failures=1)),
    )
    grid = tuner.fit()
    text = out.getvalue()
    ids = {r.config["kind"]: r.metrics["trial_id"] for r in grid}
    assert f"trial {ids['good']} finished: best val_acc 0.900 at epoch 4" in text
    assert f"trial {ids['weak']} stopped early by the scheduler at epoch 2" in text
    assert f"trial {ids['boom']} failed at epoch 1 (failure 1), restarting" in text
    assert f"trial {ids['boom']} errored: ValueError: boom at epoch 2" in text
    final = text[text.rindex("frozen trials"):].splitlines()
    rows = {line.split()[0]: line.split() for line in final if line.split()}
    assert rows[ids["good"]][-4:] == ["4/4", "0.900", "0.900", "TERMINATED"]
    assert rows[ids["weak"]][-4:] == ["2/4", "0.700", "0.700", "STOPPED"]
    assert rows[ids["boom"]][-1] == "ERROR" and rows[ids["boom"]][-3] == "0.600"
    assert "STOPPED: stopped early by the scheduler" in text
    ray_stdout = capsys.readouterr().out  # Ray's own boxes and status tables stay silent
    assert "Configuration for experiment" not in ray_stdout
    assert "Trial status" not in ray_stdout


@pytest.mark.slow
def test_a_run_without_the_dashboard_says_it_is_not_running(all_strategies_search):
    _, stdout = all_strategies_search  # its search ran with --no-dashboard (tests.helpers.TINY)
    assert "Ray dashboard:    not running for this Ray instance" in stdout.splitlines()


@pytest.mark.slow
def test_tensorboard_events_hold_val_acc_of_every_epoch_of_every_trial(all_strategies_search):
    from tensorboard.backend.event_processing.event_accumulator import (
        SCALARS,
        EventAccumulator,
    )

    exp_dir, _ = all_strategies_search
    strategies = json.loads((exp_dir / "experiment.json").read_text())["strategies"]
    checked = 0
    for strategy in strategies:
        trial_dirs = sorted((exp_dir / strategy).glob("trial_*"))
        assert trial_dirs, strategy
        for trial_dir in trial_dirs:
            rows = [json.loads(line) for line in
                    (trial_dir / "result.json").read_text().splitlines()]
            events = EventAccumulator(str(trial_dir), size_guidance={SCALARS: 0}).Reload()
            # TBXLoggerCallback: tag ray/tune/<metric>, step = training_iteration
            scalars = events.Scalars("ray/tune/val_acc")
            assert [s.step for s in scalars] == [r["training_iteration"] for r in rows]
            assert [s.value for s in scalars] == pytest.approx([r["val_acc"] for r in rows])
            checked += 1
    assert checked == 2 * len(strategies)


def test_a_runs_phases_add_up_and_a_new_run_starts_afresh(tmp_path, monkeypatch):
    import json

    from search import phases

    clock = iter([0.0, 1.0, 3.0, 4.0, 10.0, 20.0, 21.0, 25.0])
    monkeypatch.setattr(phases.time, "perf_counter", lambda: next(clock))
    run = phases.Phases()
    run.start("data")  # 0
    run.enter("trials")  # 1
    run.enter("finish")  # 3
    run.enter("trials")  # 4: entered again, adds up
    assert run.seconds() == {"data": 1.0, "trials": 2.0 + 6.0, "finish": 1.0}  # at 10
    run.write(tmp_path)  # seconds read at 20
    written = json.loads((tmp_path / phases.TIMINGS_FILE).read_text())
    assert written["seconds"] == {"data": 1.0, "trials": 18.0, "finish": 1.0}
    assert set(written["entered_at"]) == {"data", "trials", "finish"}
    run.start("data")  # 21: another run in this process
    assert run.seconds() == {"data": 4.0}  # at 25
