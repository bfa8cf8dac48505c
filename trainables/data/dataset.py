"""The in-memory dataset every source ends as, and its entries in the cache.

A `Dataset` holds (N, 3, H, W) uint8 arrays per split, int64 labels and class names. Trials get
only train and val (`Dataset.for_search`); the test split stays with the driver so a search can
never read it. The loaders (demo, ImageFolder, torchvision sets) import this module; none of
them imports another loader's module.

Read from the cache, a split's images are a read-only map of its entry's .npy file: they live in
the page cache, not in the driver's memory, and the search's one in-memory copy is the one in
Ray's object store. Parts drawn from another (a seed's train/val/test of class folders) are
written as an entry of their own for the same reason, a chunk at a time.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from store.atomic import atomic_dir
from trainables.cache import fingerprint


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


# Decoded bytes handled at once when images are decoded or copied chunk by chunk: what bounds the
# memory of preparing an ImageFolder, whatever its size (at 32 px, the row cap decides).
CHUNK_BYTES = 8 << 20
MAX_CHUNK_ROWS = 1024
IMAGES = "images.npy"


def chunk_rows(image_size: int) -> int:
    """Images per chunk at `image_size`: a chunk is at most CHUNK_BYTES of decoded pixels."""
    return max(1, min(MAX_CHUNK_ROWS, CHUNK_BYTES // (3 * image_size * image_size)))


def mapped_images(path: Path) -> np.ndarray:
    """A .npy of images, mapped read-only: its pages stay in the page cache, not in this
    process's memory. A plain ndarray view of the map, because Ray pickles an np.memmap
    subclass in-band (a full copy in the driver, and one more in every trial that reads it),
    and a plain array out-of-band, straight into its object store and zero-copy out of it."""
    return np.asarray(np.load(path, mmap_mode="r"))


class ImageRows:
    """(N, 3, S, S) uint8 images appended in order, into a .npy file or (path None) into memory.

    N is the most there will be (unreadable files make fewer). Into a file, rows go through
    write(): they pass through the page cache and never count in this process's memory, as
    the pages of a writable memmap would. `finish` returns the rows written.
    """

    def __init__(self, capacity: int, image_size: int, path: Path | None = None):
        self.row_shape = (3, image_size, image_size)
        self.capacity, self.count, self.path = capacity, 0, path
        if path is None:
            self.array = np.empty((capacity, *self.row_shape), np.uint8)
        else:
            self.file = open(path, "wb")  # noqa: SIM115 (closed by __exit__ or finish)
            np.lib.format.write_array_header_1_0(self.file, self._header(capacity))
            self.offset = self.file.tell()

    def _header(self, rows: int) -> dict:
        return {"descr": "|u1", "fortran_order": False, "shape": (rows, *self.row_shape)}

    def __enter__(self) -> ImageRows:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.path is not None:
            self.file.close()

    def append(self, block: np.ndarray) -> None:
        if block.shape[1:] != self.row_shape or self.count + len(block) > self.capacity:
            raise ValueError(f"{block.shape} does not fit {self.capacity} x {self.row_shape} "
                             f"after {self.count} rows")
        if self.path is None:
            self.array[self.count : self.count + len(block)] = block
        else:
            self.file.write(np.ascontiguousarray(block, np.uint8).data)
        self.count += len(block)

    def finish(self) -> np.ndarray:
        if self.path is None:
            return self.array[: self.count]
        if self.count < self.capacity:
            # numpy pads a header so that a row count of up to 21 digits fits in the same
            # length: the smaller count is written in place, and the file cut after its rows
            self.file.seek(0)
            np.lib.format.write_array_header_1_0(self.file, self._header(self.count))
            if self.file.tell() != self.offset:
                raise RuntimeError(f"{self.path}: the .npy header changed length")
            self.file.truncate(self.offset + self.count * int(np.prod(self.row_shape)))
        self.file.close()
        return mapped_images(self.path)


def row_blocks(images: np.ndarray, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(start, block of up to `rows` images) in order. A whole mapped .npy is read with read(),
    not through its map, so that its pages never count in this process's memory."""
    base = images.base
    mapped = (isinstance(base, np.memmap) and base.filename is not None
              and base.shape == images.shape and base.ctypes.data == images.ctypes.data)
    row_bytes = int(np.prod(images.shape[1:]))
    with open(base.filename, "rb") if mapped else contextlib.nullcontext() as file:
        for start in range(0, len(images), rows):
            if file is None:
                yield start, images[start : start + rows]
                continue
            file.seek(base.offset + start * row_bytes)
            count = min(rows, len(images) - start) * row_bytes
            yield start, np.fromfile(file, np.uint8, count).reshape(-1, *images.shape[1:])


