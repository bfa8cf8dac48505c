"""The built-in demo dataset: deterministic, fixed splits, and not solvable by colour or shape."""

from collections import Counter

import numpy as np

from trainables.data import demo
from trainables.data.demo import load_demo


def test_demo_is_deterministic_and_balanced():
    a, b = load_demo(6), load_demo(6)
    for split in ("train", "val", "test"):
        assert np.array_equal(getattr(a, split).images, getattr(b, split).images)
        assert np.array_equal(getattr(a, split).labels, getattr(b, split).labels)
    assert a.fingerprint == b.fingerprint
    assert a.train.images.shape == (60, 3, 32, 32) and a.train.images.dtype == np.uint8
    assert Counter(a.train.labels.tolist()) == dict.fromkeys(range(10), 6)
    assert load_demo(6, image_size=48).train.images.shape[-1] == 48


def test_splits_hold_different_images():
    data = load_demo(6)
    seen = {}
    for split in ("train", "val", "test"):
        for image in getattr(data, split).images:
            key = image.tobytes()
            assert key not in seen, f"an image of {split} is also in {seen[key]}"
            seen[key] = split


def test_neither_colour_nor_shape_alone_identifies_a_class():
    colours = Counter(c for c, _ in demo.TARGET_CLASSES)
    shapes = Counter(s for _, s in demo.TARGET_CLASSES)
    assert min(colours.values()) >= 2 and min(shapes.values()) >= 2
    assert len(set(demo.TARGET_CLASSES)) == len(demo.TARGET_CLASSES) >= 8


def test_source_classes_are_disjoint_from_target_classes():
    assert not set(demo.SOURCE_CLASSES) & set(demo.TARGET_CLASSES)
    data = load_demo(4)
    assert data.source is not None and data.source.num_classes == len(demo.SOURCE_CLASSES)
    assert not set(data.source.classes) & set(data.classes)
    assert data.for_search().test is None and data.for_search().source is None


def test_shape_colour_is_the_class_colour():
    rng = np.random.default_rng(0)
    image = demo.render("blue", "circle", rng, 32).astype(float)
    centreish = image.reshape(-1, 3)
    blue_pixels = (centreish[:, 2] > 150) & (centreish[:, 0] < 100)
    assert blue_pixels.sum() > 20


def test_seed_reaches_the_demo_images_through_load_dataset():
    from trainables.data.load import load_dataset

    first, again = load_dataset("demo:4", seed=1), load_dataset("demo:4", seed=1)
    other = load_dataset("demo:4", seed=0)
    assert np.array_equal(first.train.images, again.train.images)
    assert not np.array_equal(first.train.images, other.train.images)
