"""Benchmark the colorization pretext stage's training throughput against the supervised stage.

    python bench/pretext_throughput.py --image-size 64

Both stages train the same backbone on the same images, at the same size and batch, through
the same loop (trainables.loop.run_epoch): the split held on the device, batches sliced there,
bf16 autocast on a GPU, channels-last inputs, the running loss kept on the device. The
colorization stage adds a U-Net decoder and converts each batch to Lab on the device; the
supervised stage augments (crop and flip). Each stage first runs one epoch to warm up (model
build, allocator, cuDNN autotuning), then `--epochs` epochs are timed; images per second are
training images over those seconds. Printed: each stage's images per second, and their ratio.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from bench.tables import format_table
from trainables.colorization import train_colorization
from trainables.data.dataset import Split
from trainables.data.demo import load_demo
from trainables.device import pick_device
from trainables.pretrain import StageConfig, train_supervised


def images_per_second(train, epochs: int, n: int) -> float:
    """Training images per second over `epochs` epochs, after one warm-up epoch."""
    train(1)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    train(epochs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return epochs * n / (time.perf_counter() - start)


def measure(backbone: str = "resnet18", image_size: int = 64, images: int = 3000,
            batch_size: int = 128, epochs: int = 3, threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    source = load_demo(image_size=image_size).source  # labeled: the supervised stage's input
    source = replace(source, train=Split(source.train.images[:images],
                                         source.train.labels[:images]))
    images = source.train.images

    # no val_log: neither stage measures itself on held-out images, both time training alone
    def supervised(e: int) -> None:
        train_supervised(backbone, source, StageConfig(epochs=e, batch_size=batch_size))

    def colorization(e: int) -> None:
        train_colorization(backbone, images, StageConfig(epochs=e, batch_size=batch_size))

    return {"backbone": backbone, "image_size": image_size, "images": len(images),
            "batch_size": batch_size, "device": pick_device().type,
            "supervised": images_per_second(supervised, epochs, len(images)),
            "colorization": images_per_second(colorization, epochs, len(images))}


def table(m: dict) -> list[tuple[str, str, str]]:
    what = (f"{m['backbone']}, {m['images']} images at {m['image_size']} px, batch "
            f"{m['batch_size']}, {m['device']}")
    ratio = m["colorization"] / m["supervised"]
    return [(f"supervised stage ({what})", f"{m['supervised']:.0f} img/s", ""),
            (f"colorization stage ({what})", f"{m['colorization']:.0f} img/s",
             f"{ratio:.2f}x supervised")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=3000,
                        help="the first N of the demo's 3,000 source training images")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, as a trial has")
    args = parser.parse_args()
    print(format_table(table(measure(args.backbone, args.image_size, args.images,
                                     args.batch_size, args.epochs, args.threads))))


if __name__ == "__main__":
    main()
