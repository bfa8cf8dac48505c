"""Does colorization pretraining pay, done as the literature does it? The pretext stage's loss,
early stopping and pretext data, each measured by the same downstream training.

    python bench/colorization.py --seeds 0 1 2

For each dataset (the CIFAR-10 slice beside the repository, and the demo) and seed, each
configuration trains a colorization stage, then the same fixed downstream runs from its encoder:
the `colorization` strategy fine-tuned, and a linear probe on the frozen encoder (`frozen`);
`scratch` is the baseline, trained the same way from random weights. All report test accuracy
(the fixed settings are not chosen on it), and each stage its held-out ab error (Lab units) at
its kept epoch. The configurations change one thing at a time from today's default:

- `l1`: L1 regression, every epoch, the last kept (no early stopping), the target's own images;
- `classification`: Zhang et al.'s rebalanced classification over ab bins instead;
- `l1 + early stopping`: --pretrain-patience 3, the best epoch kept;
- `l1 + early stopping + more images`: pretext on about 10x the target's images;
- `all three`: classification, early stopping and the larger pretext set.

The larger pretext set is the target's training images plus the demo's source images (unlabeled)
on the demo (11x at the default 30 images per class). On the CIFAR-10 slice it would be
CIFAR-10's other 45,000 training images, which cannot be downloaded offline: `--cifar-more DIR`
names a folder of them, else those configurations are skipped there and the table says so.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.demo_transfer import train_target
from bench.recipe import CIFAR, interval
from trainables.config import TrialConfig
from trainables.data.dataset import Dataset, Split
from trainables.pretrain import Stage, StageConfig, run_stage

# (name, loss, patience, more images)
CONFIGS = (
    ("l1", "l1", 0, False),
    ("classification", "classification", 0, False),
    ("l1 + early stopping", "l1", 3, False),
    ("l1 + early stopping + more images", "l1", 3, True),
    ("all three", "classification", 3, True),
)
# one fixed downstream setting per strategy, as bench/demo_transfer.py's
SETTINGS = {
    "colorization": TrialConfig(lr=0.05, batch_size=32, augment="crop_flip", weight_decay=5e-4,
                                lr_mult=0.2),
    "frozen": TrialConfig(lr=0.1, batch_size=32, augment="crop_flip", weight_decay=5e-4),
    "scratch": TrialConfig(lr=0.05, batch_size=32, augment="crop_flip", weight_decay=5e-4),
}


def datasets(cifar: Path, cifar_more: Path | None, seed: int, per_class: int,
             extra: int | None) -> dict[str, tuple[Dataset, np.ndarray | None]]:
    """name -> (the dataset, the extra unlabeled pretext images, at most `extra` of them, or
    None where there are none)."""
    from trainables.data.demo import load_demo
    from trainables.data.load import load_dataset

    demo = load_demo(per_class, 32, seed)
    found = {"demo": (demo, np.asarray(demo.source.train.images)[:extra])}
    if cifar.is_dir():
        data = load_dataset(str(cifar), image_size=32, seed=seed)
        more = load_dataset(str(cifar_more), 32, seed).train.images[:extra] if cifar_more \
            else None
        found["CIFAR-10 slice"] = (data, None if more is None else np.asarray(more))
    return found


def pretext_set(data: Dataset, more: np.ndarray | None) -> Dataset:
    """The target's training images, with `more` after them; the target's val images held out."""
    train = np.asarray(data.train.images)
    if more is not None:
        train = np.concatenate([train, more])
    return replace(data.for_search(), train=Split(train, np.zeros(len(train), np.int64)))


def downstream(data: Dataset, weights, backbone: str, epochs: int, seed: int) -> dict:
    """Test accuracy of the fine-tuned encoder and of its linear probe (scratch: weights None)."""
    tested = replace(data.for_search(), val=data.test)  # train on train, report test
    if weights is None:
        return {"scratch": train_target("scratch", SETTINGS["scratch"], tested, backbone, None,
                                        epochs, seed)}
    return {name: train_target(name, SETTINGS[name], tested, backbone, weights, epochs, seed)
            for name in ("colorization", "frozen")}


def measure(backbone: str, seeds: list[int], pretrain_epochs: int, epochs: int,
            cifar: Path, cifar_more: Path | None, per_class: int, extra: int | None) -> dict:
    """{dataset: {row: {"acc": [...], "probe": [...], "ab": [...], "kept": [...]}}}."""
    results: dict = {}
    for seed in seeds:
        for name, (data, more) in datasets(cifar, cifar_more, seed, per_class, extra).items():
            rows = results.setdefault(name, {"sizes": (len(data.train), None if more is None
                                                       else len(more) + len(data.train))})
            rows.setdefault("scratch", {"acc": []})["acc"].append(
                downstream(data, None, backbone, epochs, seed)["scratch"])
            for label, loss, patience, bigger in CONFIGS:
                row = rows.setdefault(label, {"acc": [], "probe": [], "ab": [], "kept": []})
                if bigger and more is None:
                    continue
                start = time.perf_counter()
                pretext = pretext_set(data, more if bigger else None)
                config = StageConfig(epochs=pretrain_epochs, seed=seed, loss=loss,
                                     patience=patience)
                weights, record = run_stage(Stage("colorization", backbone, "", config), pretext)
                got = downstream(data, weights, backbone, epochs, seed)
                row["acc"].append(got["colorization"])
                row["probe"].append(got["frozen"])
                row["ab"].append(record["val_l1"][record["best_epoch"] - 1])
                row["kept"].append(f"{record['best_epoch']}/{record['epochs_run']}")
                print(f"{name} seed {seed} {label}: fine-tuned {got['colorization']:.3f}, probe "
                      f"{got['frozen']:.3f}, ab error {row['ab'][-1]:.2f}, kept epoch "
                      f"{row['kept'][-1]} ({time.perf_counter() - start:.0f} s)",
                      file=sys.stderr, flush=True)  # progress; the table goes to stdout
    return results


def table(results: dict) -> str:
    lines = []
    for name, rows in results.items():
        own, more = rows["sizes"]
        lines += ["", f"{name}: {own} target training images"
                  + (f", {more} with the larger pretext set" if more else
                     ", no larger pretext set offline (--cifar-more DIR)"),
                  f"{'configuration':<36}{'fine-tuned test acc':>26}{'linear probe':>26}"
                  f"{'held-out ab error':>19}  kept epochs"]
        scratch = rows["scratch"]["acc"]
        lines.append(f"{'scratch':<36}{interval(scratch):>26}")
        for label, *_ in CONFIGS:
            row = rows[label]
            if not row["acc"]:
                lines.append(f"{label:<36}{'not measured':>26}")
                continue
            gain = 100 * (np.mean(row["acc"]) - np.mean(scratch))
            lines.append(f"{label:<36}{interval(row['acc']):>26}{interval(row['probe']):>26}"
                         f"{np.mean(row['ab']):>19.2f}  {' '.join(row['kept'])}"
                         f"   ({gain:+.1f} pts vs scratch)")
    return "\n".join(lines[1:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=8, help="downstream epochs")
    parser.add_argument("--per-class", type=int, default=30,
                        help="demo training images per class (30: its 3,000 source images "
                        "make the larger pretext set 11x the target's)")
    parser.add_argument("--extra-images", type=int, default=None,
                        help="at most this many images added for the larger pretext set")
    parser.add_argument("--cifar", type=Path, default=CIFAR, help="the CIFAR-10 slice")
    parser.add_argument("--cifar-more", type=Path, default=None,
                        help="unlabeled CIFAR-10 images for the larger pretext set")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = measure(args.backbone, args.seeds, args.pretrain_epochs, args.epochs, args.cifar,
                      args.cifar_more, args.per_class, args.extra_images)
    print(f"{args.backbone}, pretext {args.pretrain_epochs} epochs (early stopping: patience "
          f"3 on held-out ab error), downstream {args.epochs} epochs, seeds {args.seeds}, test "
          f"accuracy mean [95% interval]; {time.perf_counter() - start:.0f} s")
    print(table(results))


if __name__ == "__main__":
    main()
