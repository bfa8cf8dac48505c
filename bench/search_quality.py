"""Benchmark search efficiency: ASHA against FIFO on the same configs, and TPE against random
search at an equal budget of trial-epochs, on the demo and on a generated ImageFolder, over seeds.

    python bench/search_quality.py --seeds 0 1 2

Every search is `search/run.py` itself, one process each, and every number is read back from
its experiment directory: a trial's epochs are the rows of its result.json (one per epoch it
reported), and its best val_acc the highest of them. Per dataset and seed, three searches of
`--samples` trials of up to `--max-epochs` epochs:

1. random search, FIFO (`--searcher random --scheduler fifo`): a seeded random sample of the
   space (Optuna's RandomSampler), every trial trained to the full budget. It is both the FIFO
   baseline and the random-search arm.
2. ASHA on the same configs (`--scheduler asha --warm-start` a CSV of run 1's configs, in the
   order its study sampled them). A trial's seed is the run's, so a config trains the same
   epochs under both schedulers (the table counts the ASHA trials whose epochs match); what
   ASHA loses is then only what it stopped.
3. TPE, FIFO: `--searcher tpe` as the harness configures it (multivariate, grouped, constant
   liar, max(3, samples // 3) random startup trials). Its startup draws are random search's
   first draws (the same seed), so the two arms differ only where TPE's model proposes. Under
   FIFO both spend exactly samples x max-epochs trial-epochs; the best val_acc after each
   quarter of that budget counts the epochs in the order they were reported.

Goals, from the issue: ASHA spends at most 35% of FIFO's trial-epochs, and loses at most 1 point
of best val_acc. Each run and the totals say met or MISSED; TPE against random has no goal.

Why these settings: 18 searches have to fit in about half an hour on a 2-core machine without
a GPU, so searches of different seeds run two at a time (`--jobs`). `scratch` with timm's
`test_resnet` (370k parameters) at 32 px trains an epoch of the demo in about a second and needs
no pretraining stage (a pretrained strategy would train its supervised stage once per seed,
minutes each); and from scratch configs differ widely (val_acc from chance to 0.8), which is
what a search needs to show anything. ASHA's grace period and reduction factor are the
harness's defaults (1 and 4, Ray Tune's own), so its rungs are at 1 and 4 epochs. 16 trials of
up to 12 epochs, not the harness's default 8 of 6: ASHA judges a trial against those that
reached its rung before it, so the first trials run on against few rivals (the very first
always to the end), and that fixed cost needs a search of some size to be paid back. With 8
trials of 8 epochs it spent 0.42-0.45 of FIFO's trial-epochs (`--samples 8 --max-epochs 8`).
The generated ImageFolder (8 classes of textures, 480 train / 240 val PNGs) has strong pixel
noise, so that its best trials stay below 100% and a search can still gain.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from analysis.results import trial_statuses
from bench.tables import format_table
from search.options import SCHEDULER_DEFAULTS
from store.records import PARAMS_FILE, epoch_rows, trial_dirs

ROOT = Path(__file__).resolve().parents[1]
STRATEGY = "scratch"
QUARTERS = (0.25, 0.5, 0.75, 1.0)
GOAL_RATIO, GOAL_POINTS = 0.35, 1.0
GRACE, FACTOR = SCHEDULER_DEFAULTS["asha"]  # the harness's, so they follow its CLI
DEFAULTS = {"datasets": ("demo", "imagefolder"), "seeds": (0, 1, 2), "samples": 16,
            "max_epochs": 12, "grace_period": GRACE, "reduction_factor": FACTOR,
            "backbone": "test_resnet", "per_class": (60, 30, 10), "jobs": 2,
            "max_concurrent": None}
# --quick: one dataset, one seed, 4 trials of 4 epochs (ASHA still has a rung at 1): a check
# that the script produces every row, in about two minutes, not a measurement. Its trials of a
# few images run one at a time: each search then starts one trial actor, not one per core, each
# of which spends seconds of CPU importing torch and timm
QUICK = {**DEFAULTS, "datasets": ("imagefolder",), "seeds": (0,), "samples": 4,
         "max_epochs": 4, "per_class": (5, 5, 1), "max_concurrent": 1}

# the generated ImageFolder: a class is a (texture, palette) pair, so neither the texture nor
# the colours alone tell the 8 classes apart; every image has its own period, angle, phase,
# colour jitter and pixel noise
TEXTURES = ("stripes", "bars", "checks", "rings")
PALETTES = {"warm": ((0.9, 0.4, 0.1), (0.3, 0.05, 0.1)), "cool": ((0.1, 0.6, 0.9),
                                                                  (0.05, 0.2, 0.25))}


def draw(texture: str, palette: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """One (size, size, 3) uint8 image of `texture` in `palette`."""
    ys, xs = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(-0.4, 0.4) + (np.pi / 2 if texture == "bars" else 0.0)
    u = xs * np.cos(angle) + ys * np.sin(angle)
    v = ys * np.cos(angle) - xs * np.sin(angle)
    period, phase = rng.uniform(0.15, 0.3), rng.uniform(0, 2 * np.pi, 2)
    if texture == "checks":
        wave = np.sin(2 * np.pi * u / period + phase[0]) * np.sin(2 * np.pi * v / period
                                                                 + phase[1])
    elif texture == "rings":
        centre = rng.uniform(0.3, 0.7, 2)
        wave = np.sin(2 * np.pi * np.hypot(xs - centre[0], ys - centre[1]) / period + phase[0])
    else:
        wave = np.sin(2 * np.pi * u / period + phase[0])
    mask = (0.5 + 0.5 * np.tanh(3 * wave))[..., None]
    fg, bg = (np.asarray(c) * rng.uniform(0.7, 1.2) + rng.normal(0, 0.12, 3)
              for c in PALETTES[palette])
    image = mask * fg + (1 - mask) * bg + rng.normal(0, 0.45, (size, size, 3))
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def make_imagefolder(root: Path, per_class: tuple[int, int, int], size: int = 32,
                     seed: int = 0) -> Path:
    """train/, val/ and test/ folders of class folders of PNGs, the same for every `seed` run of
    the benchmark (the search's seed varies the search, not the data)."""
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "val", "test"), per_class, strict=True):
        for texture in TEXTURES:
            for palette in PALETTES:
                folder = root / split / f"{palette}_{texture}"
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(count):
                    Image.fromarray(draw(texture, palette, rng, size)).save(
                        folder / f"{i:04d}.png")
    return root


