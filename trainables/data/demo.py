"""The built-in `demo` dataset: a small transfer problem made in code, offline and deterministic.

Every image is one coloured shape (random position, size, rotation, colour jitter and shading) on
a noisy, textured background; a class is a (colour, shape) pair. Five colours times six shapes
make 30 pairs, split into two label sets that share every visual part and no label:

- target: 10 pairs, chosen so that every colour is shared by two or three classes and every
  shape by two, so neither colour nor shape alone solves it (as with yellow fruit). It is small,
  like the datasets transfer learning is for: `demo:N` has N training images per class
  (default 50), while val (25 per class) and test (50 per class) keep their size, so accuracy
  stays comparable across N and not too noisy.
- source: the other 20 pairs, 150 training and 25 val images each (3,000 + 500), used only by
  the `supervised` pretraining stage, the offline stand-in for ImageNet. Each target colour
  appears in three or four source classes, each target shape in three, with the same
  backgrounds and noise; the source also has a colour and a shape the target never uses.

So a backbone pretrained on the source has already learned, from six times more images, to
tell these colours and shapes apart under clutter; the target only has to learn how they
combine into its own labels. That is what pretrained weights give on real data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from store.atomic import atomic_file
from trainables.cache import area, fingerprint
from trainables.data.dataset import DataError, Dataset, Split

COLOURS = {  # RGB in [0, 1]
    "red": (0.85, 0.12, 0.10),
    "yellow": (0.95, 0.85, 0.10),
    "green": (0.15, 0.70, 0.20),
    "blue": (0.15, 0.30, 0.90),
    "magenta": (0.85, 0.15, 0.75),
}
SHAPES = ("circle", "triangle", "square", "star", "ring", "cross")

TARGET_CLASSES = (
    ("yellow", "circle"), ("yellow", "triangle"), ("yellow", "square"),
    ("red", "circle"), ("red", "star"),
    ("green", "triangle"), ("green", "ring"),
    ("blue", "square"), ("blue", "star"), ("blue", "ring"),
)
# Every other (colour, shape) pair: the same parts as the target, none of its labels.
SOURCE_CLASSES = tuple((c, s) for c in COLOURS for s in SHAPES if (c, s) not in TARGET_CLASSES)

# Images per class. Only the target's training split follows `demo:N`.
DEFAULT_TRAIN_PER_CLASS = 50
VAL_PER_CLASS, TEST_PER_CLASS = 25, 50
SOURCE_TRAIN_PER_CLASS, SOURCE_VAL_PER_CLASS = 150, 25

# Part of every cache key: a change to the design or the renderer must not reuse old images.
_DESIGN = ("v2", TARGET_CLASSES, SOURCE_CLASSES, VAL_PER_CLASS, TEST_PER_CLASS,
           SOURCE_TRAIN_PER_CLASS, SOURCE_VAL_PER_CLASS)


def _regular_polygon(u: np.ndarray, v: np.ndarray, sides: int, radius: float) -> np.ndarray:
    """Inside test for a regular polygon: the max over its edge normals of the projection."""
    # a running maximum, edge by edge: a max over a short last axis is slow in numpy
    proj = np.full_like(u, -np.inf)
    for k in range(sides):
        angle = 2 * np.pi * (k + 0.5) / sides
        proj = np.maximum(proj, u * np.cos(angle) + v * np.sin(angle))
    return proj < radius * np.cos(np.pi / sides)


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of `shape` in local coordinates where the shape spans roughly [-1, 1]."""
    r = np.hypot(u, v)
    if shape == "circle":
        return r < 0.9
    if shape == "ring":
        return (r < 0.95) & (r > 0.55)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) < 0.75
    if shape == "triangle":
        return _regular_polygon(u, v, 3, 1.0)
    if shape == "star":
        theta = np.arctan2(v, u)
        return r < 0.45 + 0.5 * np.abs(np.cos(2.5 * theta))
    if shape == "cross":
        return ((np.abs(u) < 0.3) & (np.abs(v) < 0.95)) | ((np.abs(v) < 0.3) & (np.abs(u) < 0.95))
    raise ValueError(f"unknown shape {shape!r}")


