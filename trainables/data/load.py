"""Resolve a `--data` (or `--pretrain-data`) string to a `Dataset`: the only dispatcher.

`demo`, `demo:N`, `torchvision:NAME`, or a path to an ImageFolder tree; for pretraining also a
flat folder of unlabeled images.
"""

from __future__ import annotations

from pathlib import Path

from trainables.cache import area, cache_root
from trainables.data.dataset import DataError, Dataset
from trainables.data.demo import demo_size, load_demo
from trainables.data.imagefolder import load_image_folder, load_unlabeled
from trainables.data.torchvision_sets import load_torchvision

DEFAULT_SPLIT = (0.7, 0.15, 0.15)


def load_dataset(data: str, image_size: int = 32, seed: int = 0,
                 split: tuple[float, float, float] = DEFAULT_SPLIT,
                 cache_dir: Path | None = None) -> Dataset:
    """The dataset `data` names, its images prepared at `image_size`.

    `cache_dir` is the cache root: prepared images are kept under `data/`, and torchvision
    downloads under `torchvision/` (of the default root when there is none).
    """
    per_class = demo_size(data)
    if per_class is not None:
        return load_demo(per_class, image_size, seed, cache_dir=cache_dir)
    if data.startswith("torchvision:"):
        downloads = area(cache_dir or cache_root(), "torchvision")
        return load_torchvision(data.removeprefix("torchvision:"), downloads,
                                image_size=image_size, seed=seed, split=split,
                                cache_dir=area(cache_dir, "data"))
    path = Path(data).expanduser()
    if not path.exists():
        raise DataError(f"--data {data}: no such file or directory")
    if not path.is_dir():
        raise DataError(f"--data {data}: not a directory (expected an ImageFolder tree)")
    return load_image_folder(path, image_size=image_size, seed=seed, split=split,
                             cache_dir=area(cache_dir, "data"))


def load_pretrain_data(data: str, image_size: int = 32, seed: int = 0,
                       cache_dir: Path | None = None) -> Dataset:
    """`--pretrain-data`: `demo` (its source classes), a flat folder of images (unlabeled), or
    anything `load_dataset` takes (labeled)."""
    per_class = demo_size(data)
    if per_class is not None:
        return load_demo(per_class, image_size, seed, cache_dir=cache_dir).source
    path = Path(data).expanduser()
    if path.is_dir() and not any(p.is_dir() for p in path.iterdir()):
        return load_unlabeled(path, image_size, area(cache_dir, "data"))
    return load_dataset(data, image_size, seed, cache_dir=cache_dir)
