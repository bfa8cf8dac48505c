"""--time-budget: durations parsed and refused, the stopper's count kept over a restore through
its ledger, the budget line of the leaderboard and the report, and a real search of two
strategies that each stop within their share."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import optuna
import pandas as pd
import pytest

from search.budget import (
    BudgetStopper,
    Ledger,
    budget_callbacks,
    budget_stopper,
    trial_started,
    use_ledger,
)
from search.spec import UsageError, parse_spec
from store.layout import BUDGET_FILE, read_budget
from tests.helpers import ok, run_search


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def spec(tmp_path, *args):
    return parse_spec(["--storage", str(tmp_path / "runs"), "--name", "x", *args])


@pytest.mark.parametrize(("text", "seconds"), [("10m", 600), ("90s", 90), ("1.5h", 5400),
                                               ("600", 600), (".5m", 30)])
def test_durations_parse_to_seconds_and_lift_the_trial_count(tmp_path, text, seconds):
    s = spec(tmp_path, "--strategy", "scratch", "--time-budget", text)
    assert s.time_budget_s == seconds and s.samples is None  # as many trials as fit


def test_samples_given_with_a_budget_stay_and_pbt_keeps_its_population(tmp_path):
    both = spec(tmp_path, "--strategy", "scratch", "--time-budget", "10m", "--samples", "5")
    assert (both.samples, both.time_budget_s) == (5, 600)
    pbt = spec(tmp_path, "--strategy", "scratch", "--time-budget", "10m", "--scheduler", "pbt")
    assert pbt.samples == 8
    plain = spec(tmp_path, "--strategy", "scratch")
    assert (plain.samples, plain.time_budget_s) == (8, None)


def test_bad_durations_and_a_new_budget_on_resume_are_refused(tmp_path):
    """More values than the bad-input table's, which runs its cases through the CLI's exit 2
    (tests/test_bad_input.py)."""
    for value in ("10x", "1H", "-5m", "0", ".", "inf", "nan"):
        with pytest.raises(UsageError, match=f"--time-budget {value}: "):
            spec(tmp_path, "--strategy", "scratch", "--time-budget", value)
    with pytest.raises(UsageError, match="own settings; drop --time-budget"):
        parse_spec(["--resume", "x", "--time-budget", "10m", "--storage", str(tmp_path)])


def test_resume_keeps_the_budget_and_the_unbounded_trials_from_experiment_json(tmp_path):
    from dataclasses import asdict

    from store.layout import write_experiment

    first = spec(tmp_path, "--strategy", "scratch,frozen", "--time-budget", "10m")
    meta = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(first).items()}
    write_experiment(first.exp_dir, {**meta, "strategies": {"scratch": {}, "frozen": {}}})
    resumed = parse_spec(["--resume", "x", "--storage", str(tmp_path / "runs")])
    assert (resumed.time_budget_s, resumed.samples, resumed.resume) == (600, None, True)


def test_the_stopper_ends_once_its_share_is_spent_and_writes_its_ledger(tmp_path):
    clock = FakeClock()
    stopper = BudgetStopper("scratch", 60.0, Ledger(tmp_path), clock, write_every_s=5.0)
    trial_started("scratch")
    assert stopper.stop_all() is False  # the first check starts the count
    assert read_budget(tmp_path)["scratch"] == {"share_s": 60.0, "spent_s": 0.0, "ended": False}
    clock.now += 3
    assert stopper.stop_all() is False
    assert read_budget(tmp_path)["scratch"]["spent_s"] == 0.0  # not yet: every 5 s
    clock.now += 3
    stopper.stop_all()
    assert read_budget(tmp_path)["scratch"]["spent_s"] == 6.0
    assert stopper("trial", {"val_acc": 0.5}) is False  # never one trial alone
    clock.now += 54
    assert stopper.stop_all() is True
    assert read_budget(tmp_path)["scratch"] == {"share_s": 60.0, "spent_s": 60.0, "ended": True}
    clock.now += 100
    assert stopper.stop_all() is True and stopper.spent_s == 60.0


def test_a_restored_stopper_counts_on_from_the_ledger_not_from_zero(tmp_path):
    """What Tune's restore does: unpickle the stopper it saved, whose own count may be older
    than the ledger (a driver killed between two snapshots), in a new process whose clock
    reads anything. Only the time left is spent, and the time the driver was down is not."""
    old_clock = FakeClock(1000.0)
    stopper = BudgetStopper("frozen", 100.0, Ledger(tmp_path), old_clock, write_every_s=5.0)
    trial_started("frozen")
    stopper.stop_all()
    old_clock.now += 30
    snapshot = pickle.dumps(stopper)  # Tune's experiment state at 30 s
    for _ in range(8):  # 40 s more, the ledger written every 5 s, then the driver is killed
        old_clock.now += 5
        stopper.stop_all()
    assert read_budget(tmp_path)["frozen"]["spent_s"] == 70.0

    restored = pickle.loads(snapshot)
    new_clock = FakeClock(5.0)  # another process: the clock's origin is another
    restored.clock = new_clock
    assert restored.stop_all() is False and restored.spent_s == 70.0
    new_clock.now += 29
    assert restored.stop_all() is False
    new_clock.now += 1
    assert restored.stop_all() is True  # 30 s after the restore, not 100 nor 70
    assert read_budget(tmp_path)["frozen"] == {"share_s": 100.0, "spent_s": 100.0,
                                               "ended": True}


def test_the_clock_starts_with_the_tuners_first_trial(tmp_path):
    """Neither the wait for a trial's resources nor its actor's start is spent from a share; a
    restored Tuner's clock, too, waits for its first trial."""
    budget = spec(tmp_path, "--strategy", "frozen", "--time-budget", "60s")
    assert budget_callbacks(spec(tmp_path, "--strategy", "frozen"), "frozen") == []  # no budget
    clock = FakeClock()
    stopper = budget_stopper(budget, "frozen", clock)
    [started] = budget_callbacks(budget, "frozen")
    stopper.stop_all()
    clock.now += 45  # the first trial's actor still importing torch
    assert stopper.stop_all() is False and stopper.spent_s == 0.0
    started.on_trial_start(iteration=3, trials=[], trial=None)
    clock.now += 30
    assert stopper.stop_all() is False and stopper.spent_s == 30.0
    snapshot = pickle.dumps(stopper)

    use_ledger(budget, "frozen")  # what restore_tuner does before Tune unpickles its copy
    restored = pickle.loads(snapshot)
    restored.clock = clock
    restored.stop_all()
    clock.now += 20
    assert restored.stop_all() is False and restored.spent_s == 30.0
    assert restored("trial", {"val_acc": 0.5}) is False  # a first result starts it too
    clock.now += 30
    assert restored.stop_all() is True and restored.spent_s == 60.0

    other = spec(tmp_path / "other", "--strategy", "unfrozen", "--time-budget", "10s")
    failing = budget_stopper(other, "unfrozen", clock)
    [failed] = budget_callbacks(other, "unfrozen")
    failing.stop_all()
    clock.now += 10
    assert failing.stop_all() is False
    failed.on_trial_error(iteration=4, trials=[], trial=None)  # its actor could not start
    clock.now += 10
    assert failing.stop_all() is True  # a Tuner of failing trials still ends


