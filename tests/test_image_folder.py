"""ImageFolder trees: layouts, splits without leakage, odd image modes, and bad data."""

import logging

import numpy as np
import pytest
from PIL import Image

from trainables.data.dataset import DataError
from trainables.data.load import load_dataset


def make_tree(root, classes=("apple", "pear"), per_class=10, size=(40, 30)):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{i}.jpg")
    return root


def test_class_folders_are_split_stratified_without_leakage(tmp_path):
    data = load_dataset(str(make_tree(tmp_path, per_class=20)), image_size=16, seed=1)
    assert data.classes == ("apple", "pear")
    assert (len(data.train), len(data.val), len(data.test)) == (28, 6, 6)
    assert np.bincount(data.val.labels).tolist() == [3, 3]
    images = [img.tobytes() for s in (data.train, data.val, data.test) for img in s.images]
    assert len(set(images)) == len(images) == 40
    assert data.train.images.shape[1:] == (3, 16, 16)
    other = load_dataset(str(tmp_path), image_size=16, seed=2)
    assert not np.array_equal(other.val.images, data.val.images)


def test_given_train_val_test_folders_are_used_as_given(tmp_path):
    for split, n in (("train", 6), ("valid", 3), ("test", 2)):
        make_tree(tmp_path / split, per_class=n)
    data = load_dataset(str(tmp_path), image_size=8)
    assert (len(data.train), len(data.val), len(data.test)) == (12, 6, 4)


def test_modes_are_converted_and_bad_files_skipped_and_counted(tmp_path, caplog):
    make_tree(tmp_path, per_class=6)
    Image.new("L", (20, 20), 128).save(tmp_path / "apple" / "grey.png")
    Image.new("P", (20, 20)).save(tmp_path / "apple" / "palette.png")
    Image.new("RGBA", (20, 20), (1, 2, 3, 0)).save(tmp_path / "pear" / "alpha.png")
    Image.new("CMYK", (20, 20)).save(tmp_path / "pear" / "cmyk.jpg")
    Image.fromarray(np.full((20, 20), 60000, np.uint16)).save(tmp_path / "pear" / "deep.png")
    (tmp_path / "pear" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = (tmp_path / "apple" / "apple_0.jpg").read_bytes()
    (tmp_path / "apple" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (tmp_path / "apple" / "README.txt").write_text("ignored")
    with caplog.at_level(logging.WARNING):
        data = load_dataset(str(tmp_path), image_size=8)
    total = len(data.train) + len(data.val) + len(data.test)
    skipped = [r.message for r in caplog.records if "skipped" in r.message]
    assert len(skipped) == 1 and "skipped 2 unreadable images" in skipped[0]
    assert "broken.jpg" in skipped[0] and "truncated.jpg" in skipped[0]
    assert total == 12 + 5  # the five odd modes are converted, the two bad files are not
    assert data.train.images.dtype == np.uint8 and data.train.images.shape[1] == 3


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda root: root.mkdir(), "no class folders"),
        (lambda root: make_tree(root, classes=("only",)), "only one class"),
        (lambda root: (make_tree(root), (root / "empty").mkdir()), "empty: class folder has no"),
        (lambda root: (make_tree(root / "train"), make_tree(root / "val", ("apple", "plum"))),
         "lacks ['pear'] and adds ['plum']"),
    ],
)
def test_bad_trees_raise_one_clear_error(tmp_path, build, message):
    root = tmp_path / "data"
    build(root)
    with pytest.raises(DataError) as error:
        load_dataset(str(root))
    assert message in str(error.value)


def test_missing_path_and_file_instead_of_folder(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(str(tmp_path / "nope"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        load_dataset(str(tmp_path / "file.txt"))


def test_second_load_decodes_nothing_and_a_changed_file_is_decoded_again(tmp_path):
    from trainables.data import imagefolder

    root = make_tree(tmp_path / "data", per_class=10)
    cache = tmp_path / "cache"
    before = imagefolder.DECODED
    first = load_dataset(str(root), image_size=16, cache_dir=cache)
    assert imagefolder.DECODED - before == 20
    second = load_dataset(str(root), image_size=16, cache_dir=cache)
    assert imagefolder.DECODED - before == 20, "the cached run must decode nothing"
    assert np.array_equal(first.train.images, second.train.images)
    assert first.train.paths == second.train.paths and first.fingerprint == second.fingerprint
    Image.new("RGB", (30, 30), (255, 0, 0)).save(root / "apple" / "apple_3.jpg")
    third = load_dataset(str(root), image_size=16, cache_dir=cache)
    assert imagefolder.DECODED - before == 40
    assert third.fingerprint != first.fingerprint
    load_dataset(str(root), image_size=24, cache_dir=cache)
    assert imagefolder.DECODED - before == 60, "another image size is another cache entry"


def test_no_file_appears_in_two_splits(tmp_path):
    data = load_dataset(str(make_tree(tmp_path, classes=("a", "b", "c"), per_class=15)),
                        image_size=8, seed=3)
    splits = [set(s.paths) for s in (data.train, data.val, data.test)]
    assert sum(map(len, splits)) == 45 == len(set().union(*splits))
    for split in (data.train, data.val, data.test):
        for path, label in zip(split.paths, split.labels, strict=True):
            assert f"/{data.classes[label]}/" in path


def test_huge_images_and_thousands_of_tiny_images(tmp_path):
    root = make_tree(tmp_path / "big", per_class=3, size=(3000, 2000))
    data = load_dataset(str(root), image_size=32)
    assert data.train.images.shape[1:] == (3, 32, 32)
    tiny = tmp_path / "tiny"
    rng = np.random.default_rng(0)
    for c in ("x", "y"):
        (tiny / c).mkdir(parents=True)
        for i in range(1000):
            Image.fromarray(rng.integers(0, 255, (3, 4, 3), dtype=np.uint8)).save(
                tiny / c / f"{i}.png")
    data = load_dataset(str(tiny), image_size=8, cache_dir=tmp_path / "cache")
    assert len(data.train) + len(data.val) + len(data.test) == 2000