def search(tmp: Path, name: str, data: str, seed: int, s: dict, *flags: str) -> Path:
    """One search through search/run.py; its experiment directory."""
    start = time.perf_counter()
    command = [sys.executable, str(ROOT / "search" / "run.py"), "--strategy", STRATEGY,
               "--data", data, "--backbone", s["backbone"], "--samples", str(s["samples"]),
               "--max-epochs", str(s["max_epochs"]), "--grace-period", str(s["grace_period"]),
               "--reduction-factor", str(s["reduction_factor"]), "--seed", str(seed),
               "--storage", str(tmp / "runs"), "--name", name, "--cache-dir",
               str(tmp / "cache"), "--quiet", "--no-dashboard", *flags]
    if s["max_concurrent"]:
        command += ["--max-concurrent", str(s["max_concurrent"])]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} exited with {result.returncode}:\n"
                           f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    print(f"  {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return tmp / "runs" / name


def trials(exp_dir: Path) -> list[dict]:
    """Each trial's config (params.json), epoch reports and whether it errored."""
    statuses = trial_statuses(exp_dir)
    return [{"config": json.loads((d / PARAMS_FILE).read_text()), "rows": epoch_rows(d),
             "errored": statuses.get(d.name.removeprefix("trial_"), {}).get("errored", False)}
            for d in trial_dirs(exp_dir, STRATEGY)]


def write_sampled_configs(exp_dir: Path, path: Path) -> Path:
    """The configs of a search's study in the order it sampled them, as a --warm-start CSV."""
    import optuna

    storage = f"sqlite:///{exp_dir / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["strategy", "hyperparameters"])
        for trial in sorted(study.trials, key=lambda t: t.number):
            writer.writerow([STRATEGY, json.dumps(trial.params, sort_keys=True)])
    return path


def reported(run: list[dict]) -> list[float]:
    """Every epoch's val_acc of a search, in the order the epochs were reported (Tune's
    timestamps are whole seconds: ties go by the trial's start, then its epoch)."""
    rows = [(r["timestamp"], t["rows"][0]["timestamp"], r["training_iteration"], r["val_acc"])
            for t in run for r in t["rows"]]
    return [row[-1] for row in sorted(rows)]


def best_after(values: list[float], budget: int) -> list[float]:
    """The best val_acc seen after each quarter of `budget` trial-epochs."""
    return [max(values[:math.ceil(q * budget)], default=math.nan) for q in QUARTERS]


def same_training(asha: list[dict], fifo: list[dict]) -> int:
    """ASHA trials whose every epoch's val_acc equals the FIFO trial's of the same config."""
    curves = {json.dumps(t["config"], sort_keys=True): [r["val_acc"] for r in t["rows"]]
              for t in fifo}
    return sum(curves.get(json.dumps(t["config"], sort_keys=True), [])[:len(t["rows"])]
               == [r["val_acc"] for r in t["rows"]] for t in asha)


def one_seed(tmp: Path, dataset: str, data: str, seed: int, s: dict) -> dict:
    """The three searches of one dataset and seed, and what the table needs from them."""
    name = f"{dataset}-{seed}"
    # no preset: the arms compare searchers and schedulers from the same random start
    fifo_dir = search(tmp, f"{name}-random-fifo", data, seed, s, "--searcher", "random",
                      "--scheduler", "fifo", "--no-preset")
    configs = write_sampled_configs(fifo_dir, tmp / f"{name}-configs.csv")
    asha_dir = search(tmp, f"{name}-asha", data, seed, s, "--searcher", "random",
                      "--scheduler", "asha", "--warm-start", str(configs), "--no-preset")
    tpe_dir = search(tmp, f"{name}-tpe-fifo", data, seed, s, "--searcher", "tpe",
                     "--scheduler", "fifo", "--no-preset")
    fifo, asha, tpe = trials(fifo_dir), trials(asha_dir), trials(tpe_dir)
    key = sorted(json.dumps(t["config"], sort_keys=True) for t in fifo)
    if key != sorted(json.dumps(t["config"], sort_keys=True) for t in asha):
        raise RuntimeError(f"{name}: ASHA did not run FIFO's configs; see {asha_dir}")
    budget = s["samples"] * s["max_epochs"]
    return {"dataset": dataset, "seed": seed, "trials": len(fifo), "budget": budget,
            "epochs": {k: sum(len(t["rows"]) for t in run)
                       for k, run in (("fifo", fifo), ("asha", asha), ("tpe", tpe))},
            "best": {k: max(reported(run), default=math.nan)
                     for k, run in (("fifo", fifo), ("asha", asha), ("tpe", tpe))},
            "quarters": {"tpe": best_after(reported(tpe), budget),
                         "random": best_after(reported(fifo), budget)},
            "same_training": same_training(asha, fifo),
            "errored": sum(t["errored"] for run in (fifo, asha, tpe) for t in run)}


def measure(workdir: Path | None = None, **settings) -> dict:
    """Every search of the benchmark, run in `workdir` (kept), else in a temporary folder;
    settings as in DEFAULTS."""
    s = {**DEFAULTS, **settings}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(workdir or tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        data = {"demo": "demo", "imagefolder": str(make_imagefolder(tmp / "imagefolder",
                                                                    s["per_class"]))}
        # searches of different (dataset, seed) side by side: each runs its short trials
        # mostly one at a time (a trial ends before Tune has started a second actor), so one
        # search leaves a core idle; the numbers measured here do not depend on wall time
        with ThreadPoolExecutor(s["jobs"]) as pool:
            runs = list(pool.map(lambda job: one_seed(tmp, job[0], data[job[0]], job[1], s),
                                 [(d, seed) for d in s["datasets"] for seed in s["seeds"]]))
    return {"settings": s, "runs": runs}


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def mean_std(values: list[float], digits: int = 2, sign: str = "") -> str:
    """`mean ± std` (sample std) of the seeds' values; the mean alone for one seed."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:{sign}.{digits}f}"
    return f"{mean:{sign}.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def quarters(values: list[float]) -> str:
    return " ".join(f"{v:.3f}" for v in values)


def ratio(r: dict) -> float:
    return r["epochs"]["asha"] / r["epochs"]["fifo"]


def points(difference: float) -> float:
    """A difference of accuracies in points, rounded to what the table shows (no -0.0)."""
    return round(100 * difference, 1) + 0.0


def lost(r: dict) -> float:
    """Points of best val_acc ASHA lost against FIFO (negative: it found more)."""
    return points(r["best"]["fifo"] - r["best"]["asha"])


def tpe_gain(r: dict) -> float:
    return points(r["quarters"]["tpe"][-1] - r["quarters"]["random"][-1])


def run_rows(r: dict) -> list[tuple[str, str, str]]:
    label = f"{r['dataset']} seed {r['seed']}"
    at = f"after 25/50/75/100% of {r['budget']} trial-epochs"
    return [
        (f"{label}: trial-epochs ASHA / FIFO", f"{r['epochs']['asha']} / {r['epochs']['fifo']}",
         f"{ratio(r):.2f}  {verdict(ratio(r) <= GOAL_RATIO)} (goal <= {GOAL_RATIO})"),
        (f"{label}: best val_acc ASHA / FIFO", f"{r['best']['asha']:.3f} / {r['best']['fifo']:.3f}",
         f"{0.0 - lost(r):+.1f} pts  {verdict(lost(r) <= GOAL_POINTS)} (goal >= -{GOAL_POINTS:g})"),
        (f"{label}: best val_acc TPE {at}", quarters(r["quarters"]["tpe"]),
         f"{tpe_gain(r):+.1f} pts vs random at 100%"),
        (f"{label}: best val_acc random {at}", quarters(r["quarters"]["random"]), ""),
    ]


def dataset_rows(dataset: str, runs: list[dict]) -> list[tuple[str, str, str]]:
    """Mean ± std over the seeds of one dataset."""
    label = f"{dataset}, mean ± std of {len(runs)} seeds" if len(runs) > 1 else \
        f"{dataset}, 1 seed"
    ratios, losses = [ratio(r) for r in runs], [lost(r) for r in runs]
    by_quarter = {k: [statistics.fmean(r["quarters"][k][i] for r in runs)
                      for i in range(len(QUARTERS))] for k in ("tpe", "random")}
    return [
        (f"{label}: trial-epochs ASHA / FIFO", mean_std(ratios),
         f"{verdict(statistics.fmean(ratios) <= GOAL_RATIO)} (goal <= {GOAL_RATIO})"),
        (f"{label}: best val_acc ASHA - FIFO, pts", mean_std([0.0 - x for x in losses], 1, "+"),
         f"{verdict(statistics.fmean(losses) <= GOAL_POINTS)} (goal >= -{GOAL_POINTS:g})"),
        (f"{label}: best val_acc TPE after 25/50/75/100%", quarters(by_quarter["tpe"]),
         f"{mean_std([tpe_gain(r) for r in runs], 1, '+')} pts vs random at 100%"),
        (f"{label}: best val_acc random after 25/50/75/100%", quarters(by_quarter["random"]),
         ""),
    ]


def total_rows(runs: list[dict]) -> list[tuple[str, str, str]]:
    """Each goal over every run, met only where it holds on all of them."""
    n = len(runs)
    fast = sum(ratio(r) <= GOAL_RATIO for r in runs)
    close = sum(lost(r) <= GOAL_POINTS for r in runs)
    return [
        (f"goal: ASHA's trial-epochs <= {GOAL_RATIO:.0%} of FIFO's", f"{fast} of {n} runs",
         verdict(fast == n)),
        (f"goal: ASHA's best val_acc at most {GOAL_POINTS:g} point below FIFO's",
         f"{close} of {n} runs", verdict(close == n)),
        ("TPE's best val_acc >= random search's at the full budget",
         f"{sum(tpe_gain(r) >= 0 for r in runs)} of {n} runs", "(no goal)"),
        ("ASHA trials whose epochs equal FIFO's of the same config",
         f"{sum(r['same_training'] for r in runs)} of {sum(r['trials'] for r in runs)}", ""),
        ("trials errored, all searches", str(sum(r["errored"] for r in runs)), ""),
    ]


def table(m: dict) -> list[tuple[str, str, str]]:
    rows = []
    for dataset in m["settings"]["datasets"]:
        runs = [r for r in m["runs"] if r["dataset"] == dataset]
        for r in runs:
            rows += run_rows(r)
        rows += dataset_rows(dataset, runs)
    return rows + total_rows(m["runs"])


def header(s: dict) -> str:
    return (f"{STRATEGY}, {s['backbone']}, 32 px; per search {s['samples']} trials x up to "
            f"{s['max_epochs']} epochs; ASHA grace period {s['grace_period']}, reduction factor "
            f"{s['reduction_factor']}; seeds {', '.join(map(str, s['seeds']))}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=("demo", "imagefolder"),
                        default=list(DEFAULTS["datasets"]))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULTS["seeds"]))
    parser.add_argument("--samples", type=int, default=DEFAULTS["samples"],
                        help="trials per search")
    parser.add_argument("--max-epochs", type=int, default=DEFAULTS["max_epochs"])
    parser.add_argument("--grace-period", type=int, default=DEFAULTS["grace_period"],
                        help="ASHA's first rung (default: the harness's)")
    parser.add_argument("--reduction-factor", type=int, default=DEFAULTS["reduction_factor"],
                        help="ASHA's (default: the harness's)")
    parser.add_argument("--backbone", default=DEFAULTS["backbone"])
    parser.add_argument("--jobs", type=int, default=DEFAULTS["jobs"],
                        help="searches run side by side")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the data and experiments here (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true",
                        help="one small dataset, one seed, 4 trials of 4 epochs: a check")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else {
        "datasets": tuple(args.datasets), "seeds": tuple(args.seeds), "samples": args.samples,
        "max_epochs": args.max_epochs, "grace_period": args.grace_period,
        "reduction_factor": args.reduction_factor, "backbone": args.backbone,
        "jobs": args.jobs}
    m = measure(args.workdir, **settings)
    print(header(m["settings"]))
    print(format_table(table(m)))


if __name__ == "__main__":
    main()
