"""Datasets as uint8 tensors in memory: resolve a `--data` spec, then hand out train/val splits.

Every source ends as the same `Dataset`: (N, 3, H, W) uint8 arrays per split, int64 labels and
class names. Trials get only train and val (`Dataset.for_search`); the test split stays with the
driver so a search can never read it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
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


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_cached_split(entry: Path) -> tuple[Split, dict] | None:
    """A prepared split and its metadata from a cache entry, or None when there is none."""
    if not (entry / "meta.json").is_file():
        return None
    meta = json.loads((entry / "meta.json").read_text())
    split = Split(np.load(entry / "images.npy"), np.load(entry / "labels.npy"),
                  tuple(meta.pop("paths", ())))
    return split, meta


def write_cached_split(entry: Path, split: Split, **meta: object) -> None:
    """Write a cache entry atomically: built in a temporary folder, then renamed into place,
    so a reader never sees half an entry and a concurrent writer's copy is simply dropped."""
    tmp = entry.with_name(f"{entry.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    np.save(tmp / "images.npy", split.images)
    np.save(tmp / "labels.npy", split.labels)
    (tmp / "meta.json").write_text(json.dumps({"paths": list(split.paths), **meta}))
    if entry.exists():
        shutil.rmtree(tmp)
    else:
        tmp.rename(entry)


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


def load_demo(train_per_class: int = demo.DEFAULT_TRAIN_PER_CLASS, image_size: int = 32,
              seed: int = 0, cache_dir: Path | None = None) -> Dataset:
    """The built-in demo: fixed splits for a seed, plus its disjoint source classes."""
    held_out = max(2, train_per_class // 4)
    key = fingerprint("demo", train_per_class, image_size, seed)
    entry = cache_dir / f"{key}.npz" if cache_dir else None
    cached = dict(np.load(entry)) if entry is not None and entry.is_file() else {}

    def split(classes: tuple, per_class: int, split_id: int) -> Split:
        if f"x{split_id}" not in cached:
            cached[f"x{split_id}"], cached[f"y{split_id}"] = demo.generate(
                classes, per_class, image_size, seed * 1000 + split_id)
        return Split(cached[f"x{split_id}"], cached[f"y{split_id}"])

    source = Dataset(
        name="demo-source",
        classes=demo.class_names(demo.SOURCE_CLASSES),
        train=split(demo.SOURCE_CLASSES, train_per_class, 3),
        val=split(demo.SOURCE_CLASSES, held_out, 4),
        test=None,
        fingerprint=fingerprint("demo-source", key),
    )
    if entry is not None and not entry.is_file():
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f"{entry.stem}.tmp{os.getpid()}.npz")
        np.savez(tmp, **cached)
        tmp.replace(entry)
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


def load_dataset(spec: str, image_size: int = 32, seed: int = 0,
                 split: tuple[float, float, float] = (0.7, 0.15, 0.15),
                 cache_dir: Path | None = None) -> Dataset:
    """Resolve a `--data` spec: `demo`, `demo:N`, `torchvision:NAME`, or an ImageFolder tree.

    With `cache_dir`, prepared images are cached there (under `data/`), and torchvision
    downloads go under `torchvision/`.
    """
    data_cache = cache_dir / "data" if cache_dir else None
    per_class = parse_demo_spec(spec)
    if per_class is not None:
        return load_demo(per_class, image_size, cache_dir=data_cache)
    if spec.startswith("torchvision:"):
        from trainables.tvdata import load_torchvision

        root = (cache_dir or Path.home() / ".cache" / "transfer-search") / "torchvision"
        return load_torchvision(spec.removeprefix("torchvision:"), root, image_size=image_size,
                                seed=seed, split=split, cache_dir=data_cache)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"--data {spec}: no such file or directory")
    if not path.is_dir():
        raise DataError(f"--data {spec}: not a directory (expected an ImageFolder tree)")
    from trainables.imagefolder import load_image_folder

    return load_image_folder(path, image_size=image_size, seed=seed, split=split,
                             cache_dir=data_cache)


def load_pretrain_data(spec: str, image_size: int = 32, seed: int = 0,
                       cache_dir: Path | None = None) -> Dataset:
    """`--pretrain-data`: `demo` (its source classes), a flat folder of images (unlabeled), or
    anything `load_dataset` takes (labeled)."""
    per_class = parse_demo_spec(spec)
    if per_class is not None:
        return load_demo(per_class, image_size,
                         cache_dir=cache_dir / "data" if cache_dir else None).source
    path = Path(spec).expanduser()
    if path.is_dir() and not any(p.is_dir() for p in path.iterdir()):
        from trainables.imagefolder import load_unlabeled

        return load_unlabeled(path, image_size, cache_dir / "data" if cache_dir else None)
    return load_dataset(spec, image_size, seed, cache_dir=cache_dir)
