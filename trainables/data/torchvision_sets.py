"""`torchvision:NAME` datasets: downloaded into a cache when the network allows, decoded once.

torchvision's classification sets name their splits in three ways: a `train` flag (CIFAR10,
CIFAR100, MNIST), a `split` argument (STL10, Flowers102, Food101, SVHN, ...), or nothing (then
the set is split here, stratified). Each split is decoded once and cached like an ImageFolder.
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import torchvision
from PIL import Image

from trainables.cache import fingerprint
from trainables.data.dataset import DataError, Dataset, Split, assemble, cached_split
from trainables.data.imagefolder import to_array

SPLIT_NAMES = {"train": ("train", "trainval"), "val": ("val", "valid"), "test": ("test",)}


CLASSIFICATION_SETS = "CIFAR10, CIFAR100, STL10, Flowers102, Food101, SVHN"
# torchvision's sets whose targets are not one class per image: boxes, masks, captions, flow,
# disparity, videos, pairs, or base classes that need a folder; named here so they fail at once,
# before a download
NOT_CLASSIFICATION = {
    "detection": ("CocoDetection", "VOCDetection", "Kitti", "WIDERFace"),
    "segmentation": ("VOCSegmentation", "Cityscapes", "SBDataset"),
    "captioning": ("CocoCaptions", "Flickr8k", "Flickr30k", "SBU"),
    "video": ("HMDB51", "Kinetics", "UCF101", "MovingMNIST"),
    "attributes or pairs": ("CelebA", "LFWPairs", "PhotoTour"),
    "base class": ("VisionDataset", "DatasetFolder", "ImageFolder"),
}


def dataset_class(name: str) -> type:
    cls = getattr(torchvision.datasets, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, torchvision.datasets.VisionDataset)):
        raise DataError(f"torchvision:{name}: not a torchvision dataset (classification sets "
                        f"include {CLASSIFICATION_SETS})")
    kind = next((k for k, names in NOT_CLASSIFICATION.items() if name in names), None)
    if kind is None and cls.__module__.rsplit(".", 1)[-1] in ("_optical_flow",
                                                              "_stereo_matching"):
        kind = "optical flow or stereo"
    if kind is not None:
        raise DataError(f"torchvision:{name}: a {kind} set, not an image classification set; "
                        f"use one such as {CLASSIFICATION_SETS}, or an ImageFolder tree")
    return cls


def _open(cls: type, root, **kwargs):
    """Construct from the cache; download only when the files are not there yet."""
    params = inspect.signature(cls).parameters
    if "root" in params:
        kwargs["root"] = str(root)
    if "download" not in params:
        return cls(**kwargs)
    try:
        return cls(download=False, **kwargs)
    except (RuntimeError, FileNotFoundError, OSError):
        pass
    try:
        return cls(download=True, **kwargs)
    except ValueError:
        raise
    except Exception as error:  # noqa: BLE001 - network, checksum and archive errors alike
        raise DataError(
            f"torchvision:{cls.__name__}: not in the cache and cannot be downloaded "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
            f"Put its files by hand in {root} (the layout torchvision.datasets.{cls.__name__} "
            "expects), or use an ImageFolder tree."
        ) from None


def open_splits(cls: type, root) -> dict:
    params = inspect.signature(cls).parameters
    try:  # a ValueError here is a file torchvision cannot parse (there is no split argument)
        if "train" in params:
            return {"train": _open(cls, root, train=True), "test": _open(cls, root, train=False)}
        if "split" not in params:
            return {"all": _open(cls, root)}
    except ValueError as error:
        raise DataError(
            f"torchvision:{cls.__name__}: cannot read its files in {root} ({type(error).__name__}"
            f": {str(error).splitlines()[0] if str(error) else ''}); delete them to download "
            "them again, or use an ImageFolder tree") from None
    found = {}
    for part, names in SPLIT_NAMES.items():
        for name in names:
            try:
                found[part] = _open(cls, root, split=name)
                break
            except ValueError:  # torchvision's verify_str_arg: not a split of this set
                continue
    if "train" not in found:
        raise DataError(f"torchvision:{cls.__name__}: no train split among {SPLIT_NAMES}")
    return found


def decode_dataset(dataset, image_size: int) -> Split:
    images, labels = [], []
    for i in range(len(dataset)):
        image, label = dataset[i]
        if not isinstance(image, Image.Image):
            image = torchvision.transforms.functional.to_pil_image(image)
        images.append(to_array(image, image_size))
        labels.append(int(label))
    stacked = np.stack(images) if images else np.empty((0, 3, image_size, image_size), np.uint8)
    return Split(stacked, np.asarray(labels, dtype=np.int64))


def load_torchvision(name: str, root, image_size: int = 32, seed: int = 0,
                     split: tuple[float, float, float] = (0.7, 0.15, 0.15),
                     cache_dir=None) -> Dataset:
    cls = dataset_class(name)
    root.mkdir(parents=True, exist_ok=True)
    datasets = open_splits(cls, root / name)
    files = sorted((str(p.relative_to(root)), p.stat().st_size)
                   for p in (root / name).rglob("*") if p.is_file())
    parts, keys = {}, []
    for part, dataset in datasets.items():
        if len(dataset) == 0:  # before it is decoded and cached: nothing to split or stack
            raise DataError(f"torchvision:{name}: its {part} split has no images; its files in "
                            f"{root / name} may be incomplete: delete them to download them "
                            "again, or use an ImageFolder tree")
        key = fingerprint("torchvision-v1", name, part, len(dataset), repr(dataset), files,
                          image_size)
        parts[part], _ = cached_split(cache_dir, key,
                                      lambda d=dataset: (decode_dataset(d, image_size), {}))
        keys.append(key)
    first = next(iter(datasets.values()))
    classes = getattr(first, "classes", None) or [
        str(c) for c in np.unique(np.concatenate([p.labels for p in parts.values()]))]
    if len(classes) < 2:
        raise DataError(f"torchvision:{name}: fewer than two classes")
    return assemble(f"torchvision:{name}", tuple(map(str, classes)), parts, seed, split,
                    fingerprint("torchvision", json.dumps(keys)))
