"""Ctrl-C, then killed drivers, mid-search: `--resume` finishes it with nothing lost or doubled.

Drives search/run.py as a user would, each run in its own session: SIGINT during the first
strategy's first trial (a clean stop that prints the resume command); that command, its driver
SIGKILLed mid-trial once the resumed trial has saved a newer epoch; resumed again and SIGKILLed
in the second strategy (the first one's outcomes already in trials.json) just after Tune asked
the study for a new trial; then resumed to the end.

Where a SIGKILL lands matters, because of a race in Ray Tune 2.60 itself: when a trial reports
epoch N, Tune deletes the trial's epoch N-1 checkpoint (num_to_keep=1 keeps the best and the
latest) and tells the searcher, and only at the end of that step saves and syncs the
experiment state that still names N-1 as the latest. A driver killed in those milliseconds
leaves a state whose trial cannot be restored ("Could not recover from checkpoint as it does
not exist on storage anymore"), and the trial ends as errored. So the kills below wait until
Tune's saved state (its experiment_state-*.json, read here only to time the kill) has caught
up with every epoch reported (result.json): then no checkpoint deletion is pending for an
epoch's time. Trials report as soon as an epoch ends (the checkpoint is written while the next
trains), so the epochs are made long enough (demo:40, ~0.3 s) that the 10 ms between that check
and the kill is a small part of one. Slow: four runs start Ray. What the searcher does with a
study a killed driver left is tested without Ray in tests/test_search_options.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from tests.helpers import TINY_MODEL

# drivers interrupted and killed at set moments: timing-sensitive, so they run alone
pytestmark = [pytest.mark.slow, pytest.mark.serial]
RUN = Path(__file__).resolve().parents[1] / "search" / "run.py"
STRATEGIES = ("scratch", "frozen")  # scratch needs no stage, frozen the supervised one
SAMPLES, MAX_EPOCHS, GRACE = 5, 3, 2  # ASHA may stop a trial at epoch GRACE
SEARCH = ["--data", "demo:40", "--backbone", TINY_MODEL, "--strategy", ",".join(STRATEGIES),
          "--samples", str(SAMPLES), "--max-epochs", str(MAX_EPOCHS), "--pretrain-epochs", "1",
          "--max-concurrent", "1", "--cpus-per-trial", "1", "--grace-period", str(GRACE)]
NAME = "r"


class Driver:
    """One run.py process, leader of its own session (so a signal reaches it alone, and Ray's
    processes can be found by session), its output in files, which never fill up like a pipe."""

    def __init__(self, root: Path, tag: str, args: list[str]):
        self.out, self.err = root / f"{tag}.out", root / f"{tag}.err"
        self.tag = tag
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, str(RUN), *args], cwd=root,
                                         stdout=out, stderr=err, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def output(self) -> str:
        return (f"--- run {self.tag}, stdout:\n{self.stdout()[-4000:]}\n"
                f"--- stderr:\n{self.stderr()[-4000:]}")

    def wait_until(self, condition, what: str, timeout: float, every: float = 0.05) -> None:
        """Poll `condition` while the driver runs; fail if it exits first or time runs out."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"run.py exited with {self.proc.returncode} before {what}\n"
                            f"{self.output()}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"no {what} within {timeout:.0f} s\n{self.output()}")
            time.sleep(every)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"run.py still running after {timeout:.0f} s\n{self.output()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(30)


# Ray's processes, found by the session of the driver that started them ---------------------


def session_processes(sid: int) -> list[tuple[int, str, str]]:
    """(pid, state, name) of each live process in session `sid`; zombies count as dead."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:  # it ended while we looked
            continue
        state, _ppid, _pgrp, session = stat[stat.rindex(")") + 2:].split()[:4]
        if int(session) == sid and state != "Z":
            found.append((int(entry.name), state, Path(cmdline).name or stat.split()[1]))
    return found


def wait_for_ray_to_die(driver: Driver, timeout: float = 30) -> None:
    """Ray's core processes (raylet, gcs_server, the dashboard) and its workers end with their
    driver, within seconds: a trial worker left behind would go on writing into the experiment.

    Ray's two node agents (ray::DashboardAgent, ray::RuntimeEnvAgent) are allowed to linger:
    after a SIGKILL they exit on their own only a minute or two later (seen with Ray 2.60, with
    no raylet or GCS left); they hold no trial and touch no experiment file. The `sessions`
    fixture ends them when the tests are done."""
    def alive() -> list[tuple[int, str, str]]:
        return [p for p in session_processes(driver.pid)
                if not p[2].startswith(("ray::DashboardAgent", "ray::RuntimeEnvAgent"))]

    deadline = time.monotonic() + timeout
    while alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    left = alive()
    assert not left, f"run {driver.tag}: still running {timeout:.0f} s after its driver: {left}"


@pytest.fixture(scope="module")
def sessions():
    """The driver pids (session ids) started here; whatever of theirs is left is killed last."""
    started: list[int] = []
    yield started
    for sid in started:
        for pid, _state, _name in session_processes(sid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# What the experiment holds ------------------------------------------------------------------


def result_rows(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    text = path.read_text() if path.is_file() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def trial_dirs(exp_dir: Path, strategy: str) -> list[Path]:
    return sorted(p.parent for p in (exp_dir / strategy).glob("trial_*/params.json"))


def reports(exp_dir: Path, strategy: str) -> int:
    """Complete lines in the strategy's result.json files (one may be half written)."""
    return sum((d / "result.json").read_text().count("\n")
               for d in trial_dirs(exp_dir, strategy) if (d / "result.json").is_file())


