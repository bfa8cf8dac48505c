"""Helpers shared by test modules; fixtures live in conftest.py."""

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = "test_resnet"  # timm's 370k-parameter ResNet for tests
BACKBONES = (TINY_MODEL, "resnet10t")  # what conftest's backbones_search searches over
# a search small enough for a test: 8 demo images per class, the tiny backbone, one-epoch stages,
# no Ray dashboard (about 4 s of CPU per Ray start; tests/test_servers.py starts one), and one
# trial at a time: each Tuner then starts one trial actor and reuses it, where a second would
# spend about 6 s of CPU importing torch and timm to train 80 images. The suite's workers keep
# the cores busy anyway; tests of trials side by side give --max-concurrent (later flags win)
TINY = ("--data", "demo:8", "--backbone", TINY_MODEL, "--pretrain-epochs", "1",
        "--cpus-per-trial", "1", "--no-dashboard", "--max-concurrent", "1")


def run_script(script: str, *args: str, cwd: Path | None = None, env: dict | None = None,
               timeout: float = 900) -> subprocess.CompletedProcess:
    """search/<script> in a subprocess, as a user runs it; `env` adds to this environment."""
    return subprocess.run([sys.executable, str(ROOT / "search" / script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def run_search(tmp_path: Path, *args: str, name: str | None = None, tiny: bool = True,
               env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """search/run.py in a subprocess from `tmp_path`, with the TINY settings unless `tiny` is
    False (later flags win, so `args` may override them) and a cache in tmp_path/cache. Given a
    `name`, the experiment goes to tmp_path/experiments/<name>."""
    where = ["--storage", str(tmp_path / "experiments"), "--name", name] if name else []
    cache = [] if "--cache-dir" in args else ["--cache-dir", str(tmp_path / "cache")]
    return run_script("run.py", *(TINY if tiny else ()), *args, *where, *cache, cwd=tmp_path,
                      env=env, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """The result, once its exit code is 0; else the test fails with the output's tail."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def run_once(tmp_path_factory, name: str, make: Callable[[Path], None],
             timeout: float = 1260) -> Path:
    """A directory that `make` fills once per test session, shared by pytest-xdist's workers:
    the first to ask fills it; the others wait for it, at most `timeout` s, and read the same.
    Tests only read it; one that changes an experiment works on a copy."""
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers' base temps share a parent
        root = tmp_path_factory.getbasetemp().parent / name  # that is this session's alone
        root.mkdir(exist_ok=True)
    else:
        root = tmp_path_factory.mktemp(name)
    done = root / ".done"
    with FileLock(root.parent / f"{root.name}.lock", timeout=timeout):
        if not done.exists():
            make(root)
            done.touch()
    return root


def shared_search(tmp_path_factory, group: str, name: str, *args: str,
                  timeout: float = 900) -> tuple[Path, str]:
    """One real search (`run_search` with `args`), made once per test session by `run_once` in
    the directory `group`: (its experiment dir, the run's stdout)."""
    def search(root: Path) -> None:
        result = ok(run_search(root, *args, name=name, timeout=timeout))
        (root / "stdout.txt").write_text(result.stdout)

    root = run_once(tmp_path_factory, group, search)
    return root / "experiments" / name, (root / "stdout.txt").read_text()


def write_trial(root: Path, strategy: str, trial_id: str, params: dict, accs: list[float],
                seconds_per_epoch: float = 36.0) -> None:
    """One trial in Ray Tune's layout under root/<strategy>: its params, and a report per epoch
    with the val_acc of `accs` (none: it raised before its first report)."""
    from store.records import PARAMS_FILE, RESULT_FILE

    trial = root / strategy / f"trial_{trial_id}"
    trial.mkdir(parents=True)
    (trial / PARAMS_FILE).write_text(json.dumps(params))
    lines = [json.dumps({"trial_id": trial_id, "training_iteration": i + 1, "val_acc": acc,
                         "val_loss": 1 - acc, "images_per_s": 100.0, "lr": params.get("lr", 0.1),
                         "time_total_s": seconds_per_epoch * (i + 1),
                         "checkpoint_dir_name": f"checkpoint_{i:06d}"})
             for i, acc in enumerate(accs)]
    (trial / RESULT_FILE).write_text("\n".join(lines) + "\n")


def changed(before: nn.Module, after: nn.Module) -> dict[str, bool]:
    """For every floating-point tensor of the state dict: did it change?"""
    old = before.state_dict()
    return {k: not torch.equal(old[k], v) for k, v in after.state_dict().items()
            if v.is_floating_point()}


def marked_json(stdout: str, mark: str):
    """The JSON a helper process printed after `mark` on a line of its own. Found by its mark,
    not as the last line: Ray's drivers also print to stdout (worker logs, cluster events such
    as a node that just died), before or after it."""
    lines = [line for line in stdout.splitlines() if line.startswith(mark + " ")]
    assert lines, f"no line starting {mark!r} in:\n{stdout[-2000:]}"
    return json.loads(lines[-1].removeprefix(mark + " "))


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
