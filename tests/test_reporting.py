"""Epoch reports on their own thread: the checkpoint is the state at the epoch's end whatever
the next epoch does, reports go one at a time in order, what a report raises (Tune stopping the
trial, a full disk) reaches the training thread within a step, a hung report has a bound, and
(slow) a trial ASHA stops frees its reused actor for the next trial at once."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import torch
from ray import tune
from torch import nn

from tests.helpers import TINY_MODEL, marked_json
from trainables.config import RunSettings
from trainables.data.demo import load_demo
from trainables.loop import run_epoch
from trainables.reporting import BackgroundReports, host_copy
from trainables.trainable import train_transfer


def test_the_reported_state_is_the_epochs_even_while_the_next_epoch_changes_the_weights():
    layer = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    layer(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    at_epoch_end = {k: v.clone() for k, v in layer.state_dict().items()}
    go, written = threading.Event(), []

    def slow_write(metrics: dict, state: dict) -> None:
        go.wait(5)  # the "next epoch" below changes the weights before this reads them
        written.append(state)

    reports = BackgroundReports(slow_write)
    reports.submit({"epoch": 1}, {"model": layer.state_dict(), "optimizer": optimizer.state_dict()})
    with torch.no_grad():
        layer.weight.add_(1.0)
    optimizer.step()  # momentum buffers change in place too
    go.set()
    reports.wait()
    (state,) = written
    for name, value in at_epoch_end.items():
        assert torch.equal(state["model"][name], value)
    assert not torch.equal(state["model"]["weight"], layer.weight)


def test_host_copy_copies_tensors_in_nested_dicts_and_lists_and_keeps_the_rest():
    t = torch.arange(3)
    state = {"a": [t, {"b": t}], "n": 4, "s": "x", "g": (t,)}
    copy = host_copy(state)
    t.add_(10)
    assert copy["a"][0].tolist() == [0, 1, 2] and copy["a"][1]["b"].tolist() == [0, 1, 2]
    assert copy["g"][0].tolist() == [0, 1, 2] and isinstance(copy["g"], tuple)
    assert (copy["n"], copy["s"]) == (4, "x")


def test_reports_run_one_at_a_time_in_epoch_order():
    running, seen, overlap = [0], [], []

    def write(metrics: dict, state: dict) -> None:
        running[0] += 1
        overlap.append(running[0])
        time.sleep(0.05)
        seen.append(metrics["epoch"])
        running[0] -= 1

    reports = BackgroundReports(write)
    for epoch in range(1, 6):
        reports.submit({"epoch": epoch}, {})
    reports.wait()
    assert seen == [1, 2, 3, 4, 5]
    assert max(overlap) == 1


def test_a_stop_from_tune_ends_the_epoch_within_a_step():
    """Tune's report raises SystemExit when it stops the trial; the epoch training meanwhile
    raises it from its next step, not at its end."""
    def stopped(metrics: dict, state: dict) -> None:
        raise SystemExit(0)

    reports = BackgroundReports(stopped)
    reports.submit({"epoch": 1}, {})
    reports._thread.join(5)
    layer = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    steps = []

    def batch_loss(idx: torch.Tensor):
        steps.append(len(idx))
        return layer(torch.ones(len(idx), 4)).sum(), 0

    with pytest.raises(SystemExit):
        run_epoch(optimizer, 100, batch_loss, batch_size=10, device=torch.device("cpu"),
                  generator=torch.Generator().manual_seed(0), between_steps=reports.poll)
    assert len(steps) == 1  # of 10
    reports.close()  # nothing left to raise
    reports.wait()


def test_a_failed_report_raises_on_the_training_thread():
    def full_disk(metrics: dict, state: dict) -> None:
        raise OSError(28, "No space left on device")

    reports = BackgroundReports(full_disk)
    reports.submit({"epoch": 3}, {})
    with pytest.raises(OSError, match="No space left"):
        reports.wait()


def test_a_report_that_never_returns_fails_the_trial_with_a_message():
    hang = threading.Event()
    reports = BackgroundReports(lambda metrics, state: hang.wait(10), timeout_s=0.2)
    reports.submit({"epoch": 2}, {})
    with pytest.raises(TimeoutError, match="report of epoch 2 did not return within 0.2 s"):
        reports.submit({"epoch": 3}, {})
    hang.set()


def reuse_search(storage: str) -> None:
    """Three trials one at a time on one CPU, two of them hopeless; prints each trial's epochs
    and the pid of the actor that ran it, as JSON."""
    demo = load_demo(train_per_class=400, image_size=32)  # epochs of ~5 s
    settings = RunSettings(strategy="scratch", backbone=TINY_MODEL, max_epochs=2, seed=0)
    trainable = tune.with_parameters(train_transfer, settings=settings,
                                     data=demo.for_search(), weights=None)
    param_space = {"lr": tune.grid_search([0.05, 1e-7, 1e-7]), "batch_size": 32,
                   "augment": "none", "weight_decay": 1e-4}
    ray.init(num_cpus=1, include_dashboard=False)
    scheduler = tune.schedulers.ASHAScheduler(time_attr="training_iteration", max_t=2,
                                              grace_period=1, reduction_factor=2)
    grid = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(metric="val_acc", mode="max", scheduler=scheduler,
                                    reuse_actors=True, max_concurrent_trials=1),
        run_config=tune.RunConfig(name="stop", storage_path=storage, verbose=0),
    ).fit()
    print("TRIALS", json.dumps([{"error": None if r.error is None else str(r.error),
                       "epochs": r.metrics["training_iteration"], "pid": r.metrics["pid"]}
                      for r in grid]))
    ray.shutdown()


@pytest.mark.slow
def test_a_trial_asha_stops_mid_epoch_frees_its_reused_actor_for_the_next(tmp_path):
    """A stopped trial whose thread trained on to its epoch's end (~5 s) would keep the actor
    past the 2 s asked here (Tune's default; the trainable waits longer, for a slow step), and
    Tune would give up on reusing it: with one CPU, the search then hangs."""
    env = {**os.environ, "TUNE_FUNCTION_THREAD_TIMEOUT_S": "2"}  # the actors inherit it
    code = f"from tests.test_reporting import reuse_search; reuse_search({str(tmp_path)!r})"
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=300, cwd=Path(__file__).parents[1])
    except subprocess.TimeoutExpired:
        pytest.fail("the search hung: Tune could not reuse the stopped trial's actor")
    assert done.returncode == 0, done.stderr[-3000:]
    trials = marked_json(done.stdout, "TRIALS")
    assert [t["error"] for t in trials] == [None] * 3
    assert sorted(t["epochs"] for t in trials) == [1, 1, 2]  # ASHA stopped the hopeless two
    assert len({t["pid"] for t in trials}) == 1  # one actor ran all three
