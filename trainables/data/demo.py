"""The built-in `demo` dataset: coloured shapes on noisy, textured backgrounds, made in code.

Target classes are (colour, shape) pairs chosen so that every colour is shared by two or three
classes and every shape by two, so neither colour nor shape alone solves the task: a model that
leans on colour alone confuses same-coloured classes, as it would with yellow fruit. The source
classes, used only by the `supervised` pretraining stage, are disjoint (colour, shape) pairs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainables.cache import area, atomic_file, fingerprint
from trainables.data.dataset import DataError, Dataset, Split

COLOURS = {  # RGB in [0, 1]
    "red": (0.85, 0.12, 0.10),
    "yellow": (0.95, 0.85, 0.10),
    "green": (0.15, 0.70, 0.20),
    "blue": (0.15, 0.30, 0.90),
    "orange": (0.95, 0.50, 0.05),
    "cyan": (0.10, 0.80, 0.85),
    "magenta": (0.85, 0.15, 0.75),
}

TARGET_CLASSES = (
    ("yellow", "circle"), ("yellow", "triangle"), ("yellow", "square"),
    ("red", "circle"), ("red", "star"),
    ("green", "triangle"), ("green", "ring"),
    ("blue", "square"), ("blue", "star"), ("blue", "ring"),
)
SOURCE_CLASSES = (
    ("orange", "circle"), ("cyan", "triangle"), ("magenta", "square"), ("orange", "star"),
    ("cyan", "ring"), ("magenta", "cross"), ("orange", "hexagon"), ("cyan", "cross"),
    ("magenta", "diamond"), ("orange", "diamond"),
)

# Per-class image counts of the default demo; val and test take a quarter of train each.
DEFAULT_TRAIN_PER_CLASS = 150


def _regular_polygon(u: np.ndarray, v: np.ndarray, sides: int, radius: float) -> np.ndarray:
    """Inside test for a regular polygon: the max over its edge normals of the projection."""
    angles = 2 * np.pi * (np.arange(sides) + 0.5) / sides
    proj = u[..., None] * np.cos(angles) + v[..., None] * np.sin(angles)
    return proj.max(-1) < radius * np.cos(np.pi / sides)


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of `shape` in local coordinates where the shape spans roughly [-1, 1]."""
    r = np.hypot(u, v)
    if shape == "circle":
        return r < 0.9
    if shape == "ring":
        return (r < 0.95) & (r > 0.55)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) < 0.75
    if shape == "diamond":
        return np.abs(u) + np.abs(v) < 1.0
    if shape == "triangle":
        return _regular_polygon(u, v, 3, 1.0)
    if shape == "hexagon":
        return _regular_polygon(u, v, 6, 0.95)
    if shape == "star":
        theta = np.arctan2(v, u)
        return r < 0.45 + 0.5 * np.abs(np.cos(2.5 * theta))
    if shape == "cross":
        return ((np.abs(u) < 0.3) & (np.abs(v) < 0.95)) | ((np.abs(v) < 0.3) & (np.abs(u) < 0.95))
    raise ValueError(f"unknown shape {shape!r}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted random base colour, low-frequency texture and per-pixel noise: (size, size, 3)."""
    base = rng.uniform(0.2, 0.6, 3) * rng.uniform(0.6, 1.0)
    coarse = rng.normal(0, 0.12, (4, 4, 3))
    reps = -(-size // 4)
    texture = np.kron(coarse, np.ones((reps, reps, 1)))[:size, :size]
    grain = rng.normal(0, 0.06, (size, size, 3))
    return base + texture + grain


def render(colour: str, shape: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """One (size, size, 3) uint8 image of `shape` in `colour` with random pose and jitter."""
    scale = 2  # supersample, then average-pool: anti-aliased edges
    big = size * scale
    ys, xs = np.mgrid[0:big, 0:big].astype(np.float32) / big * 2 - 1
    radius = rng.uniform(0.35, 0.6)
    cx, cy = rng.uniform(-1 + radius, 1 - radius, 2)
    theta = rng.uniform(0, 2 * np.pi)
    dx, dy = (xs - cx) / radius, (ys - cy) / radius
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    mask = shape_mask(shape, u, v).astype(np.float32)
    mask = mask.reshape(size, scale, size, scale).mean((1, 3))[..., None]
    rgb = np.asarray(COLOURS[colour]) * rng.uniform(0.75, 1.15) + rng.normal(0, 0.04, 3)
    shading = 1 + rng.normal(0, 0.05, (size, size, 1))
    image = mask * rgb * shading + (1 - mask) * _background(rng, size)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def generate(
    classes: tuple[tuple[str, str], ...], per_class: int, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, size, size) uint8 and labels (N,) int64, class-balanced, shuffled by seed."""
    rng = np.random.default_rng(seed)
    images = np.empty((len(classes) * per_class, size, size, 3), np.uint8)
    labels = np.repeat(np.arange(len(classes)), per_class)
    for i, label in enumerate(labels):
        images[i] = render(*classes[label], rng, size)
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
    """The built-in demo for a seed: fixed splits, plus its disjoint source classes.

    With `cache_dir` (the cache root), the generated arrays are kept in one file under `data/`.
    """
    held_out = max(2, train_per_class // 4)
    key = fingerprint("demo", train_per_class, image_size, seed)
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
        train=split(SOURCE_CLASSES, train_per_class, 3),
        val=split(SOURCE_CLASSES, held_out, 4),
        test=None,
        fingerprint=fingerprint("demo-source", key),
    )
    target = Dataset(
        name="demo" if train_per_class == DEFAULT_TRAIN_PER_CLASS else f"demo:{train_per_class}",
        classes=class_names(TARGET_CLASSES),
        train=split(TARGET_CLASSES, train_per_class, 0),
        val=split(TARGET_CLASSES, held_out, 1),
        test=split(TARGET_CLASSES, held_out, 2),
        fingerprint=key,
        source=source,
    )
    if entry is not None and not entry.is_file():
        with atomic_file(entry) as tmp:
            np.savez(tmp, **cached)
    return target
