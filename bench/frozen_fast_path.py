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

import timm
import torch
from torch import nn

from trainables.augment import Normalize
from trainables.config import TrialConfig
from trainables.data import load_demo
from trainables.features import compute_features
from trainables.loop import train_epoch
from trainables.models import build_model, create_backbone
from trainables.strategies import get_strategy


def epoch_seconds(net, plan, model, images, labels, normalize, batch_size) -> float:
    optimizer = torch.optim.SGD(plan.param_groups, lr=0.01, momentum=0.9)
    start = time.perf_counter()
    train_epoch(net, optimizer, images, labels, batch_size=batch_size, policy="none",
                normalize=normalize, train_mode=lambda _: plan.begin_epoch(model, 0),
                loss_fn=nn.CrossEntropyLoss(), device=torch.device("cpu"),
                generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    data = load_demo()
    labels = torch.from_numpy(data.train.labels)
    state = create_backbone(args.backbone).state_dict()  # any weights: timing only
    model = build_model(args.backbone, data.num_classes, state=state)
    plan = get_strategy("frozen").setup(model, TrialConfig(lr=0.01, batch_size=args.batch_size,
                                                          augment="none", weight_decay=0.0))
    cfg = timm.data.resolve_data_config({}, model=model)
    normalize = Normalize(cfg["mean"], cfg["std"])
    start = time.perf_counter()
    features = compute_features(args.backbone, state, data)
    once = time.perf_counter() - start
    images, feats = torch.from_numpy(data.train.images), torch.from_numpy(features.train)
    full, fast = [], []
    for _ in range(args.repeats):
        full.append(epoch_seconds(model, plan, model, images, labels, normalize, args.batch_size))
        fast.append(epoch_seconds(model.get_classifier(), plan, model, feats, labels,
                                  nn.Identity(), args.batch_size))
    full_s, fast_s = statistics.median(full), statistics.median(fast)
    print(f"frozen {args.backbone}, {len(labels)} demo images, batch {args.batch_size}, "
          f"median of {args.repeats}")
    print(f"  full frozen forward, one epoch   {full_s:8.3f} s")
    print(f"  head on cached features, epoch   {fast_s:8.3f} s   {full_s / fast_s:.0f}x faster")
    print(f"  features, once per experiment    {once:8.3f} s   (train + val)")


if __name__ == "__main__":
    main()
