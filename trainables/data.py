"""Datasets as uint8 tensors in memory: resolve a `--data` spec, then hand out train/val splits.

Every source ends as the same `Dataset`: (N, 3, H, W) uint8 arrays per split, int64 labels and
class names. Trials get only train and val (`Dataset.for_search`); the test split stays with the
driver so a search can never read it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from trainables import demo


class DataError(ValueError):
    """Bad `--data` input: the message is shown to the user as is."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, 3, H, W) uint8
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    name: str
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split | None
    fingerprint: str
    source: Dataset | None = None  # labeled source set for the `supervised` stage (demo)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])

    def for_search(self) -> Dataset:
        """The same dataset without its test split and source set: what trials receive."""
        return replace(self, test=None, source=None)


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_demo(train_per_class: int = demo.DEFAULT_TRAIN_PER_CLASS, image_size: int = 32,
              seed: int = 0) -> Dataset:
    """The built-in demo: fixed splits for a seed, plus its disjoint source classes."""
    held_out = max(2, train_per_class // 4)

    def split(classes: tuple, per_class: int, split_id: int) -> Split:
        images, labels = demo.generate(classes, per_class, image_size, seed * 1000 + split_id)
        return Split(images, labels)

    key = fingerprint("demo", train_per_class, image_size, seed)
    source = Dataset(
        name="demo-source",
        classes=demo.class_names(demo.SOURCE_CLASSES),
        train=split(demo.SOURCE_CLASSES, train_per_class, 3),
        val=split(demo.SOURCE_CLASSES, held_out, 4),
        test=None,
        fingerprint=fingerprint("demo-source", key),
    )
    return Dataset(
        name="demo" if train_per_class == demo.DEFAULT_TRAIN_PER_CLASS
        else f"demo:{train_per_class}",
        classes=demo.class_names(demo.TARGET_CLASSES),
        train=split(demo.TARGET_CLASSES, train_per_class, 0),
        val=split(demo.TARGET_CLASSES, held_out, 1),
        test=split(demo.TARGET_CLASSES, held_out, 2),
        fingerprint=key,
        source=source,
    )


def parse_demo_spec(spec: str) -> int | None:
    """`demo` -> default size, `demo:N` -> N training images per class, else None."""
    if spec == "demo":
        return demo.DEFAULT_TRAIN_PER_CLASS
    if spec.startswith("demo:"):
        count = spec.removeprefix("demo:")
        if not count.isdigit() or int(count) < 4:
            raise DataError(f"--data {spec}: expected demo:N with N >= 4 images per class")
        return int(count)
    return None


def load_dataset(spec: str, image_size: int = 32, seed: int = 0) -> Dataset:
    """Resolve a `--data` spec: `demo`, `demo:N`, or an ImageFolder directory."""
    per_class = parse_demo_spec(spec)
    if per_class is not None:
        return load_demo(per_class, image_size)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"--data {spec}: no such file or directory")
    if not path.is_dir():
        raise DataError(f"--data {spec}: not a directory (expected an ImageFolder tree)")
    from trainables.imagefolder import load_image_folder

    return load_image_folder(path, image_size=image_size, seed=seed)
