"""Count the pretraining stages a search runs: once per experiment, however many trials.

    python bench/stage_runs.py --samples 2 8

Runs `search/run.py` on the demo with the strategies that need a stage (frozen and unfrozen
start from the supervised stage, colorization from its pretext stage), for each trial count
with an empty cache, then once more with the cache the first left. Stage runs are read from the
experiment's own record (experiment.json: each stage, and whether it ran or came from the
cache); trials never run a stage, they receive its weights through Ray's object store.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench.tables import format_table
from store.layout import read_experiment
from store.records import PARAMS_FILE

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = "frozen,unfrozen,colorization"


def search_args(tmp: Path, name: str, samples: int, cache: Path, backbone: str) -> list[str]:
    """search/run.py's arguments for one search of STRATEGIES on the demo."""
    return ["--strategy", STRATEGIES, "--data", "demo:4", "--backbone", backbone, "--samples",
            str(samples), "--max-epochs", "1", "--pretrain-epochs", "1", "--scheduler", "fifo",
            "--storage", str(tmp), "--name", name, "--cache-dir", str(cache), "--quiet",
            "--no-dashboard"]


def count(exp_dir: Path) -> dict:
    """Stages an experiment ran and took from the cache (its experiment.json), and its trials."""
    meta = read_experiment(exp_dir)
    ran = Counter(r["stage"] for r in meta["stages"] if not r.get("cached"))
    cached = Counter(r["stage"] for r in meta["stages"] if r.get("cached"))
    trials = sum(1 for _ in exp_dir.glob(f"*/trial_*/{PARAMS_FILE}"))
    return {"ran": dict(ran), "cached": dict(cached), "trials": trials}


def stage_runs(tmp: Path, name: str, samples: int, cache: Path, backbone: str) -> dict:
    """Stages run and taken from the cache by one search, and its trials."""
    subprocess.run([sys.executable, str(ROOT / "search" / "run.py"),
                    *search_args(tmp, name, samples, cache, backbone)],
                   check=True, capture_output=True, cwd=tmp)
    return count(tmp / name)


def measure(samples: tuple[int, ...] = (2, 8), backbone: str = "test_resnet") -> list[dict]:
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n in samples:
            cache = tmp / f"cache-{n}"
            runs.append({"samples": n, "cache": "empty",
                         **stage_runs(tmp, f"cold-{n}", n, cache, backbone)})
            runs.append({"samples": n, "cache": "warm",
                         **stage_runs(tmp, f"warm-{n}", n, cache, backbone)})
    return runs


def table(runs: list[dict]) -> list[tuple[str, str, str]]:
    rows = []
    for r in runs:
        ran = ", ".join(f"{k} {v}" for k, v in sorted(r["ran"].items())) or "none"
        rows.append((f"{r['trials']} trials ({r['samples']} per strategy, {STRATEGIES}), "
                     f"{r['cache']} cache: stage runs", ran,
                     f"each stage {max(r['ran'].values(), default=0)}x" if r["ran"]
                     else "all from the cache"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[2, 8],
                        help="trials per strategy, one search each")
    parser.add_argument("--backbone", default="test_resnet")
    args = parser.parse_args()
    print(format_table(table(measure(tuple(args.samples), args.backbone))))


if __name__ == "__main__":
    main()
