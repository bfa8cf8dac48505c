"""ImageFolder trees -> `Dataset`: each image decoded once, converted to RGB and resized.

Two layouts: class folders (split here, stratified by seed), or `train/`, `val/` (or `valid/`)
and `test/` folders of class folders, used as given. Resizing takes the shorter side to
`image_size`, then a centre crop, so every image keeps its aspect ratio.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS

from trainables.cache import fingerprint
from trainables.data.dataset import DataError, Dataset, Split, assemble, cached_split

log = logging.getLogger(__name__)

SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid"), "test": ("test",)}


@dataclass(frozen=True)
class ImageFile:
    path: str  # a string: sorting and hashing thousands of Path objects is the slow part
    size: int
    mtime_ns: int


def scan_images(folder: Path) -> list[ImageFile]:
    """Image files under `folder`, sorted, each stat-ed once (the cache key needs size + mtime)."""
    found, stack = [], [str(folder)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir():
                    stack.append(entry.path)
                elif entry.name[entry.name.rfind("."):].lower() in IMG_EXTENSIONS:
                    st = entry.stat()
                    found.append(ImageFile(entry.path, st.st_size, st.st_mtime_ns))
    return sorted(found, key=lambda f: f.path)


def list_classes(root: Path) -> dict[str, list[ImageFile]]:
    """Class name -> sorted image files; non-image files are ignored, empty classes are errors."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/<image>)")
    classes = {}
    for class_dir in class_dirs:
        files = scan_images(class_dir)
        if not files:
            raise DataError(f"{class_dir}: class folder has no images")
        classes[class_dir.name] = files
    return classes


DECODED = 0  # images decoded by this process, for benchmarks and tests


def to_array(image: Image.Image, image_size: int) -> np.ndarray:
    """RGB, shorter side resized to `image_size`, centre crop: (3, S, S) uint8."""
    image.draft("RGB", (image_size, image_size))  # JPEG: decode at a reduced scale when large
    rgb = image.convert("RGB")
    scale = image_size / min(rgb.size)
    width = max(image_size, round(rgb.width * scale))
    height = max(image_size, round(rgb.height * scale))
    rgb = rgb.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
    left, top = (width - image_size) // 2, (height - image_size) // 2
    rgb = rgb.crop((left, top, left + image_size, top + image_size))
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def decode(path: str | Path, image_size: int) -> np.ndarray | None:
    """(3, S, S) uint8, or None for a truncated or corrupt file."""
    global DECODED
    DECODED += 1
    try:
        with Image.open(path) as image:
            return to_array(image, image_size)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None


def decode_all(files: list[str], labels: list[int], image_size: int) -> tuple[Split, dict]:
    """Decode every file; returns the split and {"unreadable": paths that failed}."""
    images, kept, bad = [], [], []
    for path, label in zip(files, labels, strict=True):
        array = decode(path, image_size)
        if array is None:
            bad.append(path)
        else:
            images.append(array)
            kept.append((label, path))
    stacked = np.stack(images) if images else np.empty((0, 3, image_size, image_size), np.uint8)
    labels_kept = np.asarray([label for label, _ in kept], dtype=np.int64)
    return Split(stacked, labels_kept, tuple(path for _, path in kept)), {"unreadable": bad}


def prepare_images(files: list[ImageFile], labels: list[int], image_size: int,
                   cache_dir: Path | None) -> tuple[Split, list[str], str]:
    """Decoded images of `files`, from the cache when the same files were prepared before.

    The key covers each file's path, size and mtime, the labels and the image size, so an edited,
    added or removed file, or another size, prepares anew. Returns (split, unreadable paths,
    cache key).
    """
    key = content_key(files, labels, image_size)
    split, meta = cached_split(cache_dir, key,
                               lambda: decode_all([f.path for f in files], labels, image_size))
    return split, meta["unreadable"], key


def content_key(files: list[ImageFile], labels: list[int], image_size: int) -> str:
    stats = [(f.path, f.size, f.mtime_ns) for f in files]
    return fingerprint("images-v1", stats, labels, image_size)


def _given_splits(root: Path) -> dict[str, Path] | None:
    found = {}
    for split, names in SPLIT_DIRS.items():
        for name in names:
            if (root / name).is_dir():
                found[split] = root / name
    return found if {"train", "val"} <= found.keys() or {"train", "test"} <= found.keys() else None


def load_image_folder(
    root: Path, image_size: int = 32, seed: int = 0,
    split: tuple[float, float, float] = (0.7, 0.15, 0.15), cache_dir: Path | None = None,
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
    parts, bad, keys = {}, [], []
    for name, listing in listings.items():
        files = [f for c in classes for f in listing[c]]
        labels = [index[c] for c in classes for _ in listing[c]]
        parts[name], unreadable, key = prepare_images(files, labels, image_size, cache_dir)
        bad += unreadable
        keys.append(key)
    warn_unreadable(bad)
    return assemble(root.name, classes, parts, seed, split, fingerprint("imagefolder", keys))


def warn_unreadable(paths: list[str]) -> None:
    if paths:
        shown = ", ".join(paths[:5])
        log.warning("skipped %d unreadable images (%s%s)", len(paths), shown,
                    ", ..." if len(paths) > 5 else "")


def load_unlabeled(root: Path, image_size: int = 32, cache_dir: Path | None = None) -> Dataset:
    """Every image under `root` (flat or in class folders), labels ignored: pretext data."""
    files = scan_images(root)
    if not files:
        raise DataError(f"{root}: no images")
    split, bad, key = prepare_images(files, [0] * len(files), image_size, cache_dir)
    warn_unreadable(bad)
    empty = Split(split.images[:0], split.labels[:0])
    return Dataset(name=root.name, classes=("unlabeled",), train=split, val=empty, test=None,
                   fingerprint=fingerprint("unlabeled", key))
