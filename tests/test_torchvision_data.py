"""`torchvision:NAME`: sets with a train flag, sets without splits, and no network."""

import numpy as np
import pytest

from trainables.data.dataset import DataError
from trainables.data.load import load_dataset


def write_idx(path, array: np.ndarray, type_code: int) -> None:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.tobytes())


def fake_mnist(root, n_train=60, n_test=20):
    raw = root / "torchvision" / "MNIST" / "MNIST" / "raw"  # root/NAME is the dataset's root
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte",
                  rng.integers(0, 255, (n, 28, 28), dtype=np.uint8), 0x08)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 10, 0x08)


def test_train_flag_sets_hold_out_val_from_train_and_keep_test(tmp_path):
    fake_mnist(tmp_path)
    data = load_dataset("torchvision:MNIST", image_size=16, cache_dir=tmp_path)
    assert len(data.classes) == 10 and data.classes[0].startswith("0")
    assert len(data.test) == 20 and len(data.train) + len(data.val) == 60
    assert data.train.images.shape[1:] == (3, 16, 16)  # greyscale -> RGB
    again = load_dataset("torchvision:MNIST", image_size=16, cache_dir=tmp_path)
    assert np.array_equal(again.train.images, data.train.images)


def test_sets_without_splits_are_split_here(tmp_path):
    data = load_dataset("torchvision:FakeData", image_size=8, cache_dir=tmp_path)
    assert len(data.train) + len(data.val) + len(data.test) == 1000
    assert len(data.test) > 0 and data.num_classes == 10


def test_offline_download_names_the_dataset_and_the_cache_path(tmp_path):
    with pytest.raises(DataError) as error:
        load_dataset("torchvision:CIFAR10", cache_dir=tmp_path)
    message = str(error.value)
    assert "torchvision:CIFAR10" in message and str(tmp_path / "torchvision" / "CIFAR10") in message


def test_unknown_torchvision_name(tmp_path):
    with pytest.raises(DataError, match="not a torchvision dataset"):
        load_dataset("torchvision:CIFAR11", cache_dir=tmp_path)
