"""Benchmark the memory of reused trial actors: RSS of each actor after each trial it ran.

    python bench/actor_memory.py --trials 30

Runs one real search through search/run.py (scratch, fifo, `--trials` trials of `--max-epochs`
epochs on the demo at 32 px; Tune reuses its trial actors, about trials / CPUs trials each) and,
on a thread of this process, samples the RSS of every `ray::` worker process under it every
0.2 s. Each trial's result.json says which process (pid) ran it and when it ended. Prints one
table: per actor, the trials it ran, then its RSS at the end of its 3rd trial and of its last,
with their ratio (the goal: within 1.25x), and the same for its highest RSS during those trials
(which does not depend on where in a second the sample at a trial's end fell). `--series`
prints both for every trial.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from bench import tables

HERE = Path(__file__).resolve().parent
EARLY = 3  # the trial whose RSS is the baseline: imports, data and allocator pools are warm


class RssSampler(threading.Thread):
    """(time, RSS bytes) of every `ray::` process under `root`, every `interval` seconds."""

    def __init__(self, root: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.samples: dict[int, list[tuple[float, int]]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.sample()
            self.done.wait(self.interval)

    def sample(self) -> None:
        try:
            children = psutil.Process(self.root).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for process in children:
            try:
                if process.name().startswith("ray::") or is_ray_worker(process.cmdline()):
                    rss = process.memory_info().rss
                    if rss:  # 0 once the process has exited
                        self.samples.setdefault(process.pid, []).append((time.time(), rss))
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue

    def stop(self) -> dict[int, list[tuple[float, int]]]:
        self.done.set()
        self.join()
        return self.samples


def is_ray_worker(cmdline: list[str]) -> bool:
    return bool(cmdline) and cmdline[0].startswith("ray::")


def trial_ends(trials_dir: Path) -> list[dict]:
    """Each trial's pid and end time (its last report), from Tune's result.json files."""
    ends = []
    for path in sorted(trials_dir.glob("*/result.json")):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        if lines:
            last = json.loads(lines[-1])
            ends.append({"trial": path.parent.name, "pid": int(last["pid"]),
                         "end": float(last["timestamp"]), "epochs": last["training_iteration"]})
    return sorted(ends, key=lambda t: t["end"])


def rss_at(samples: list[tuple[float, int]], when: float) -> int:
    """The process's last RSS sampled before `when` (or its first sample)."""
    before = [rss for t, rss in samples if t <= when]
    return before[-1] if before else samples[0][1]


def per_actor(ends: list[dict], samples: dict[int, list[tuple[float, int]]]) -> list[dict]:
    """Per actor process, in order of its first trial: its RSS at the end of each trial it ran
    and its highest RSS during each. Tune's timestamps are whole seconds, so a trial ends in the
    second after its last report's timestamp, and runs from there back to the previous end."""
    actors: dict[int, dict[str, list[int]]] = {}
    for trial in ends:
        pid = trial["pid"]
        if pid not in samples:
            continue
        actor = actors.setdefault(pid, {"end": [], "peak": [], "since": 0.0})
        until = trial["end"] + 1.0
        during = [rss for t, rss in samples[pid] if actor["since"] < t <= until]
        actor["end"].append(rss_at(samples[pid], until))
        actor["peak"].append(max(during, default=actor["end"][-1]))
        actor["since"] = until
    return [{"pid": pid, "end": a["end"], "peak": a["peak"]} for pid, a in actors.items()]


def search_command(trials: int, max_epochs: int, data: str, backbone: str, storage: Path,
                   name: str) -> list[str]:
    return [sys.executable, str(HERE.parent / "search" / "run.py"), "--strategy", "scratch",
            "--data", data, "--image-size", "32", "--backbone", backbone, "--samples",
            str(trials), "--max-epochs", str(max_epochs), "--scheduler", "fifo", "--storage",
            str(storage), "--name", name, "--cache-dir", str(storage / "cache"), "--quiet"]


def measure(trials: int, max_epochs: int, data: str = "demo", backbone: str = "resnet18",
            interval: float = 0.2) -> dict:
    """Run the search, sampling its workers; every number of the table, measured in this call."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp)
        cmd = search_command(trials, max_epochs, data, backbone, storage, "mem")
        start = time.perf_counter()
        with open(storage / "search.log", "w") as log:
            search = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            sampler = RssSampler(search.pid, interval)
            sampler.start()
            code = search.wait()
        samples = sampler.stop()
        seconds = time.perf_counter() - start
        if code != 0:
            log = (storage / "search.log").read_text()
            raise RuntimeError(f"the search failed (exit code {code}):\n{log}")
        ends = trial_ends(storage / "mem" / "scratch")
    return {"trials": len(ends), "max_epochs": max_epochs, "data": data, "backbone": backbone,
            "seconds": seconds, "actors": per_actor(ends, samples)}


def mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB"


def table(m: dict) -> list[tuple[str, str, str]]:
    """(measure, value, ratio) rows: the search, then five rows per actor."""
    rows = [(f"search: {m['trials']} trials x {m['max_epochs']} epochs, {m['data']}, "
             f"{m['backbone']}", f"{m['seconds']:.0f} s", "")]
    for i, actor in enumerate(m["actors"], 1):
        n = len(actor["end"])
        early = min(EARLY, n)
        rows.append((f"actor {i} (pid {actor['pid']}): trials run", f"{n}", ""))
        for key, label in (("end", "RSS at the end of trial"), ("peak", "RSS peak in trial")):
            rss = actor[key]
            rows += [(f"actor {i}: {label} {early}", mb(rss[early - 1]), ""),
                     (f"actor {i}: {label} {n} (its last)", mb(rss[-1]),
                      f"{rss[-1] / rss[early - 1]:.2f}x trial {early}")]
    return rows


def format_series(m: dict) -> str:
    """Each actor's RSS at the end of each of its trials, and its peak in each, in MB."""
    return "\n".join(f"actor {i} RSS per trial, {key} (MB): "
                     + " ".join(f"{r / 1e6:.0f}" for r in a[key])
                     for i, a in enumerate(m["actors"], 1) for key in ("end", "peak"))


def format_table(rows: list[tuple[str, str, str]]) -> str:
    return tables.format_table(rows, value_width=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--max-epochs", type=int, default=2)
    parser.add_argument("--data", default="demo", help="as search/run.py's --data")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--series", action="store_true", help="also print RSS after each trial")
    args = parser.parse_args()
    m = measure(args.trials, args.max_epochs, args.data, args.backbone)
    print(format_table(table(m)))
    if args.series:
        print(format_series(m))


if __name__ == "__main__":
    main()
