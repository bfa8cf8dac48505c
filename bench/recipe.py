"""The search's answer against a tuned recipe: the search as it was before presets and training
tricks, the preset alone, and the search now, at equal trial-epochs, over seeds, on the real
CIFAR-10 slice and on the demo.

    python bench/recipe.py --seeds 0 1 2

Per dataset and seed, three runs of `search/run.py` (strategy `scratch`, the same backbone,
image size, seed, `--samples` trials of `--max-epochs` epochs under ASHA), each followed by its
final evaluation (`--final-eval 1`: the best config retrained on train + val for its best
epoch's count of epochs, then tested on the test split, which no search reads):

(a) before: the space as it was before presets and tricks (`bench/before_tricks.yaml`: no
    random-resized crop, mixup, EMA or warmup choice, one weight-decay range of 1e-6 to 1e-2
    for both optimizers, the lr ranges of fine-tuning) and `--no-preset`, so TPE starts from
    random trials;
(b) preset: one trial, the strategy's preset (`--samples 1`; the preset is a search's first
    trial), trained for `--max-epochs` like every trial;
(c) search: the search as it is now, preset first.

The table gives each arm's test accuracy, mean and 95% t-interval over the seeds, and the
differences (c) - (a) and (c) - (b) with Welch's interval. Goals: (c) at least 3 points above
(a) and at least 1 point above (b) on the CIFAR-10 slice. The slice is `../shared/datasets/
cifar10_small` (5,000 train images, 1,000 test) beside the repository, or `--cifar DIR`; it
is skipped, saying so, where it is missing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.stats import gap_ci, mean_ci
from bench.search_quality import search
from bench.tables import format_table
from store.layout import EVAL_RESULTS

HERE = Path(__file__).resolve().parent
CIFAR = HERE.parents[1] / "shared" / "datasets" / "cifar10_small"
ARMS = {"before": ("--no-preset", "--space", str(HERE / "before_tricks.yaml")),
        "preset": ("--samples", "1"),
        "search": ()}
GOALS = {"before": 3.0, "preset": 1.0}  # points (c) must gain over each, on the CIFAR slice
# max_concurrent None: each search runs Ray's default number of trials at once
DEFAULTS = {"datasets": ("cifar", "demo"), "seeds": (0, 1, 2), "samples": 8, "max_epochs": 3,
            "backbone": "resnet10t", "jobs": 2, "max_concurrent": None}
# --quick: the demo, one seed, 2 trials of 1 epoch with the tiny backbone: a check that the
# script produces every row, not a measurement
QUICK = {**DEFAULTS, "datasets": ("demo",), "seeds": (0,), "samples": 2, "max_epochs": 1,
         "backbone": "test_resnet"}


def test_accuracy(exp_dir: Path) -> float:
    """The final evaluation's test accuracy of the run's one strategy."""
    return float(pd.read_csv(exp_dir / EVAL_RESULTS)["test_acc"].iloc[0])


def one_run(tmp: Path, dataset: str, data: str, seed: int, arm: str, s: dict) -> float:
    settings = {**s, "grace_period": 1, "reduction_factor": 4}  # the harness's ASHA defaults
    exp_dir = search(tmp, f"{dataset}-{arm}-{seed}", data, seed, settings, *ARMS[arm],
                     "--final-eval", "1")
    return test_accuracy(exp_dir)


def measure(workdir: Path | None = None, cifar: Path = CIFAR, **settings) -> dict:
    """Test accuracy per dataset, arm and seed; the searches run in `workdir` (kept, so each
    run's trials can be read afterwards), else in a temporary folder."""
    s = {**DEFAULTS, **settings}
    sources = {"demo": "demo"}
    if "cifar" in s["datasets"]:
        if cifar.is_dir():
            sources["cifar"] = str(cifar)
        else:
            print(f"skipping the CIFAR-10 slice: {cifar} is missing (pass --cifar DIR)",
                  file=sys.stderr)
    datasets = [d for d in s["datasets"] if d in sources]
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(workdir or scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        jobs = [(d, seed, arm) for d in datasets for seed in s["seeds"] for arm in ARMS]
        with ThreadPoolExecutor(max_workers=s["jobs"]) as pool:
            accs = list(pool.map(lambda j: one_run(tmp, j[0], sources[j[0]], j[1], j[2], s),
                                 jobs))
    results: dict = {d: {arm: [] for arm in ARMS} for d in datasets}
    for (d, _, arm), acc in zip(jobs, accs, strict=True):
        results[d][arm].append(acc)
    return {"settings": s, "results": results}


def interval(values: list[float]) -> str:
    ci = mean_ci(np.array(values))
    if len(values) < 2:
        return f"{ci.mean:.3f}"
    return f"{ci.mean:.3f} [{ci.low:.3f}, {ci.high:.3f}]"


def gain(new: list[float], old: list[float], goal: float | None) -> tuple[str, str]:
    points = 100 * (np.mean(new) - np.mean(old))
    text = f"{points:+.1f} pts"
    if len(new) > 1 and len(old) > 1:
        ci = gap_ci(np.array(new), np.array(old))
        text += f" [{100 * ci.low:+.1f}, {100 * ci.high:+.1f}]"
    verdict = "" if goal is None else f"goal +{goal:g}: {'met' if points >= goal else 'MISSED'}"
    return text, verdict


def table(m: dict) -> list[tuple[str, str, str]]:
    rows = []
    for dataset, arms in m["results"].items():
        for arm, label in (("before", "(a) before"), ("preset", "(b) preset"),
                           ("search", "(c) search")):
            rows.append((f"{dataset}: {label} test acc", interval(arms[arm]), ""))
        for old in ("before", "preset"):
            goal = GOALS[old] if dataset == "cifar" else None
            rows.append((f"{dataset}: (c) - ({'a' if old == 'before' else 'b'})",
                         *gain(arms["search"], arms[old], goal)))
    return rows


def header(s: dict) -> str:
    return (f"scratch {s['backbone']}, {s['samples']} trials x {s['max_epochs']} epochs under "
            f"ASHA, final evaluation 1 seed per run, runs over seeds {list(s['seeds'])}; test "
            "accuracy, mean [95% t-interval] over seeds")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=("cifar", "demo"),
                        default=list(DEFAULTS["datasets"]))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULTS["seeds"]))
    parser.add_argument("--samples", type=int, default=DEFAULTS["samples"])
    parser.add_argument("--max-epochs", type=int, default=DEFAULTS["max_epochs"])
    parser.add_argument("--backbone", default=DEFAULTS["backbone"])
    parser.add_argument("--jobs", type=int, default=DEFAULTS["jobs"],
                        help="runs side by side (default: %(default)s)")
    parser.add_argument("--cifar", type=Path, default=CIFAR, help="the CIFAR-10 slice")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the data and experiments here (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="tiny inputs, to check the script")
    args = parser.parse_args(argv)
    s = dict(QUICK) if args.quick else {
        "datasets": tuple(args.datasets), "seeds": tuple(args.seeds), "samples": args.samples,
        "max_epochs": args.max_epochs, "backbone": args.backbone, "jobs": args.jobs}
    m = measure(args.workdir, args.cifar, **s)
    print(header(m["settings"]))
    print(format_table(table(m)))


if __name__ == "__main__":
    main()
