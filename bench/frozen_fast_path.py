"""Benchmark the frozen-backbone fast path: head on cached features vs the full frozen forward.

    python bench/frozen_fast_path.py

Trains the `frozen` strategy's head for one epoch both ways on the demo's training images, side
by side in this run, and prints the epoch times, their ratio, and the one-time cost of computing
the features (paid once per experiment, shared by every trial without augmentation).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

from trainables.config import TrialConfig
from trainables.data.demo import DEFAULT_TRAIN_PER_CLASS, load_demo
from trainables.features import compute_features
from trainables.loop import train_epoch
from trainables.models import build_model, create_backbone, normalizer
from trainables.strategies import get_strategy


def epoch_seconds(net, plan, model, images, labels, normalize, batch_size) -> float:
    optimizer = torch.optim.SGD(plan.param_groups, lr=0.01, momentum=0.9)
    start = time.perf_counter()
    plan.begin_epoch(model, 0)
    train_epoch(net, optimizer, images, labels, batch_size=batch_size, policy="none",
                normalize=normalize, loss_fn=nn.CrossEntropyLoss(), device=torch.device("cpu"),
                generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - start


def measure(backbone: str, batch_size: int, repeats: int, per_class: int
            ) -> dict[str, float]:
    """Median epoch seconds both ways, and the one-time feature cost, measured in this call."""
    data = load_demo(per_class)
    labels = torch.from_numpy(data.train.labels)
    state = create_backbone(backbone).state_dict()  # any weights: timing only
    model = build_model(backbone, data.num_classes, state=state)
    plan = get_strategy("frozen").setup(model, TrialConfig(lr=0.01, batch_size=batch_size,
                                                          augment="none", weight_decay=0.0))
    start = time.perf_counter()
    features = compute_features(backbone, state, data)
    once = time.perf_counter() - start
    images, feats = torch.from_numpy(data.train.images), torch.from_numpy(features.train)
    full, fast = [], []
    for _ in range(repeats):
        full.append(epoch_seconds(model, plan, model, images, labels, normalizer(model),
                                  batch_size))
        fast.append(epoch_seconds(model.get_classifier(), plan, model, feats, labels,
                                  nn.Identity(), batch_size))
    return {"images": len(labels), "full": statistics.median(full),
            "fast": statistics.median(fast), "once": once}


def format_table(m: dict[str, float], backbone: str, batch_size: int, repeats: int) -> str:
    return "\n".join([
        f"frozen {backbone}, {m['images']} demo images, batch {batch_size}, median of {repeats}",
        f"  full frozen forward, one epoch   {m['full']:8.3f} s",
        f"  head on cached features, epoch   {m['fast']:8.3f} s   "
        f"{m['full'] / m['fast']:.0f}x faster",
        f"  features, once per experiment    {m['once']:8.3f} s   (train + val)",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=DEFAULT_TRAIN_PER_CLASS,
                        help="demo training images per class (10 classes)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    m = measure(args.backbone, args.batch_size, args.repeats, args.per_class)
    print(format_table(m, args.backbone, args.batch_size, args.repeats))


if __name__ == "__main__":
    main()