def _backgrounds(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Muted random base colours, low-frequency texture and per-pixel noise: (n, size, size, 3)."""
    base = rng.uniform(0.2, 0.6, (n, 1, 1, 3)) * rng.uniform(0.6, 1.0, (n, 1, 1, 1))
    coarse = rng.normal(0, 0.12, (n, 4, 4, 3)).astype(np.float32)
    reps = -(-size // 4)
    texture = coarse.repeat(reps, 1).repeat(reps, 2)[:, :size, :size]
    grain = rng.standard_normal((n, size, size, 3), np.float32) * np.float32(0.06)
    return base.astype(np.float32) + texture + grain


def render_batch(colour: str, shape: str, n: int, rng: np.random.Generator,
                 size: int) -> np.ndarray:
    """(n, size, size, 3) uint8 images of `shape` in `colour`, each with its own pose and jitter."""
    scale = 2  # supersample, then average-pool: anti-aliased edges
    big = size * scale
    ys, xs = np.mgrid[0:big, 0:big].astype(np.float32) / big * 2 - 1
    radius = rng.uniform(0.35, 0.6, (n, 1, 1))
    cx, cy = (rng.uniform(-1 + radius, 1 - radius).astype(np.float32) for _ in range(2))
    theta = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    cos, sin = np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)
    dx, dy = (xs - cx) / radius.astype(np.float32), (ys - cy) / radius.astype(np.float32)
    u, v = dx * cos + dy * sin, dy * cos - dx * sin  # float32: half the memory traffic
    mask = shape_mask(shape, u, v).astype(np.float32)
    mask = mask.reshape(n, size, scale, size, scale).mean((2, 4))[..., None]
    rgb = (np.asarray(COLOURS[colour]) * rng.uniform(0.75, 1.15, (n, 1))
           + rng.normal(0, 0.04, (n, 3)))[:, None, None].astype(np.float32)
    shading = 1 + rng.standard_normal((n, size, size, 1), np.float32) * np.float32(0.05)
    image = mask * rgb * shading + (1 - mask) * _backgrounds(rng, n, size)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def render(colour: str, shape: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """One (size, size, 3) uint8 image of `shape` in `colour` with random pose and jitter."""
    return render_batch(colour, shape, 1, rng, size)[0]


def generate(
    classes: tuple[tuple[str, str], ...], per_class: int, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, size, size) uint8 and labels (N,) int64, class-balanced, shuffled by seed."""
    rng = np.random.default_rng(seed)
    # rendered a class at a time in chunks of about 2M supersampled pixels: vectorised, yet
    # bounded in memory at large image sizes
    chunk = max(1, 2**21 // (2 * size) ** 2)
    images = np.empty((len(classes) * per_class, size, size, 3), np.uint8)
    labels = np.repeat(np.arange(len(classes)), per_class)
    for label, (colour, shape) in enumerate(classes):
        for begin in range(0, per_class, chunk):
            n = min(chunk, per_class - begin)
            start = label * per_class + begin
            images[start : start + n] = render_batch(colour, shape, n, rng, size)
    order = rng.permutation(len(labels))
    return np.ascontiguousarray(images[order].transpose(0, 3, 1, 2)), labels[order]


def class_names(classes: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    return tuple(f"{colour}_{shape}" for colour, shape in classes)


def demo_size(data: str) -> int | None:
    """`demo` -> the default images per class, `demo:N` -> N, anything else -> None."""
    if data == "demo":
        return DEFAULT_TRAIN_PER_CLASS
    if data.startswith("demo:"):
        count = data.removeprefix("demo:")
        if not count.isdigit() or int(count) < 4:
            raise DataError(f"--data {data}: expected demo:N with N >= 4 images per class")
        return int(count)
    return None


def load_demo(train_per_class: int = DEFAULT_TRAIN_PER_CLASS, image_size: int = 32,
              seed: int = 0, cache_dir: Path | None = None) -> Dataset:
    """The built-in demo for a seed: fixed target splits, plus its source set.

    With `cache_dir` (the cache root), the generated arrays are kept in one file under `data/`.
    """
    key = fingerprint("demo", _DESIGN, train_per_class, image_size, seed)
    folder = area(cache_dir, "data")
    entry = folder / f"{key}.npz" if folder is not None else None
    cached = dict(np.load(entry)) if entry is not None and entry.is_file() else {}

    def split(classes: tuple, per_class: int, split_id: int) -> Split:
        if f"x{split_id}" not in cached:
            cached[f"x{split_id}"], cached[f"y{split_id}"] = generate(
                classes, per_class, image_size, seed * 1000 + split_id)
        return Split(cached[f"x{split_id}"], cached[f"y{split_id}"])

    source = Dataset(
        name="demo-source",
        classes=class_names(SOURCE_CLASSES),
        train=split(SOURCE_CLASSES, SOURCE_TRAIN_PER_CLASS, 3),
        val=split(SOURCE_CLASSES, SOURCE_VAL_PER_CLASS, 4),
        test=None,
        # the source does not depend on N: every demo:N of a seed shares one supervised stage
        fingerprint=fingerprint("demo-source", _DESIGN, image_size, seed),
    )
    target = Dataset(
        name="demo" if train_per_class == DEFAULT_TRAIN_PER_CLASS else f"demo:{train_per_class}",
        classes=class_names(TARGET_CLASSES),
        train=split(TARGET_CLASSES, train_per_class, 0),
        val=split(TARGET_CLASSES, VAL_PER_CLASS, 1),
        test=split(TARGET_CLASSES, TEST_PER_CLASS, 2),
        fingerprint=key,
        source=source,
    )
    if entry is not None and not entry.is_file():
        with atomic_file(entry) as tmp:
            np.savez(tmp, **cached)
    return target
