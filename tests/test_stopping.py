"""A stopped trial ends cleanly, and a killed driver leaves no Ray process behind.

- Tune stops trials in the middle of long steps, on actors it does not reuse: every stopped
  trial's thread is joined before its actor exits, so no worker aborts with a crash dump.
- A driver killed with SIGKILL mid-search: every process of its local Ray instance (the
  raylet's agents included, which Ray 2.60 leaves behind) is gone within a minute.
- Quick: the stop mixin joins the trial's thread however far it got, and a reset lets the
  next trial run; the watcher reads /proc and spares what is not its driver's.

The first two are slow: they start Ray and train.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import psutil
import pytest
import ray
from ray import tune

from trainables import stopping
from trainables.config import RunSettings
from trainables.data.demo import load_demo
from trainables.trainable import train_transfer

RUN = Path(__file__).resolve().parents[1] / "search" / "run.py"
OUTLIVE_S = 60  # how long a run's process may outlive its killed driver


@pytest.mark.slow
def test_trials_stopped_mid_step_on_actors_not_reused_end_without_a_crash_dump(tmp_path,
                                                                               ray_local):
    """resnet18 at 64 px on one CPU thread: a step takes ~0.1 s of native torch work, so a
    stopped trial's thread is inside one when Tune stops it. Before the stop joined the
    thread, the actor exited under it (`Fatal Python error: Aborted`, in 6 of 8 trials when this
    test ran 8 under ASHA). Every second trial is stopped after its first epoch, through the
    same decision a scheduler's stop takes: ASHA stops only a trial that trails the others,
    and at one epoch on 80 images the trials can all tie at chance, so none stops."""
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    before = crash_dumps(logs)  # this Ray's workers may have run earlier tests
    data = load_demo(train_per_class=8, image_size=64)
    settings = RunSettings("scratch", "resnet18", max_epochs=3, seed=0, cpus_per_trial=1)
    trainable = tune.with_resources(
        tune.with_parameters(train_transfer, settings=settings, data=ray.put(data),
                             weights=None), {"cpu": 1})
    space = {"lr": tune.loguniform(1e-3, 0.1), "batch_size": 16, "augment": "flip",
             "weight_decay": 1e-4}
    grid = tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(
            metric="val_acc", mode="max", num_samples=4, reuse_actors=False),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0,
                                  stop=every_second_trial)).fit()
    stopped = [r for r in grid if r.metrics["training_iteration"] == 1]
    assert grid.num_errors == 0 and len(stopped) == 2, "trials 1 and 3 stop after epoch 1"
    crashed = crash_dumps(logs) - before
    assert not crashed, f"workers aborted: {sorted(crashed)}"


def every_second_trial(trial_id: str, result: dict) -> bool:
    """Tune's stop condition: trials 1 and 3 (ids end _00001, _00003) at their first report."""
    return int(trial_id.rsplit("_", 1)[1]) % 2 == 1


def crash_dumps(logs: Path) -> set[str]:
    """The worker logs holding a fatal error's dump."""
    return {f.name for f in logs.glob("worker-*")
            if "Fatal Python error" in f.read_text(errors="replace")}


# runs beside other tests: it watches its own driver's processes alone, and gives their end a
# minute, which a busy machine does not approach
@pytest.mark.slow
def test_a_driver_killed_mid_search_leaves_no_ray_process_behind(tmp_path):
    args = ["--data", "demo:20", "--backbone", "test_resnet", "--strategy", "scratch",
            "--samples", "2", "--max-epochs", "1000", "--scheduler", "fifo",
            "--cpus-per-trial", "1", "--storage", str(tmp_path / "runs"), "--name", "k",
            "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    with open(tmp_path / "out", "w") as out:
        driver = subprocess.Popen([sys.executable, str(RUN), *args], stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not any("ImplicitFunc" in name for name in names(driver.pid)):
            assert driver.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "out").read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(2)  # the raylet has started its agents and workers
        family = psutil.Process(driver.pid).children(recursive=True)
        agents = {p.name() for p in family} & {"ray::DashboardAgent", "ray::RuntimeEnvAgent"}
        assert agents, f"expected the raylet's agents among {[p.name() for p in family]}"
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    killed = time.monotonic()
    while (left := [p for p in family if p.is_running() and p.status() != "zombie"]) and \
            time.monotonic() - killed < OUTLIVE_S:
        time.sleep(0.5)
    assert not left, f"outlived the driver by {OUTLIVE_S} s: {[p.name() for p in left]}"


def names(pid: int) -> list[str]:
    try:
        return [p.name() for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class FakeTrainable:
    """Ray's FunctionTrainable as the mixin sees it: its session's thread, cleanup, reset."""

    def __init__(self, thread):
        self.session = types.SimpleNamespace(training_thread=thread)

    def cleanup(self):
        pass

    def reset_config(self, new_config):  # Ray's waits for the thread, then reuses the actor
        self.session.training_thread.join(2)
        return not self.session.training_thread.is_alive()


class Trial(stopping.JoinedOnStop, FakeTrainable):
    pass


def trial_thread(steps: list, start_delay_s: float = 0.0) -> threading.Thread:
    """A trial's thread: a slow start (its data from the object store), then steps of 50 ms,
    each checking for a stop, as fit's between_steps does."""

    def run():
        time.sleep(start_delay_s)
        try:
            stopping.check()
            for step in range(100):
                time.sleep(0.05)
                steps.append(step)
                stopping.check()
        except SystemExit:
            pass

    return threading.Thread(target=run, daemon=True)


@pytest.mark.parametrize("start_delay_s", [0.0, 0.5])
def test_a_stop_joins_the_trials_thread_within_a_step_however_far_it_got(monkeypatch,
                                                                        start_delay_s):
    """Stopped mid-step, or before its function has begun: either way cleanup returns only
    once the thread has ended, and the thread ends at its next check."""
    steps = []
    thread = trial_thread(steps, start_delay_s)
    trial = Trial(thread)
    monkeypatch.setattr(stopping, "get_session", lambda: trial.session)
    monkeypatch.setattr(stopping, "_stop", threading.Event())
    thread.start()
    time.sleep(0.12)
    trial.cleanup()
    assert not thread.is_alive()
    assert len(steps) <= (1 if start_delay_s else 4)  # one step after the stop at most


def test_a_reset_stops_the_old_trial_and_lets_the_next_run(monkeypatch):
    monkeypatch.setattr(stopping, "_stop", threading.Event())
    old_steps, new_steps = [], []
    old = trial_thread(old_steps)
    trial = Trial(old)
    old.start()
    time.sleep(0.12)
    assert trial.reset_config({}) is True
    assert not old.is_alive() and len(old_steps) <= 4
    new = trial_thread(new_steps)
    new.start()
    time.sleep(0.3)
    assert new.is_alive() and len(new_steps) >= 3  # the stop was for the old trial only
    stopping._stop.set()
    new.join(1)


def test_the_watcher_reads_proc_and_tells_a_reused_pid_from_the_process_it_noted():
    from search import reaper

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        table = reaper.process_table()
        me = os.getpid()
        assert table[child.pid][0] == me
        noted = reaper.descendants({me}, table)
        start = table[child.pid][1]
        assert (child.pid, start) in noted and reaper.alive((child.pid, start))
        assert not reaper.alive((child.pid, start + 1))  # the same pid, another process
        assert reaper.end({(child.pid, start)}, grace_s=0.0, term_wait_s=5.0) == [child.pid]
        assert child.wait(5) == -signal.SIGTERM
    finally:
        child.kill()