def read_cached_split(entry: Path) -> tuple[Split, dict] | None:
    """A prepared split (its images mapped) and its metadata from a cache entry, or None when
    there is none."""
    if not (entry / "meta.json").is_file():
        return None
    meta = json.loads((entry / "meta.json").read_text())
    split = Split(mapped_images(entry / IMAGES), np.load(entry / "labels.npy"),
                  tuple(meta.pop("paths", ())))
    return split, meta


def finish_entry(folder: Path, labels: np.ndarray, paths: tuple[str, ...], meta: dict) -> None:
    """The labels and metadata beside an entry's images.npy; meta.json, written last, is what
    tells a reader that an entry is there."""
    np.save(folder / "labels.npy", labels)
    (folder / "meta.json").write_text(json.dumps({"paths": list(paths), **meta}))


def write_cached_split(entry: Path, split: Split, **meta: object) -> None:
    """Write a cache entry as one directory, renamed into place when complete."""
    with atomic_dir(entry) as tmp:
        np.save(tmp / IMAGES, split.images)
        finish_entry(tmp, split.labels, split.paths, meta)


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


def streamed_split(cache_dir: Path | None, key: str,
                   make: Callable[[Path | None], tuple[Split, dict]]) -> tuple[Split, dict]:
    """`cached_split` for a `make(path)` that writes its images itself, chunk by chunk, into
    the .npy file `path` (with `ImageRows`), so that they are never all in memory. With caching
    off it is given None, and keeps them in memory."""
    if cache_dir is None:
        return make(None)
    entry = cache_dir / key
    hit = read_cached_split(entry)
    if hit is None:
        with atomic_dir(entry) as tmp:
            split, meta = make(tmp / IMAGES)
            finish_entry(tmp, split.labels, split.paths, meta)
            del split  # unmaps the temporary file: what is returned maps the entry's own
        hit = read_cached_split(entry)
    return hit  # type: ignore[return-value]


