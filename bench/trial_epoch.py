"""Benchmark a whole trial epoch through the harness against a bare PyTorch loop.

    python bench/trial_epoch.py --epochs 9

The harness's epoch is what Ray Tune times between two reports of one trial (`time_this_iter_s`):
train, evaluate, save the checkpoint (model and optimizer state), report. The trial runs through
`search/run.py --config`, so Tune, its checkpoint handling and the trainable are the real ones.
The trial writes each epoch's checkpoint and reports it on its own reporting thread while the
next epoch trains (trainables/reporting.py): what the checkpoint costs the epoch is the copy of
the state into host memory, and the second thread's share of the machine. The bare loop trains
and evaluates the same model on the same images with the same batch, one torch thread as the
trial has, and saves nothing. Both are measured in this run, with and without augmentation, the
bare loop before and after the harness (a machine that drifts during the run weighs on both
sides); the first epoch of each run (model build, warm-up) is left out. Also printed:
the disk each trial-epoch writes (its checkpoint), and how an experiment's disk grows with its
trials: searches of `--disk-trials` trials (2 epochs each, sampled every half second), the most
they held during the search and what is left after it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import yaml
from torch import nn

from bench.data_pipeline import bare_epoch
from bench.tables import format_table
from trainables.data.demo import load_demo
from trainables.models import build_model, normalizer

ROOT = Path(__file__).resolve().parents[1]
AUGMENTS = ("none", "crop_flip")  # the augmentations the bare loop does as the trainable does


def harness_epochs(backbone: str, per_class: int, epochs: int, batch_size: int, augment: str,
                   tmp: Path) -> tuple[list[float], int]:
    """Seconds between the reports of one trial's epochs 2.., and its checkpoint's bytes."""
    config = {"transfer_search_config": 1, "strategy": "scratch", "data": f"demo:{per_class}",
              "backbone": backbone, "max_epochs": epochs, "image_size": 32,
              "hyperparameters": {"lr": 0.01, "batch_size": batch_size, "augment": augment,
                                  "weight_decay": 1e-4}}
    (tmp / f"{augment}.yaml").write_text(yaml.safe_dump(config))
    subprocess.run([sys.executable, str(ROOT / "search" / "run.py"), "--config",
                    str(tmp / f"{augment}.yaml"), "--storage", str(tmp / "runs"), "--name",
                    augment, "--cache-dir", str(tmp / "cache"), "--keep-checkpoints", "all",
                    "--quiet", "--no-dashboard"], check=True, capture_output=True, cwd=tmp)
    (result,) = (tmp / "runs" / augment / "scratch").glob("*/result.json")
    rows = [json.loads(line) for line in result.read_text().splitlines()]
    checkpoint = next(result.parent.glob("checkpoint_*/checkpoint.pt"))
    return [r["time_this_iter_s"] for r in rows[1:]], checkpoint.stat().st_size


def bare_epochs(backbone: str, per_class: int, epochs: int, batch_size: int,
                augment: str) -> list[float]:
    """Seconds per epoch (train, then evaluate on val) of a plain loop, epochs 2.."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = load_demo(per_class, image_size=32)
    images, labels = torch.from_numpy(data.train.images), torch.from_numpy(data.train.labels)
    val_x, val_y = torch.from_numpy(data.val.images), torch.from_numpy(data.val.labels)
    model = build_model(backbone, data.num_classes).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                                weight_decay=1e-4)
    norm = normalizer(model)
    generator = torch.Generator().manual_seed(0)
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        bare_epoch(model, optimizer, images, labels, batch_size, augment != "none", norm.mean,
                   norm.std, generator)
        model.eval()
        with torch.no_grad():
            for begin in range(0, len(val_y), 512):
                x = ((val_x[begin:begin + 512].float() - norm.mean) / norm.std)
                nn.functional.cross_entropy(
                    model(x.contiguous(memory_format=torch.channels_last)),
                    val_y[begin:begin + 512])
        seconds.append(time.perf_counter() - start)
    return seconds[1:]


