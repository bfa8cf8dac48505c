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


def spoil(folder, count=None):
    """Overwrite image files of `folder` (all, or the first `count`) with bytes no decoder
    reads; returns how many."""
    rng = np.random.default_rng(1)
    files = sorted(folder.iterdir())[:count]
    for path in files:
        path.write_bytes(rng.bytes(200))
    return len(files)


def one_error(root, cache_dir=None, caplog=None) -> str:
    """The DataError's message of loading `root`; it is one line, and no warning about the
    skipped files is logged beside it (the count is in the message)."""
    with caplog.at_level(logging.WARNING), pytest.raises(DataError) as error:
        load_dataset(str(root), image_size=8, cache_dir=cache_dir)
    message = str(error.value)
    assert "\n" not in message
    assert not [r for r in caplog.records if "skipped" in r.getMessage()]
    return message


@pytest.mark.parametrize("cached", [False, True], ids=["in-memory", "cached"])
def test_a_tree_whose_images_all_fail_to_decode_is_one_data_error(tmp_path, caplog, cached):
    root = make_tree(tmp_path / "data", per_class=4)
    for name in ("apple", "pear"):
        spoil(root / name)
    cache = tmp_path / "cache" if cached else None
    for _ in range(2 if cached else 1):  # the second load reads the unreadable list back
        message = one_error(root, cache, caplog)
        assert message.startswith(f"{root}: no image can be decoded: all 8 image files are "
                                  "corrupt or truncated and were skipped (e.g. ")
        assert message.endswith("; remove or replace the corrupt files")


def test_a_class_left_without_images_names_it_the_count_and_the_fix(tmp_path, caplog):
    root = make_tree(tmp_path / "data", classes=("apple", "pear", "plum"), per_class=6)
    spoil(root / "pear")
    spoil(root / "apple", count=1)
    assert one_error(root, caplog=caplog) == (
        f"{root / 'pear'}: class folder has no decodable images: all 6 of its files are corrupt "
        "or truncated and were skipped (7 skipped in all); remove or replace the corrupt files, "
        "or drop the class folder")
    spoil(root / "plum")
    assert one_error(root, caplog=caplog).startswith(
        f"{root}: class folders pear, plum have no decodable images: all 12 of their files")


def test_given_split_folders_with_nothing_decodable_are_one_data_error(tmp_path, caplog):
    for split in ("train", "val", "test"):
        make_tree(tmp_path / split, per_class=5)
    spoil(tmp_path / "val" / "pear")
    assert one_error(tmp_path, caplog=caplog).startswith(
        f"{tmp_path / 'val' / 'pear'}: class folder has no decodable images: all 5 of its files")
    assert one_error(tmp_path, caplog=caplog).endswith("or drop the class folder from every "
                                                       "split folder")
    make_tree(tmp_path / "val", per_class=5)  # rewritten: readable again
    for name in ("apple", "pear"):
        spoil(tmp_path / "test" / name)
    assert one_error(tmp_path, caplog=caplog).startswith(
        f"{tmp_path / 'test'}: no image can be decoded: all 10 image files")


def test_a_class_left_with_too_few_images_to_split_says_so_in_one_line(tmp_path, caplog):
    root = make_tree(tmp_path / "data", per_class=6)
    spoil(root / "pear", count=5)
    message = one_error(root, caplog=caplog)
    assert message.startswith("data: class pear has 1 image: too few to split into train, val "
                              "and test")
    assert "lower the val and test fractions of --split" in message
    assert "(5 unreadable image files were skipped, e.g. " in message


def test_a_flat_pretext_folder_with_nothing_decodable_is_one_data_error(tmp_path):
    from trainables.data.load import load_pretrain_data

    make_tree(tmp_path, classes=("flat",), per_class=3)
    spoil(tmp_path / "flat")
    with pytest.raises(DataError, match="flat: no image can be decoded: all 3 image files"):
        load_pretrain_data(str(tmp_path / "flat"), image_size=8)


def test_torchvision_sets_with_an_empty_split_or_a_class_missing_from_train(tmp_path,
                                                                            monkeypatch):
    import torchvision

    from tests.test_torchvision_data import fake_mnist
    from trainables.data import torchvision_sets

    fake_mnist(tmp_path / "unparsable", n_test=0)  # a file of a header and no images
    with pytest.raises(DataError, match="torchvision:MNIST: cannot read its files in "):
        load_dataset("torchvision:MNIST", image_size=8, cache_dir=tmp_path / "unparsable")
    fake_mnist(tmp_path / "tiny", n_train=10)  # labels 0..9 once each: val takes them all
    with pytest.raises(DataError, match="class 0 - zero has 1 image: too few to split"):
        load_dataset("torchvision:MNIST", image_size=8, cache_dir=tmp_path / "tiny")
    fake_mnist(tmp_path / "five", n_train=5)  # classes 5..9 nowhere in train
    with pytest.raises(DataError, match=r"the train split has no images of classes 5 - five, "):
        load_dataset("torchvision:MNIST", image_size=8, cache_dir=tmp_path / "five")
    monkeypatch.setattr(torchvision_sets, "open_splits", lambda cls, root: {
        "train": torchvision.datasets.FakeData(20, (3, 8, 8)),
        "test": torchvision.datasets.FakeData(0, (3, 8, 8))})
    with pytest.raises(DataError, match="torchvision:FakeData: its test split has no images"):
        load_dataset("torchvision:FakeData", image_size=8, cache_dir=tmp_path / "empty")


@pytest.mark.parametrize("broken", ["all", "one class"])
def test_the_command_exits_2_with_one_line_and_writes_no_experiment(tmp_path, monkeypatch,
                                                                    capsys, broken):
    from search.run import main

    monkeypatch.chdir(tmp_path)
    root = make_tree(tmp_path / "data", classes=("apple", "pear", "plum"), per_class=4)
    for name in ("apple", "pear", "plum") if broken == "all" else ("pear",):
        spoil(root / name)
    code = main(["--strategy", "scratch", "--data", str(root), "--storage",
                 str(tmp_path / "runs"), "--name", "x", "--cache-dir", str(tmp_path / "cache")])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("run.py: error: ") and "Traceback" not in out + err
    assert ("no image can be decoded" if broken == "all" else "pear: class folder has no "
            "decodable images") in lines[0]
    assert not (tmp_path / "runs" / "x").exists()