def stratified_split(
    labels: np.ndarray, fractions: tuple[float, float, float], seed: int,
    classes: tuple[str, ...] = (),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays for train/val/test, each class split by the same fractions. `classes`
    names the labels in errors."""
    if len(labels) == 0:
        raise DataError("no images to split into train and val; add images")
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_val = max(1, round(len(idx) * fractions[1]))
        n_test = max(1, round(len(idx) * fractions[2])) if fractions[2] > 0 else 0
        if len(idx) - n_val - n_test < 1:
            name = classes[label] if 0 <= label < len(classes) else label
            into = "train, val and test" if fractions[2] > 0 else "train and val"
            raise DataError(
                f"class {name} has {len(idx)} image{'s' if len(idx) != 1 else ''}: too few to "
                f"split into {into} (each needs one, more with larger fractions); add images "
                "of it, drop the class, or lower the val and test fractions of --split")
        parts[1].append(idx[:n_val])
        parts[2].append(idx[n_val : n_val + n_test])
        parts[0].append(idx[n_val + n_test :])
    return tuple(np.sort(np.concatenate(p)) for p in parts)  # type: ignore[return-value]


def assemble(name: str, classes: tuple[str, ...], parts: dict[str, Split], seed: int,
             fractions: tuple[float, float, float], key: str,
             cache_dir: Path | None = None) -> Dataset:
    """A Dataset from prepared parts: `all` is split three ways, a missing `val` comes from
    `train`, and given `train`/`val`/`test` parts are used as they are.

    With a `cache_dir`, the parts drawn from another are a cache entry of their own, copied
    chunk by chunk and mapped: the images are then nowhere in this process's memory, and the
    search's one copy of them is the one in Ray's object store.
    """
    check_parts(name, classes, parts)
    try:
        plan = split_plan(parts, seed, fractions, classes)
    except DataError as error:
        raise DataError(f"{name}: {error}") from None
    if plan:
        entry = None if cache_dir is None else cache_dir / fingerprint("split-v1", key, seed,
                                                                       fractions)
        parts = {**{n: p for n, p in parts.items() if n != "all"}, **drawn(parts, plan, entry)}
    return Dataset(name=name, classes=classes, train=parts["train"], val=parts["val"],
                   test=parts.get("test"), fingerprint=fingerprint(key, seed, fractions))


def check_parts(name: str, classes: tuple[str, ...], parts: dict[str, Split]) -> None:
    """Every given part has images, and the parts that train and validate (`all`, `train`,
    `val`) have some of every class: a class without any is a label no image teaches, or one
    no image measures. Loaders name the cause first when they know it (unreadable files)."""
    for part, split in parts.items():
        what = "data" if part == "all" else f"{part} split"
        if len(split) == 0:
            raise DataError(f"{name}: the {what} has no images; add images to it")
        if part == "test":
            continue
        present = np.isin(np.arange(len(classes)), split.labels)
        missing = [classes[i] for i in np.flatnonzero(~present)]
        if missing:
            shown = ", ".join(missing[:5]) + (
                f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise DataError(f"{name}: the {what} has no images of class{'es' * (len(missing) > 1)}"
                            f" {shown}; add images of {'them' if len(missing) > 1 else 'it'}, "
                            "or leave the class out")


def split_plan(parts: dict[str, Split], seed: int, fractions: tuple[float, float, float],
               classes: tuple[str, ...] = ()) -> dict[str, tuple[str, np.ndarray]]:
    """Which parts are drawn from another: {part: (source part, its sorted row indices)}."""
    if "all" in parts:
        idx = stratified_split(parts["all"].labels, fractions, seed, classes)
        return {n: ("all", i) for n, i in zip(("train", "val", "test"), idx, strict=True)}
    if "val" not in parts:
        held = (1 - fractions[1], fractions[1], 0.0)
        train_idx, val_idx, _ = stratified_split(parts["train"].labels, held, seed, classes)
        return {"train": ("train", train_idx), "val": ("train", val_idx)}
    return {}


def drawn(parts: dict[str, Split], plan: dict[str, tuple[str, np.ndarray]],
          entry: Path | None) -> dict[str, Split]:
    """The planned parts: in memory without a cache `entry`; else written to it once (one
    folder per part) and mapped."""
    if entry is None:
        return {n: parts[source].take(idx) for n, (source, idx) in plan.items()}
    if not (entry / next(iter(plan)) / "meta.json").is_file():
        with atomic_dir(entry) as tmp:
            for source in dict.fromkeys(source for source, _ in plan.values()):
                write_drawn(parts[source], {n: idx for n, (s, idx) in plan.items()
                                            if s == source}, tmp)
    return {n: read_cached_split(entry / n)[0] for n in plan}  # type: ignore[index]


def write_drawn(source: Split, targets: dict[str, np.ndarray], folder: Path) -> None:
    """Each target's rows of `source` (sorted indices) into `folder/<target>`, in one pass
    over `source` a chunk at a time."""
    size = int(source.images.shape[-1])
    for name in targets:
        (folder / name).mkdir()
    with contextlib.ExitStack() as stack:
        writers = {name: stack.enter_context(ImageRows(len(idx), size, folder / name / IMAGES))
                   for name, idx in targets.items()}
        for start, block in row_blocks(source.images, chunk_rows(size)):
            for name, idx in targets.items():
                lo, hi = np.searchsorted(idx, (start, start + len(block)))
                writers[name].append(block[idx[lo:hi] - start])
        for name, idx in targets.items():
            writers[name].finish()
            paths = tuple(source.paths[i] for i in idx) if source.paths else ()
            finish_entry(folder / name, source.labels[idx], paths, {})