def measure(backbone: str = "resnet18", per_class: int = 50, epochs: int = 9,
            batch_size: int = 64, disk_trials: tuple[int, ...] = (4, 8, 16),
            augments: tuple[str, ...] = AUGMENTS) -> dict:
    """Every number of the table, all measured in this call."""
    out = {"backbone": backbone, "per_class": per_class, "batch_size": batch_size,
           "epochs": epochs, "rows": {}, "disk": []}
    with tempfile.TemporaryDirectory() as tmp:
        for augment in augments:
            bare = bare_epochs(backbone, per_class, epochs, batch_size, augment)
            harness, checkpoint = harness_epochs(backbone, per_class, epochs, batch_size,
                                                 augment, Path(tmp))
            bare += bare_epochs(backbone, per_class, epochs, batch_size, augment)
            out["rows"][augment] = {"harness": statistics.median(harness),
                                    "bare": statistics.median(bare)}
            out["checkpoint_bytes"] = checkpoint
        out["disk"] = [disk_growth(backbone, n, Path(tmp)) for n in disk_trials]
    return out


def disk_use(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) \
        if folder.is_dir() else 0


def disk_growth(backbone: str, trials: int, tmp: Path) -> dict:
    """Bytes an experiment of `trials` 2-epoch trials held at most during its search, and after
    it (run.py keeps the best checkpoint of the 3 best trials per strategy)."""
    exp = tmp / "runs" / f"disk{trials}"
    peak, done = [0], threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            try:
                peak[0] = max(peak[0], disk_use(exp))
            except FileNotFoundError:  # a checkpoint deleted while it was being counted
                pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    subprocess.run([sys.executable, str(ROOT / "search" / "run.py"), "--strategy", "scratch",
                    "--data", "demo:4", "--backbone", backbone, "--samples", str(trials),
                    "--max-epochs", "2", "--scheduler", "fifo", "--storage", str(tmp / "runs"),
                    "--name", exp.name, "--cache-dir", str(tmp / "cache"), "--quiet",
                    "--no-dashboard"],
                   check=True, capture_output=True, cwd=tmp)
    done.set()
    watcher.join()
    return {"trials": trials, "peak": peak[0], "after": disk_use(exp)}


def table(m: dict) -> list[tuple[str, str, str]]:
    what = f"{m['backbone']}, demo:{m['per_class']}, batch {m['batch_size']}"
    rows = []
    for augment, t in m["rows"].items():
        rows.append((f"trial epoch, augment {augment}: harness / bare loop ({what})",
                     f"{t['harness']:.2f} s / {t['bare']:.2f} s",
                     f"{t['harness'] / t['bare']:.3f}x"))
    mb = m["checkpoint_bytes"] / 1e6
    rows.append(("disk written per trial-epoch (its checkpoint)", f"{mb:.1f} MB", ""))
    first = m["disk"][0] if m["disk"] else None
    for d in m["disk"]:
        rows.append((f"experiment of {d['trials']} trials x 2 epochs: most on disk during the "
                     "search", f"{d['peak'] / 1e6:.0f} MB",
                     f"{d['peak'] / d['trials'] / 1e6:.0f} MB per trial"))
        rows.append((f"experiment of {d['trials']} trials x 2 epochs: on disk after it",
                     f"{d['after'] / 1e6:.0f} MB",
                     f"{d['after'] / first['after']:.2f}x {first['trials']} trials"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--per-class", type=int, default=50, help="demo:N training images")
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--disk-trials", default="4,8,16", metavar="N,N,...",
                        help="trials of the searches whose disk use is measured")
    parser.add_argument("--augments", default=",".join(AUGMENTS), metavar="A,A,...",
                        help="the augmentations whose trial epoch is measured (default: "
                        "%(default)s)")
    args = parser.parse_args()
    counts = tuple(int(n) for n in args.disk_trials.split(","))
    augments = tuple(args.augments.split(","))
    if not set(augments) <= set(AUGMENTS):
        parser.error(f"--augments {args.augments}: choose from {', '.join(AUGMENTS)}")
    print(format_table(table(measure(args.backbone, args.per_class, args.epochs,
                                     args.batch_size, counts, augments))))


if __name__ == "__main__":
    main()
