"""ImageFolder trees -> `Dataset`: each image decoded once, converted to RGB and resized.

Two layouts: class folders (split here, stratified by seed), or `train/`, `val/` (or `valid/`)
and `test/` folders of class folders, used as given. Resizing takes the shorter side to
`image_size`, then a centre crop, so every image keeps its aspect ratio.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS

from trainables.data import DataError, Dataset, Split, fingerprint

log = logging.getLogger(__name__)

SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid"), "test": ("test",)}


def list_classes(root: Path) -> dict[str, list[Path]]:
    """Class name -> sorted image paths; non-image files are ignored, empty classes are errors."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/<image>)")
    classes = {}
    for class_dir in class_dirs:
        files = sorted(
            p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS
        )
        if not files:
            raise DataError(f"{class_dir}: class folder has no images")
        classes[class_dir.name] = files
    return classes


def decode(path: Path, image_size: int) -> np.ndarray | None:
    """(3, S, S) uint8, or None for a truncated or corrupt file."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (image_size, image_size))  # JPEG: decode at a reduced scale
            rgb = image.convert("RGB")
            scale = image_size / min(rgb.size)
            width, height = max(image_size, round(rgb.width * scale)), max(
                image_size, round(rgb.height * scale)
            )
            rgb = rgb.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
            left, top = (width - image_size) // 2, (height - image_size) // 2
            rgb = rgb.crop((left, top, left + image_size, top + image_size))
            return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None


def decode_all(files: list[Path], labels: list[int], image_size: int) -> tuple[Split, list[Path]]:
    images, kept, bad = [], [], []
    for path, label in zip(files, labels, strict=True):
        array = decode(path, image_size)
        if array is None:
            bad.append(path)
        else:
            images.append(array)
            kept.append(label)
    stacked = np.stack(images) if images else np.empty((0, 3, image_size, image_size), np.uint8)
    return Split(stacked, np.asarray(kept, dtype=np.int64)), bad


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


def _given_splits(root: Path) -> dict[str, Path] | None:
    found = {}
    for split, names in SPLIT_DIRS.items():
        for name in names:
            if (root / name).is_dir():
                found[split] = root / name
    return found if {"train", "val"} <= found.keys() or {"train", "test"} <= found.keys() else None


def load_image_folder(
    root: Path, image_size: int = 32, seed: int = 0,
    split: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> Dataset:
    given = _given_splits(root)
    listings = {name: list_classes(path) for name, path in (given or {"all": root}).items()}
    class_sets = {name: set(classes) for name, classes in listings.items()}
    reference = next(iter(class_sets.values()))
    for name, names in class_sets.items():
        if names != reference:
            raise DataError(
                f"{root}: class folders differ between splits: {name} lacks "
                f"{sorted(reference - names)} and adds {sorted(names - reference)}"
            )
    classes = tuple(sorted(reference))
    if len(classes) < 2:
        raise DataError(f"{root}: only one class ({classes[0]}); classification needs two or more")
    index = {name: i for i, name in enumerate(classes)}
    splits, bad = {}, []
    for name, listing in listings.items():
        files = [f for c in classes for f in listing[c]]
        labels = [index[c] for c in classes for _ in listing[c]]
        splits[name], skipped = decode_all(files, labels, image_size)
        bad += skipped
    if bad:
        shown = ", ".join(str(p) for p in bad[:5])
        log.warning("skipped %d unreadable images (%s%s)", len(bad), shown,
                    ", ..." if len(bad) > 5 else "")
    if given is None:
        whole = splits.pop("all")
        parts = stratified_split(whole.labels, split, seed)
        for name, idx in zip(("train", "val", "test"), parts, strict=True):
            splits[name] = Split(whole.images[idx], whole.labels[idx])
    elif "val" not in splits:  # train/ and test/ given: hold out val from train
        whole = splits["train"]
        train_idx, val_idx, _ = stratified_split(whole.labels, (1 - split[1], split[1], 0), seed)
        splits["train"] = Split(whole.images[train_idx], whole.labels[train_idx])
        splits["val"] = Split(whole.images[val_idx], whole.labels[val_idx])
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns)
             for listing in listings.values() for files in listing.values() for f in files]
    return Dataset(
        name=root.name, classes=classes, train=splits["train"], val=splits["val"],
        test=splits.get("test"), fingerprint=fingerprint("imagefolder", stats, image_size, seed,
                                                         split),
    )