def study_size(exp_dir: Path, strategy: str) -> int:
    """How many trials the strategy's study has handed out: one more as soon as Tune asks for a
    trial, before Tune's own saved state holds it (read-only, so the driver never waits)."""
    db = exp_dir / "optuna.db"
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as connection:
            (count,) = connection.execute(
                "SELECT count(*) FROM trials JOIN studies USING (study_id) "
                "WHERE study_name = ?", (f"{NAME}/{strategy}",)).fetchone()
    except sqlite3.OperationalError:  # the tables are not there yet
        return 0
    return count


def saved_trials(exp_dir: Path, strategy: str) -> dict[str, tuple[str, int]]:
    """Trial id -> (status, epochs reported) in the newest state Tune has saved for the strategy
    (its format is Tune's; only the kills' timing reads it). Empty while none or half written."""
    states = sorted((exp_dir / strategy).glob("experiment_state-*.json"))  # names: start times
    try:
        saved = json.loads(states[-1].read_text())["trial_data"] if states else []
        trials = [(json.loads(trial), json.loads(meta)) for trial, meta in saved]
    except (OSError, ValueError):
        return {}
    return {t["trial_id"]: (t["status"], m.get("last_result", {}).get("training_iteration", 0))
            for t, m in trials}


def between_trials(exp_dir: Path, strategy: str) -> bool:
    """Tune has saved every trial it knows as ended and has just asked the study for another:
    the asked trial is in no saved state (an orphan if the driver dies now), and no trial has
    a checkpoint to lose."""
    saved = saved_trials(exp_dir, strategy)
    return bool(saved) and all(status == "TERMINATED" for status, _ in saved.values()) \
        and study_size(exp_dir, strategy) > len(saved)


def resume_args(stderr: str) -> list[str]:
    """The arguments of the command the interrupted run printed after 'Resume it with:'."""
    lines = stderr.splitlines()
    command = shlex.split(lines[lines.index("Resume it with:") + 1])
    assert command[:2] == ["python", "search/run.py"], command
    return command[2:]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, sessions):
    """A search stopped with Ctrl-C (SIGINT to the driver alone) once its first trial reported:
    (root folder, the Driver, its exit code)."""
    root = tmp_path_factory.mktemp("interrupt")
    exp_dir = root / "experiments" / NAME
    driver = Driver(root, "sigint", [*SEARCH, "--storage", str(root / "experiments"),
                                     "--name", NAME, "--cache-dir", str(root / "cache")])
    sessions.append(driver.pid)
    driver.wait_until(lambda: reports(exp_dir, "scratch") >= 1, "first scratch report", 300)
    driver.proc.send_signal(signal.SIGINT)
    return root, driver, driver.wait_exit(120)


def test_ctrl_c_stops_cleanly_and_prints_the_resume_command(interrupted):
    root, driver, code = interrupted
    assert code == 130, driver.output()
    stderr = driver.stderr()
    assert "search interrupted during scratch" in stderr, driver.output()
    assert "Resume it with:" in stderr and f"--resume {NAME} --storage" in stderr
    assert resume_args(stderr) == ["--resume", NAME, "--storage", str(root / "experiments")]
    assert "Traceback" not in stderr + driver.stdout(), driver.output()
    assert (root / "experiments" / NAME / "experiment.json").is_file()
    assert "trials.json" not in os.listdir(root / "experiments" / NAME)  # nothing finished
    wait_for_ray_to_die(driver)  # ray.shutdown() on the way out


