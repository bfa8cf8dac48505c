"""Benchmark the data pipeline: preparation, caching, decodes per search, epoch overhead.

    python bench/data_pipeline.py            # generates 5,000 JPEGs in a temp folder

Prints one table: first vs cached preparation of an ImageFolder, the images decoded by every
process of a 4-trial search (cold cache, then warm), and the harness's training epoch against a
bare PyTorch loop over the same uint8 tensors, model and batch size, with and without
augmentation. Ratios are measured side by side in this one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from bench import tables
from trainables.config import TrialConfig
from trainables.data import demo
from trainables.data.augment import random_crop, random_flip
from trainables.data.load import load_dataset
from trainables.loop import train_epoch
from trainables.models import Normalize, build_model
from trainables.strategies import get_strategy

HERE = Path(__file__).resolve().parent


def generate_folder(root: Path, per_class: int, size: int) -> int:
    rng = np.random.default_rng(0)
    for colour, shape in demo.TARGET_CLASSES:
        folder = root / f"{colour}_{shape}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = demo.render(colour, shape, rng, size)
            Image.fromarray(image).save(folder / f"{i:05d}.jpg", quality=90)
    return per_class * len(demo.TARGET_CLASSES)


def time_preparation(root: Path, cache: Path) -> tuple[float, float]:
    start = time.perf_counter()
    load_dataset(str(root), image_size=32, cache_dir=cache)
    first = time.perf_counter() - start
    start = time.perf_counter()
    load_dataset(str(root), image_size=32, cache_dir=cache)
    return first, time.perf_counter() - start


def count_search_decodes(root: Path, storage: Path, name: str) -> int:
    """Images opened by the driver and all Ray workers during a 4-trial search."""
    counts = Path(tempfile.mkdtemp())
    env = {**os.environ, "DECODE_COUNT_DIR": str(counts),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE / "decode_counter"),
                                                       os.environ.get("PYTHONPATH")]))}
    # one trial at a time: one trial actor reads the prepared arrays as any number would, and
    # each more one spends seconds of CPU importing torch and timm
    cmd = [sys.executable, str(HERE.parent / "search" / "run.py"), "--strategy", "scratch",
           "--data", str(root), "--backbone", "test_resnet", "--samples", "4", "--max-epochs",
           "1", "--storage", str(storage), "--name", name, "--cache-dir", str(storage / "cache"),
           "--no-dashboard", "--max-concurrent", "1"]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return sum(p.stat().st_size for p in counts.iterdir())


def bare_epoch(model, optimizer, images, labels, batch_size, augment, mean, std, generator):
    model.train()
    order = torch.randperm(len(labels), generator=generator)
    for begin in range(0, len(order), batch_size):
        idx = order[begin : begin + batch_size]
        x = images[idx]
        if augment:
            x = random_flip(random_crop(x, 4))
        x = ((x.float() - mean) / std).contiguous(memory_format=torch.channels_last)
        loss = nn.functional.cross_entropy(model(x), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def time_epochs(images, labels, backbone: str, batch_size: int, repeats: int) -> dict:
    """Median seconds per epoch: harness train_epoch vs bare loop, alternating runs."""
    config = TrialConfig(lr=0.01, batch_size=batch_size, augment="none", weight_decay=1e-4)
    model = build_model(backbone, 10).to(memory_format=torch.channels_last)
    plan = get_strategy("scratch").setup(model, config)
    optimizer = torch.optim.SGD(plan.param_groups, lr=0.01, momentum=0.9)
    normalize = Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    mean, std = normalize.mean, normalize.std
    generator = torch.Generator().manual_seed(0)

    def harness(augment: bool) -> None:
        plan.begin_epoch(model, 0)
        train_epoch(model, optimizer, images, labels, batch_size=batch_size,
                    policy="crop_flip" if augment else "none", normalize=normalize,
                    loss_fn=nn.CrossEntropyLoss(), device=torch.device("cpu"),
                    generator=generator)

    def bare(augment: bool) -> None:
        bare_epoch(model, optimizer, images, labels, batch_size, augment, mean, std, generator)

    results = {}
    for augment in (False, True):
        runs = {"harness": [], "bare": []}
        for i in range(repeats + 1):  # round 0 warms up; then ABBA order cancels drift
            order = [("harness", harness), ("bare", bare)]
            for name, run in order if i % 2 else order[::-1]:
                start = time.perf_counter()
                run(augment)
                if i:
                    runs[name].append(time.perf_counter() - start)
        results[augment] = {k: statistics.median(v) for k, v in runs.items()}
    return results


def measure(per_class: int, size: int, backbone: str, batch_size: int, epoch_images: int,
            repeats: int) -> dict:
    """Every number of the benchmark's table, all measured in this call."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = generate_folder(tmp / "images", per_class, size)
        first, cached = time_preparation(tmp / "images", tmp / "cache")
        search_storage = tmp / "storage"
        cold = count_search_decodes(tmp / "images", search_storage, "cold")
        warm = count_search_decodes(tmp / "images", search_storage, "warm")
        data = load_dataset(str(tmp / "images"), image_size=32)
        images = torch.from_numpy(data.train.images[:epoch_images])
        labels = torch.from_numpy(data.train.labels[:epoch_images])
        epochs = time_epochs(images, labels, backbone, batch_size, repeats)
    return {"images": n, "first": first, "cached": cached, "cold": cold, "warm": warm,
            "epochs": epochs, "backbone": backbone, "epoch_images": len(labels)}


def table(m: dict) -> list[tuple[str, str, str]]:
    """(measure, value, ratio) rows."""
    n = m["images"]
    rows = [
        ("JPEGs in the ImageFolder", f"{n}", ""),
        ("first preparation (decode + resize)", f"{m['first']:.2f} s", ""),
        ("cached preparation", f"{m['cached']:.3f} s", f"{m['first'] / m['cached']:.0f}x faster"),
        ("images decoded, 4-trial search, cold cache", f"{m['cold']}",
         f"{m['cold'] / n:.2f} per image"),
        ("images decoded, 4-trial search, warm cache", f"{m['warm']}",
         f"{m['warm'] / n:.2f} per image"),
    ]
    for augment, label in ((False, "no augmentation"), (True, "crop+flip")):
        h, b = m["epochs"][augment]["harness"], m["epochs"][augment]["bare"]
        rows.append((f"epoch, {label}: harness / bare loop ({m['backbone']}, "
                     f"{m['epoch_images']} images)", f"{h:.2f} s / {b:.2f} s", f"{h / b:.3f}x"))
    return rows


def format_table(rows: list[tuple[str, str, str]]) -> str:
    return tables.format_table(rows, value_width=18)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=500, help="JPEGs per class (10 classes)")
    parser.add_argument("--size", type=int, default=64, help="side of the generated JPEGs")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epoch-images", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    m = measure(args.per_class, args.size, args.backbone, args.batch_size, args.epoch_images,
                args.repeats)
    print(format_table(table(m)))


if __name__ == "__main__":
    main()
