"""The built-in demo dataset: deterministic, fixed splits, not solvable by colour or shape, and a
transfer problem: a large source that shares the target's colours and shapes but not its labels."""

from collections import Counter

import numpy as np
import pytest

from trainables.data import demo
from trainables.data.demo import load_demo


# Each load renders the whole demo (about 5,000 images with the source): loaded once per module.
@pytest.fixture(scope="module")
def demo6():
    return load_demo(6)


@pytest.fixture(scope="module")
def demo4():
    return load_demo(4)


def test_demo_is_deterministic_and_balanced(demo6):
    again = load_demo(6)
    for split in ("train", "val", "test"):
        assert np.array_equal(getattr(demo6, split).images, getattr(again, split).images)
        assert np.array_equal(getattr(demo6, split).labels, getattr(again, split).labels)
    assert np.array_equal(demo6.source.train.images, again.source.train.images)
    assert demo6.fingerprint == again.fingerprint
    assert demo6.train.images.shape == (60, 3, 32, 32) and demo6.train.images.dtype == np.uint8
    assert Counter(demo6.train.labels.tolist()) == dict.fromkeys(range(10), 6)


def test_held_out_and_source_sizes_do_not_follow_n(demo6, demo4):
    """demo:N sets the target's training images only: val and test stay comparable across N,
    and every N of a seed shares one source set, hence one supervised stage."""
    n = len(demo.TARGET_CLASSES)
    assert Counter(demo6.val.labels.tolist()) == dict.fromkeys(range(n), demo.VAL_PER_CLASS)
    assert Counter(demo6.test.labels.tolist()) == dict.fromkeys(range(n), demo.TEST_PER_CLASS)
    source = demo6.source
    assert len(source.train) == len(demo.SOURCE_CLASSES) * demo.SOURCE_TRAIN_PER_CLASS
    assert len(source.val) == len(demo.SOURCE_CLASSES) * demo.SOURCE_VAL_PER_CLASS
    assert demo4.fingerprint != demo6.fingerprint
    assert demo4.source.fingerprint == demo6.source.fingerprint
    assert np.array_equal(demo4.source.val.images, source.val.images)
    assert np.array_equal(demo4.val.images, demo6.val.images)


def test_image_size_is_honoured():
    data = load_demo(4, image_size=20)
    assert data.train.images.shape[-1] == data.source.train.images.shape[-1] == 20


def test_splits_hold_different_images(demo6):
    seen = {}
    splits = {"train": demo6.train, "val": demo6.val, "test": demo6.test,
              "source train": demo6.source.train, "source val": demo6.source.val}
    for name, split in splits.items():
        for image in split.images:
            key = image.tobytes()
            assert key not in seen, f"an image of {name} is also in {seen[key]}"
            seen[key] = name


def test_neither_colour_nor_shape_alone_identifies_a_class():
    colours = Counter(c for c, _ in demo.TARGET_CLASSES)
    shapes = Counter(s for _, s in demo.TARGET_CLASSES)
    assert min(colours.values()) >= 2 and min(shapes.values()) >= 2
    assert len(set(demo.TARGET_CLASSES)) == len(demo.TARGET_CLASSES) >= 8


def test_source_shares_the_targets_parts_but_none_of_its_labels():
    target, source = set(demo.TARGET_CLASSES), set(demo.SOURCE_CLASSES)
    assert not target & source and len(source) == len(demo.SOURCE_CLASSES)
    source_colours = Counter(c for c, _ in source)
    source_shapes = Counter(s for _, s in source)
    for colour, shape in target:
        assert source_colours[colour] >= 3 and source_shapes[shape] >= 3
    assert len(source) >= 2 * len(target)
    assert (len(source) * demo.SOURCE_TRAIN_PER_CLASS
            >= 5 * len(target) * demo.DEFAULT_TRAIN_PER_CLASS), "a large source, a small target"


def test_source_set_rides_along_but_never_reaches_trials(demo4):
    data = demo4
    assert data.source is not None and data.source.num_classes == len(demo.SOURCE_CLASSES)
    assert data.source.classes == demo.class_names(demo.SOURCE_CLASSES)
    assert not set(data.source.classes) & set(data.classes)
    assert data.for_search().test is None and data.for_search().source is None


@pytest.mark.parametrize("shape", demo.SHAPES)
def test_every_shape_is_drawn_in_its_colour(shape):
    rng = np.random.default_rng(0)
    image = demo.render("blue", shape, rng, 32).astype(float).reshape(-1, 3)
    blue_pixels = (image[:, 2] > 150) & (image[:, 0] < 100)
    assert blue_pixels.sum() > 20


def test_a_class_batch_varies_in_pose():
    images = demo.render_batch("red", "triangle", 4, np.random.default_rng(0), 32)
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
    assert len({image.tobytes() for image in images}) == 4


def test_the_cache_entry_is_written_once_and_read_back(tmp_path, monkeypatch):
    first = load_demo(4, seed=2, cache_dir=tmp_path)
    entries = list((tmp_path / "data").iterdir())
    assert len(entries) == 1 and entries[0].suffix == ".npz"
    stamp = entries[0].stat().st_mtime_ns

    def no_rendering(*args):
        raise AssertionError("a cache hit must not render images")

    monkeypatch.setattr(demo, "generate", no_rendering)
    again = load_demo(4, seed=2, cache_dir=tmp_path)
    assert entries[0].stat().st_mtime_ns == stamp, "a cache hit must not rewrite the entry"
    assert np.array_equal(first.train.images, again.train.images)
    assert np.array_equal(first.source.train.labels, again.source.train.labels)


def test_seed_reaches_the_demo_images_through_load_dataset(demo4):
    from trainables.data.load import load_dataset

    other = load_dataset("demo:4", seed=1)
    assert other.train.images.shape == demo4.train.images.shape
    assert not np.array_equal(other.train.images, demo4.train.images)
    assert not np.array_equal(other.source.train.images, demo4.source.train.images)
    assert other.source.fingerprint != demo4.source.fingerprint


@pytest.mark.slow  # a supervised stage on the whole 3,000-image source, with a tiny model
def test_transfer_bench_prints_its_table():
    from bench import demo_transfer
    from tests.helpers import TINY_MODEL

    m = demo_transfer.measure(TINY_MODEL, seeds=(0,), per_class=4, pretrain_epochs=1, epochs=1)
    (run,) = m["runs"]
    assert all(0 <= run[k] <= 1 for k in ("source", *demo_transfer.SETTINGS))
    assert m["train"] == 40
    assert m["source_train"] == len(demo.SOURCE_CLASSES) * demo.SOURCE_TRAIN_PER_CLASS
    lines = demo_transfer.format_table(m).splitlines()
    assert len(lines) == 2 + 1 + len(demo_transfer.SETTINGS)
    assert lines[1].split() == ["val", "accuracy", "seed", "0", "mean", "time"]