def test_killed_drivers_resume_without_losing_or_repeating_anything(interrupted, sessions):
    root, first, _ = interrupted
    exp_dir = root / "experiments" / NAME
    # the first driver had Ray's dashboard, which wait_for_ray_to_die saw end; these need none
    resume = [*resume_args(first.stderr()), "--cache-dir", str(root / "cache"), "--no-dashboard"]

    # 1. resumed; SIGKILL mid-trial, once Tune has saved a later epoch of a trial than the
    # interrupted run had (the restored trial runs again, and resumes from that epoch next)
    before = saved_trials(exp_dir, "scratch")
    second = Driver(root, "kill-scratch", resume)
    sessions.append(second.pid)

    def later_epoch_saved() -> bool:
        saved = saved_trials(exp_dir, "scratch")
        return any(status == "RUNNING" and epochs > before.get(trial, ("", 0))[1]
                   for trial, (status, epochs) in saved.items()) and caught_up(saved)

    def caught_up(saved: dict[str, tuple[str, int]]) -> bool:
        """No epoch reported after Tune's last save: the next one is an epoch away."""
        return all(len(result_rows(exp_dir / "scratch" / f"trial_{trial}")) == epochs
                   for trial, (status, epochs) in saved.items() if status == "RUNNING")

    second.wait_until(later_epoch_saved, "a later scratch epoch in Tune's saved state", 300,
                      every=0.01)
    second.kill()
    wait_for_ray_to_die(second)
    assert "resuming scratch" in second.stdout(), second.output()

    # 2. resumed again; scratch ends (trials.json); SIGKILL as frozen starts its second trial
    third = Driver(root, "kill-frozen", resume)
    sessions.append(third.pid)
    third.wait_until(lambda: between_trials(exp_dir, "frozen"),
                     "a frozen trial asked after one ended", 300)
    third.kill()
    wait_for_ray_to_die(third)
    assert list(json.loads((exp_dir / "trials.json").read_text())) == ["scratch"]

    # 3. resumed to the end
    last = Driver(root, "finish", resume)
    sessions.append(last.pid)
    assert last.wait_exit(600) == 0, last.output()
    assert "scratch: already searched, kept" in last.stdout(), last.output()
    assert "resuming frozen" in last.stdout(), last.output()
    # the progress callback, pickled with the Tuner, still prints trial ends after a restore
    assert "finished: best val_acc" in last.stdout(), last.output()
    assert "Traceback" not in last.stdout() + last.stderr(), last.output()
    for run in (second, third):  # up to the kill; Ray's workers then die noisily on its SIGTERM
        assert "Traceback" not in run.stdout() + own_errors(run.stderr()), run.output()

    orphans = {s: check_strategy(exp_dir, s) for s in STRATEGIES}
    print(f"orphaned study trials: {orphans}")
    printed = second.stdout() + third.stdout() + last.stdout()
    for strategy, count in orphans.items():  # closed, and said so, once its Tuner finished
        assert (f"{strategy}: {count} study trial(s) of a killed driver marked failed"
                in printed) == (count > 0), printed
    board = pd.read_csv(exp_dir / "leaderboard.csv").set_index("strategy")
    assert sorted(board.index) == sorted(STRATEGIES)
    assert board.loc[list(STRATEGIES), "trials"].tolist() == [SAMPLES] * len(STRATEGIES)
    assert board["errored"].sum() == 0


def own_errors(stderr: str) -> str:
    """A killed driver's stderr without what its trial workers print as they die: the raylet
    SIGTERMs them once the driver is gone, they share its stderr, and a SIGTERM that lands in a
    weakref callback prints "Exception ignored in: ..." with Ray's sigterm_handler's SystemExit."""
    dying = re.compile(r"Exception ignored in: [^\n]*\nTraceback \(most recent call last\):\n"
                       r"(?:(?:[ \t][^\n]*)?\n)*?SystemExit: \d+\n?")
    return dying.sub(lambda m: "" if "sigterm_handler" in m.group(0) else m.group(0), stderr)


def check_strategy(exp_dir: Path, strategy: str) -> int:
    """Tune's trials, trials.json and the Optuna study agree; returns the orphaned study
    trials (asked by a driver killed before Tune saved the trial)."""
    dirs = {d.name.removeprefix("trial_"): d for d in trial_dirs(exp_dir, strategy)}
    assert len(dirs) == SAMPLES, sorted(dirs)
    outcomes = json.loads((exp_dir / "trials.json").read_text())[strategy]
    assert {o["trial_id"] for o in outcomes} == set(dirs)
    assert not any(o["errored"] for o in outcomes), outcomes

    best = {}
    for trial_id, trial_dir in dirs.items():
        rows = result_rows(trial_dir)
        epochs = [r["training_iteration"] for r in rows]
        # each epoch reported once, in order, and the trainable's own count agrees with Tune's
        assert epochs == list(range(1, len(epochs) + 1)), (trial_dir, epochs)
        assert [r["epoch"] for r in rows] == epochs, trial_dir
        assert epochs[-1] in (GRACE, MAX_EPOCHS), (trial_dir, epochs)
        best[trial_id] = max(r["val_acc"] for r in rows)
        assert rows[-1]["best_val_acc"] == pytest.approx(best[trial_id])

    study = optuna.load_study(study_name=f"{NAME}/{strategy}",
                              storage=f"sqlite:///{exp_dir / 'optuna.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    others = [t for t in study.trials if t.state != optuna.trial.TrialState.COMPLETE]
    by_tune_id = {t.user_attrs["tune_trial_id"]: t for t in complete}
    assert len(by_tune_id) == len(complete) == SAMPLES
    assert set(by_tune_id) == set(dirs)
    for trial_id, trial in by_tune_id.items():
        assert trial.value == pytest.approx(best[trial_id]), trial_id
        last = result_rows(dirs[trial_id])[-1]["training_iteration"]
        assert trial.user_attrs["epochs"] == last
        assert trial.user_attrs["stopped_early"] == (last < MAX_EPOCHS)
    for trial in others:
        assert trial.state == optuna.trial.TrialState.FAIL, trial
        assert trial.user_attrs.get("orphaned") is True, trial
    return len(others)
