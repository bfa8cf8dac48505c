"""The in-memory dataset every source ends as, and its entries in the cache.

A `Dataset` holds (N, 3, H, W) uint8 arrays per split, int64 labels and class names. Trials get
only train and val (`Dataset.for_search`); the test split stays with the driver so a search can
never read it. The loaders (demo, ImageFolder, torchvision sets) import this module; none of
them imports another loader's module.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from trainables.cache import atomic_dir, fingerprint


class DataError(ValueError):
    """Bad `--data` input: the message is shown to the user as is."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, 3, H, W) uint8
    labels: np.ndarray  # (N,) int64
    paths: tuple[str, ...] = ()  # where each image came from, when it came from a file

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: np.ndarray) -> Split:
        paths = tuple(self.paths[i] for i in idx) if self.paths else ()
        return Split(self.images[idx], self.labels[idx], paths)


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


def read_cached_split(entry: Path) -> tuple[Split, dict] | None:
    """A prepared split and its metadata from a cache entry, or None when there is none."""
    if not (entry / "meta.json").is_file():
        return None
    meta = json.loads((entry / "meta.json").read_text())
    split = Split(np.load(entry / "images.npy"), np.load(entry / "labels.npy"),
                  tuple(meta.pop("paths", ())))
    return split, meta


def write_cached_split(entry: Path, split: Split, **meta: object) -> None:
    """Write a cache entry as one directory, renamed into place when complete."""
    with atomic_dir(entry) as tmp:
        np.save(tmp / "images.npy", split.images)
        np.save(tmp / "labels.npy", split.labels)
        (tmp / "meta.json").write_text(json.dumps({"paths": list(split.paths), **meta}))


def cached_split(cache_dir: Path | None, key: str, make: Callable[[], tuple[Split, dict]]
                 ) -> tuple[Split, dict]:
    """The split cached under `key`, else `make()`'s split and metadata, then cached."""
    if cache_dir is not None:
        hit = read_cached_split(cache_dir / key)
        if hit is not None:
            return hit
    split, meta = make()
    if cache_dir is not None:
        write_cached_split(cache_dir / key, split, **meta)
    return split, meta


def stratified_split(
    labels: np.ndarray, fractions: tuple[float, float, float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays for train/val/test, each class split by the same fractions."""
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_val = max(1, round(len(idx) * fractions[1]))
        n_test = max(1, round(len(idx) * fractions[2])) if fractions[2] > 0 else 0
        if len(idx) - n_val - n_test < 1:
            raise DataError(f"class {label} has {len(idx)} images: too few to split")
        parts[1].append(idx[:n_val])
        parts[2].append(idx[n_val : n_val + n_test])
        parts[0].append(idx[n_val + n_test :])
    return tuple(np.sort(np.concatenate(p)) for p in parts)  # type: ignore[return-value]


def assemble(name: str, classes: tuple[str, ...], parts: dict[str, Split], seed: int,
             fractions: tuple[float, float, float], key: str) -> Dataset:
    """A Dataset from prepared parts: `all` is split three ways, a missing `val` comes from
    `train`, and given `train`/`val`/`test` parts are used as they are."""
    if "all" in parts:
        idx = stratified_split(parts["all"].labels, fractions, seed)
        parts = dict(zip(("train", "val", "test"), (parts["all"].take(i) for i in idx),
                         strict=True))
    elif "val" not in parts:
        whole = parts["train"]
        held = (1 - fractions[1], fractions[1], 0.0)
        train_idx, val_idx, _ = stratified_split(whole.labels, held, seed)
        parts = {**parts, "train": whole.take(train_idx), "val": whole.take(val_idx)}
    return Dataset(name=name, classes=classes, train=parts["train"], val=parts["val"],
                   test=parts.get("test"), fingerprint=fingerprint(key, seed, fractions))