def test_a_restored_stopper_writes_where_the_experiment_is_now(tmp_path):
    """Tune's copy names the experiment where it was; a moved experiment's driver registers
    the ledger where it is now, and the copy reads and writes that one."""
    first = spec(tmp_path, "--strategy", "scratch,frozen", "--time-budget", "2m")
    clock = FakeClock()
    stopper = budget_stopper(first, "frozen", clock)
    assert stopper.share_s == 60.0  # two strategies, half each
    trial_started("frozen")
    stopper.stop_all()
    clock.now += 20
    stopper.stop_all()
    snapshot = pickle.dumps(stopper)
    moved = tmp_path / "elsewhere" / "x"
    moved.parent.mkdir()
    first.exp_dir.rename(moved)
    use_ledger(parse_like(first, moved), "frozen")
    restored = pickle.loads(snapshot)
    restored.stop_all()
    assert json.loads((moved / BUDGET_FILE).read_text())["frozen"]["spent_s"] == 20.0
    assert not first.exp_dir.exists()


def parse_like(spec_, exp_dir: Path):
    from dataclasses import replace

    return replace(spec_, storage=exp_dir.parent, name=exp_dir.name)


def test_the_budget_line_names_each_strategys_share_and_trials():
    from analysis.console import budget_line, duration_text, leaderboard_text

    meta = {"time_budget_s": 600, "samples": None, "strategies": {"scratch": {}, "frozen": {}}}
    assert budget_line(meta, {"scratch": 7, "frozen": 12}) == (
        "time budget 10m: 5m per strategy; trials in that time: scratch 7, frozen 12")
    assert "(or 8 trials, whichever ended first)" in budget_line({**meta, "samples": 8}, {})
    assert budget_line({"samples": 8}, {"scratch": 8}) is None
    assert [duration_text(s) for s in (90, 5400, 22.5, 200)] == ["1m30s", "1h30m", "22.5s",
                                                                "3m20s"]
    board = pd.DataFrame({"strategy": ["frozen", "scratch"], "val_acc": [0.5, 0.4],
                          "top3_mean": [0.4, 0.3], "top3_std": [0.1, 0.1], "trials": [12, 7],
                          "errored": [0, 0], "stopped_early": [3, 2],
                          "hyperparameters": ["", ""]})
    text = leaderboard_text(board, meta=meta)
    assert text.splitlines()[5] == budget_line(meta, {"scratch": 7, "frozen": 12})  # under it


