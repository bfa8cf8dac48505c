"""ImageFolder trees -> `Dataset`: each image decoded once, converted to RGB and resized.

Images are decoded a chunk at a time, on every core, straight into the cache entry's .npy file,
and read back mapped: preparing 100,000 images takes the memory of a few chunks, not of the
images (bench/big_data.py measures it).

Two layouts: class folders (split here, stratified by seed), or `train/`, `val/` (or `valid/`)
and `test/` folders of class folders, used as given. Resizing takes the shorter side to
`image_size`, then a centre crop, so every image keeps its aspect ratio.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS

from trainables.cache import fingerprint
from trainables.data.dataset import (
    DataError,
    Dataset,
    ImageRows,
    Split,
    assemble,
    chunk_rows,
    streamed_split,
)

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
    """(3, S, S) uint8, or None for a truncated, corrupt, empty or huge file."""
    global DECODED
    DECODED += 1
    try:
        with Image.open(path) as image:
            return to_array(image, image_size)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, ZeroDivisionError,
            Image.DecompressionBombError):  # 0 px; over twice PIL's MAX_IMAGE_PIXELS
        return None


def decode_chunk(paths: list[str], image_size: int) -> tuple[np.ndarray, list[int]]:
    """The readable images of `paths`, stacked in order, and the positions of the others."""
    out = np.empty((len(paths), 3, image_size, image_size), np.uint8)
    kept, bad = 0, []
    for i, path in enumerate(paths):
        array = decode(path, image_size)
        if array is None:
            bad.append(i)
        else:
            out[kept] = array
            kept += 1
    return out[:kept], bad


def available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):  # the cores this process may run on
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def decoded_chunks(chunks: list[list[str]], image_size: int
                   ) -> Iterator[tuple[np.ndarray, list[int]]]:
    """`decode_chunk` of each chunk, in order: on a pool of forked processes, one per core,
    when there are several chunks and cores, else here."""
    workers = min(len(chunks), available_cores())
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        yield from (decode_chunk(chunk, image_size) for chunk in chunks)
        return
    # fork: a worker starts at once with this module loaded (spawn would import torch anew in
    # each), and only decodes. One chunk per worker and one more are in flight: enough to keep
    # every worker busy, and all the decoded chunks this process ever holds at once.
    # Frozen, this process's objects are out of the workers' garbage collections, which would
    # otherwise write to (and so copy) every page of the heap they share with it.
    gc.freeze()
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            pending: deque = deque()
            for chunk in chunks:
                pending.append((len(chunk), pool.submit(decode_chunk, chunk, image_size)))
                if len(pending) > workers:
                    yield _oldest(pending)
            while pending:
                yield _oldest(pending)
    finally:
        gc.unfreeze()


def _oldest(pending: deque) -> tuple[np.ndarray, list[int]]:
    global DECODED
    count, future = pending.popleft()
    result = future.result()
    DECODED += count  # counted here: a worker's count is in its own copy of this module
    return result


def decode_all(files: list[str], labels: list[int], image_size: int, out: Path | None = None,
               rows_per_chunk: int | None = None) -> tuple[Split, dict]:
    """Decode every file, in order and chunk by chunk, into the .npy file `out` (else into
    memory); returns the split and {"unreadable": paths that failed}. Only a few chunks are
    ever in memory, however many files there are."""
    step = rows_per_chunk or chunk_rows(image_size)
    chunks = [files[i : i + step] for i in range(0, len(files), step)]
    kept, bad = [], []
    with ImageRows(len(files), image_size, out) as rows:
        for first, (block, failed) in zip(range(0, len(files), step),
                                           decoded_chunks(chunks, image_size), strict=True):
            rows.append(block)
            failed = {first + i for i in failed}
            for i in range(first, min(first + step, len(files))):
                (bad if i in failed else kept).append(i)
        images = rows.finish()
    labels_kept = np.asarray([labels[i] for i in kept], dtype=np.int64)
    return (Split(images, labels_kept, tuple(files[i] for i in kept)),
            {"unreadable": [files[i] for i in bad]})


def prepare_images(files: list[ImageFile], labels: list[int], image_size: int,
                   cache_dir: Path | None) -> tuple[Split, list[str], str]:
    """Decoded images of `files`, from the cache when the same files were prepared before.

    The key covers each file's path, size and mtime, the labels and the image size, so an edited,
    added or removed file, or another size, prepares anew. Returns (split, unreadable paths,
    cache key); the split's images are mapped from the cache entry when there is a cache.
    """
    key = content_key(files, labels, image_size)
    paths = [f.path for f in files]
    split, meta = streamed_split(cache_dir, key,
                                 lambda out: decode_all(paths, labels, image_size, out))
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
        hint = ""
        if any(classes[0] in names for names in SPLIT_DIRS.values()):
            hint = (f"; its {classes[0]}/ folder has no val/ or test/ folder beside it: add one, "
                    f"or give --data {root / classes[0]}")
        raise DataError(f"{root}: only one class ({classes[0]}); classification needs two or "
                        f"more{hint}")
    index = {name: i for i, name in enumerate(classes)}
    parts, bad, keys = {}, [], []
    for name, listing in listings.items():
        files = [f for c in classes for f in listing[c]]
        labels = [index[c] for c in classes for _ in listing[c]]
        parts[name], unreadable, key = prepare_images(files, labels, image_size, cache_dir)
        check_decodable(given[name] if given else root, classes, listing, parts[name],
                        unreadable, given is not None)
        bad += unreadable
        keys.append(key)
    try:
        data = assemble(root.name, classes, parts, seed, split,
                        fingerprint("imagefolder", keys), cache_dir)
    except DataError as error:  # one line: the skipped files in it, not in a warning before it
        if not bad:
            raise
        raise DataError(f"{error} ({len(bad)} unreadable image files were skipped, e.g. "
                        f"{bad[0]})") from None
    warn_unreadable(bad)
    return data


def none_decodable(folder: Path, unreadable: list[str]) -> DataError:
    """The error for a folder whose every image file was skipped as unreadable."""
    return DataError(
        f"{folder}: no image can be decoded: all {len(unreadable)} image files are corrupt or "
        f"truncated and were skipped (e.g. {unreadable[0]}); remove or replace the corrupt "
        "files")


def check_decodable(folder: Path, classes: tuple[str, ...], listing: dict[str, list[ImageFile]],
                    split: Split, unreadable: list[str], given: bool) -> None:
    """Every class of `folder` keeps an image once its unreadable files are skipped: a class
    with none would be a label that no image teaches (or, in val or test, that none measures),
    and a folder with none at all has nothing to split."""
    if not unreadable:
        return
    counts = np.bincount(split.labels, minlength=len(classes))
    empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
    if not empty:
        return
    if len(split) == 0:
        raise none_decodable(folder, unreadable)
    files = sum(len(listing[c]) for c in empty)
    if len(empty) == 1:
        which, their, drop = f"{folder / empty[0]}: class folder has", "its", "the class folder"
    else:
        names = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        which, their, drop = (f"{folder}: class folders {names} have", "their",
                              "those class folders")
    more = f" ({len(unreadable)} skipped in all)" if len(unreadable) > files else ""
    where = " from every split folder" if given else ""
    raise DataError(
        f"{which} no decodable images: all {files} of {their} files are corrupt or truncated "
        f"and were skipped{more}; remove or replace the corrupt files, or drop {drop}{where}")


def warn_unreadable(paths: list[str]) -> None:
    if paths:
        shown = ", ".join(paths[:5])
        log.warning("skipped %d unreadable images (%s%s)", len(paths), shown,
                    ", ..." if len(paths) > 5 else "")


# unlabeled pretext images held out for the stage's early stopping: 5%, at most this many
HELD_OUT_SHARE, HELD_OUT_MAX, HELD_OUT_FROM = 0.05, 2000, 20


def load_unlabeled(root: Path, image_size: int = 32, cache_dir: Path | None = None) -> Dataset:
    """Every image under `root` (flat or in class folders), labels ignored: pretext data. The
    last 5% of them (at most 2,000; none below 20 images) are held out as `val`, which the
    colorization stage measures itself on each epoch to stop early. Both are views of the
    prepared, memory-mapped images, so a pretext set of any size is never copied here."""
    files = scan_images(root)
    if not files:
        raise DataError(f"{root}: no image files (expected .jpg, .png or other image files in "
                        "it, or in its subfolders)")
    split, bad, key = prepare_images(files, [0] * len(files), image_size, cache_dir)
    if len(split) == 0:
        raise none_decodable(root, bad)
    warn_unreadable(bad)
    held = min(HELD_OUT_MAX, int(len(split) * HELD_OUT_SHARE)) if len(split) >= HELD_OUT_FROM \
        else 0
    cut = len(split) - held
    train = Split(split.images[:cut], split.labels[:cut], split.paths[:cut])
    val = Split(split.images[cut:], split.labels[cut:], split.paths[cut:])
    return Dataset(name=root.name, classes=("unlabeled",), train=train, val=val, test=None,
                   fingerprint=fingerprint("unlabeled", key))
