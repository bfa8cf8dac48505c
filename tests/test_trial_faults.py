"""Trial faults: a raise is retried from the last checkpoint up to --max-failures, a diverged
loss and an exhausted memory end the trial at once, and the search goes on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from tests.helpers import TINY_MODEL, ok, run_search
from trainables.config import RunSettings, TrialConfig
from trainables.failures import TrialFailure, is_out_of_memory
from trainables.injected_faults import FAULT_ENV
from trainables.trainable import fit

ROOT = Path(__file__).resolve().parents[1]


def fit_reports(data, lr: float, epochs: int = 3, report: bool = True) -> list[tuple]:
    reports = []
    fit(RunSettings("scratch", TINY_MODEL, epochs, 0),
        TrialConfig(lr=lr, batch_size=16, augment="none", weight_decay=0.0), data.train,
        data.val, None, num_classes=data.num_classes,
        report=(lambda m, s: reports.append((m, s))) if report else None)
    return reports


def test_a_loss_that_diverges_ends_the_trial_at_once_without_a_checkpoint(tiny_demo):
    reports = fit_reports(tiny_demo, lr=1e6)  # a real divergence: SGD's steps overflow
    assert len(reports) == 1, "no epoch may train after the loss is gone"
    metrics, state = reports[0]
    assert metrics["failure"] == "diverged: training loss nan at epoch 1"
    assert metrics["failure_kind"] == "diverged"
    assert state is None  # nothing worth resuming from
    assert "best_val_acc" in metrics  # the scheduler's metric, which Tune requires


def test_a_sane_lr_reports_every_epoch_with_a_checkpoint(tiny_demo):
    reports = fit_reports(tiny_demo, lr=0.01)
    assert [m["epoch"] for m, _ in reports] == [1, 2, 3]
    assert all("failure" not in m and callable(s) for m, s in reports)


def test_the_final_evaluation_raises_the_failure_instead(tiny_demo):
    with pytest.raises(TrialFailure, match="diverged"):
        fit_reports(tiny_demo, lr=1e6, report=False)


OUT_OF_HOST_MEMORY = """
import resource, numpy as np
from trainables.config import RunSettings, TrialConfig
from trainables.data.dataset import Split
from trainables.trainable import fit
train = Split(np.zeros((64, 3, 160, 160), np.uint8), np.arange(64) % 2)
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
# 600 MB more address space than the interpreter, torch and the data already hold: ResNet-18's
# activations of 64 images at 160 px do not fit
resource.setrlimit(resource.RLIMIT_AS, (size + 600_000_000, resource.RLIM_INFINITY))
reports = []
fit(RunSettings("scratch", "resnet18", 2, 0),
    TrialConfig(lr=0.01, batch_size=64, augment="none", weight_decay=0.0), train, None, None,
    num_classes=2, report=lambda m, s: reports.append((m, s)))
print(reports[-1][0]["failure"], len(reports), reports[-1][1])
"""


def test_running_out_of_host_memory_names_the_batch_size():
    # the host's memory: the trial runs on the CPU, also where a GPU is (whose driver would
    # not even start within the address-space limit)
    result = subprocess.run([sys.executable, "-c", OUT_OF_HOST_MEMORY], capture_output=True,
                            text=True, timeout=120, cwd=ROOT,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("out of memory at batch size 64 on cpu")
    assert result.stdout.split(")")[-1].split() == ["1", "None"]  # one report, no checkpoint


@pytest.mark.parametrize(("error", "oom"), [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), True),
    (MemoryError(), True),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8"), True),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
    (ValueError("out of memory"), False),
])
def test_only_memory_errors_count_as_out_of_memory(error, oom):
    assert is_out_of_memory(error) is oom


@pytest.mark.slow
def test_a_search_survives_every_kind_of_trial_fault(tmp_path):
    """Four trials: 0 raises at every attempt, 1 raises once, 2 diverges, 3 runs out of
    memory. 1 is retried from its epoch-1 checkpoint and finishes; the others are errored,
    failed in the study, and on the leaderboard; the search exits 0."""
    faults = "scratch:2:raise:trial=0;scratch:2:raise:trial=1,once;scratch:2:nan:trial=2;" \
             "scratch:1:oom:trial=3"
    result = ok(run_search(
        tmp_path, "--strategy", "scratch", "--data", "demo:4", "--backbone", TINY_MODEL,
        "--samples", "4", "--max-epochs", "3", "--scheduler", "fifo", "--max-failures", "1",
        "--max-concurrent", "1", "--quiet", "--no-dashboard", name="faults", tiny=False,
        timeout=600, env={FAULT_ENV: faults}))
    exp = tmp_path / "experiments" / "faults"
    study = optuna.load_study(study_name="faults/scratch", storage=f"sqlite:///{exp}/optuna.db")
    # one trial at a time: the study's trial numbers are the start order
    order = [t.user_attrs["tune_trial_id"] for t in sorted(study.trials, key=lambda t: t.number)]
    outcomes = {str(order.index(o["trial_id"])): o
                for o in json.loads((exp / "trials.json").read_text())["scratch"]}
    assert "InjectedFault" in outcomes["0"]["error"] and outcomes["0"]["errored"]
    assert not outcomes["1"]["errored"]
    assert outcomes["2"]["error"] == "diverged: training loss nan at epoch 2"
    assert outcomes["3"]["error"].startswith("out of memory at batch size ")
    assert outcomes["3"]["error"].split()[6] == str(trial_config(exp, order[3])["batch_size"])

    # 0 ran twice (--max-failures 1); 1 resumed after epoch 1 and ran each epoch once
    assert (trial_dir(exp, order[0]) / "error.txt").read_text().count("InjectedFault") >= 2
    epochs = [json.loads(line)["epoch"] for line in
              (trial_dir(exp, order[1]) / "result.json").read_text().splitlines()]
    assert epochs == [1, 2, 3]

    board = pd.read_csv(exp / "leaderboard.csv")
    assert board[["trials", "errored"]].values.tolist() == [[4, 3]]
    states = {str(order.index(t.user_attrs["tune_trial_id"])): t.state.name
              for t in study.trials}
    assert states == {"0": "FAIL", "1": "COMPLETE", "2": "FAIL", "3": "FAIL"}
    assert "scratch: 4 trials, 3 errored" in result.stdout
    assert f"trial {order[2]} failed: diverged: training loss nan at epoch 2" in result.stdout


def trial_dir(exp: Path, trial_id: str) -> Path:
    return exp / "scratch" / f"trial_{trial_id}"


def trial_config(exp: Path, trial_id: str) -> dict:
    return json.loads((trial_dir(exp, trial_id) / "params.json").read_text())


def test_an_epoch_stops_at_the_first_check_after_its_loss_diverged():
    from trainables.loop import CHECK_STEPS, run_epoch

    weight = torch.nn.Parameter(torch.ones(()))
    optimizer = torch.optim.SGD([weight], lr=0.0)
    steps = []

    def batch_loss(idx):
        steps.append(len(steps) + 1)
        value = float("nan") if len(steps) >= 3 else 1.0  # diverges at the 3rd step
        return weight * value, 0

    stats = run_epoch(optimizer, 1000 * CHECK_STEPS, batch_loss, batch_size=1,
                      device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    assert len(steps) == CHECK_STEPS  # not the epoch's 1000 x CHECK_STEPS steps
    assert stats.loss != stats.loss  # NaN: the trial then ends as diverged