@pytest.mark.slow
def test_a_budget_of_two_strategies_stops_each_within_its_share(tmp_path):
    budget, tolerance = 40.0, 10.0  # a trial's epoch and its stop, on a busy 2-core machine
    result = ok(run_search(tmp_path, "--strategy", "scratch,frozen", "--time-budget",
                           f"{budget:g}s", "--max-epochs", "2", name="tb", timeout=600))
    exp_dir = tmp_path / "experiments" / "tb"
    ledger = read_budget(exp_dir)
    counts, trained = {}, {}
    for strategy in ("scratch", "frozen"):
        assert ledger[strategy]["ended"] and ledger[strategy]["share_s"] == budget / 2
        rows = [json.loads(line) for path in (exp_dir / strategy).glob("trial_*/result.json")
                for line in path.read_text().splitlines() if line.strip()]
        trained[strategy] = len({r["trial_id"] for r in rows})
        assert trained[strategy] >= 1, result.stdout[-3000:]
        # each report's wall time: its trial's start plus the time it had trained by then
        starts = [r["timestamp"] - r["time_total_s"] for r in rows]
        assert max(r["timestamp"] for r in rows) - min(starts) <= budget / 2 + tolerance
        counts[strategy] = len(list((exp_dir / strategy).glob("trial_*/params.json")))
    # as many trials as fit: neither share pays for starting its Tuner's trial actor (on a
    # loaded machine, more than a share of 20 s)
    assert min(trained.values()) > 2, result.stdout[-3000:]
    assert (f"time budget 40s: 20s per strategy; trials in that time: scratch "
            f"{counts['scratch']}, frozen {counts['frozen']}") in result.stdout
    assert "as many trials as fit in 20s" in result.stdout
    meta = json.loads((exp_dir / "experiment.json").read_text())
    assert meta["time_budget_s"] == budget and meta["samples"] is None
    # the trials it stopped are told to the study, none left running or taken for orphans;
    # trials that only waited for a slot are no trials of the search
    outcomes = json.loads((exp_dir / "trials.json").read_text())
    for strategy in ("scratch", "frozen"):
        study = optuna.load_study(study_name=f"tb/{strategy}",
                                  storage=f"sqlite:///{exp_dir / 'optuna.db'}")
        states = {t.state for t in study.trials}
        assert optuna.trial.TrialState.RUNNING not in states, strategy
        assert not any(t.user_attrs.get("orphaned") for t in study.trials)
        assert len(outcomes[strategy]) == counts[strategy]


def test_the_report_says_how_many_trials_each_strategy_got_in_its_time(tmp_path):
    from analysis.report import leaderboard_md, load, setup_md
    from tests.helpers import write_trial
    from tests.test_report import META

    exp = tmp_path / "tb"
    exp.mkdir()
    meta = {**META, "samples": None, "time_budget_s": 90.0,
            "strategies": {"frozen": META["strategies"]["frozen"],
                           "scratch": META["strategies"]["scratch"]}}
    (exp / "experiment.json").write_text(json.dumps(meta))
    for i, acc in enumerate((0.3, 0.5, 0.4)):
        write_trial(exp, "frozen", f"f{i}", {"lr": 0.1}, [acc])
    write_trial(exp, "scratch", "s0", {"lr": 0.1}, [0.2, 0.3])
    tables = load([exp])
    assert ("`tb`: time budget 1m30s: 45s per strategy; trials in that time: frozen 3, "
            "scratch 1") in leaderboard_md(tables)
    assert "trials of up to 4 epochs, as many as fit in each strategy's time" in setup_md(tables)
