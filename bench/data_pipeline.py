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

from trainables import demo
from trainables.augment import Normalize, random_crop, random_flip
from trainables.config import TrialConfig
from trainables.data import load_dataset
from trainables.loop import train_epoch
from trainables.models import build_model
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
    cmd = [sys.executable, str(HERE.parent / "search" / "run.py"), "--strategy", "scratch",
           "--data", str(root), "--backbone", "test_resnet", "--samples", "4", "--max-epochs",
           "1", "--storage", str(storage), "--name", name, "--cache-dir", str(storage / "cache")]
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
    results = {}
    def harness(augment: bool) -> None:
        train_epoch(model, optimizer, images, labels, batch_size=batch_size,
                    policy="crop_flip" if augment else "none", normalize=normalize,
                    train_mode=lambda m: plan.begin_epoch(m, 0), loss_fn=nn.CrossEntropyLoss(),
                    device=torch.device("cpu"), generator=generator)

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

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = generate_folder(tmp / "images", args.per_class, args.size)
        first, cached = time_preparation(tmp / "images", tmp / "storage" / "_cache" / "data")
        search_storage = tmp / "storage2"
        cold = count_search_decodes(tmp / "images", search_storage, "cold")
        warm = count_search_decodes(tmp / "images", search_storage, "warm")
        data = load_dataset(str(tmp / "images"), image_size=32)
        images = torch.from_numpy(data.train.images[: args.epoch_images])
        labels = torch.from_numpy(data.train.labels[: args.epoch_images])
        epochs = time_epochs(images, labels, args.backbone, args.batch_size, args.repeats)

    rows = [
        ("JPEGs in the ImageFolder", f"{n}", ""),
        ("first preparation (decode + resize)", f"{first:.2f} s", ""),
        ("cached preparation", f"{cached:.3f} s", f"{first / cached:.0f}x faster"),
        ("images decoded, 4-trial search, cold cache", f"{cold}", f"{cold / n:.2f} per image"),
        ("images decoded, 4-trial search, warm cache", f"{warm}", f"{warm / n:.2f} per image"),
    ]
    for augment, label in ((False, "no augmentation"), (True, "crop+flip")):
        h, b = epochs[augment]["harness"], epochs[augment]["bare"]
        rows.append((f"epoch, {label}: harness / bare loop ({args.backbone}, "
                     f"{len(labels)} images)", f"{h:.2f} s / {b:.2f} s", f"{h / b:.3f}x"))
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>18}  ratio")
    for name, value, ratio in rows:
        print(f"{name:<{width}}  {value:>18}  {ratio}")


if __name__ == "__main__":
    main()
