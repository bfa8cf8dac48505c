"""The cache: one root, and entries that appear whole or not at all."""

import numpy as np
import pytest
import torch

from trainables.cache import atomic_dir, atomic_file, cache_root
from trainables.features import Features, read_features, write_features
from trainables.pretrain import SAMPLES_FILE, read_stage, write_stage


def test_root_is_the_flag_else_the_environment_else_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TRANSFER_SEARCH_CACHE", str(tmp_path / "env"))
    assert cache_root(tmp_path / "flag") == tmp_path / "flag"
    assert cache_root() == tmp_path / "env"
    monkeypatch.delenv("TRANSFER_SEARCH_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "transfer-search"


def test_a_failed_file_write_leaves_nothing(tmp_path):
    final = tmp_path / "features" / "x.npz"
    with pytest.raises(RuntimeError), atomic_file(final) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert not final.exists() and list(final.parent.iterdir()) == []


def test_a_file_appears_under_its_own_name_only_when_complete(tmp_path):
    final = tmp_path / "x.npz"
    with atomic_file(final) as tmp:
        np.savez(tmp, a=np.arange(3))  # savez adds no second suffix to the temporary name
        assert not final.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["x.npz"]
    assert np.load(final)["a"].tolist() == [0, 1, 2]


def test_directory_entries_first_writer_wins_and_failures_leave_nothing(tmp_path):
    final = tmp_path / "entry"
    with pytest.raises(ValueError), atomic_dir(final) as tmp:
        (tmp / "part").write_text("half")
        raise ValueError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(final) as first, atomic_dir(final) as second:
        (first / "who").write_text("first")
        (second / "who").write_text("second")
    assert (final / "who").read_text() == "second"  # the inner writer finished first
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_features_and_stages_round_trip_through_the_cache(tmp_path):
    features = Features(np.ones((4, 3), np.float32), np.zeros((2, 3), np.float32))
    assert read_features(tmp_path / "f.npz") is None
    write_features(tmp_path / "f.npz", features)
    back = read_features(tmp_path / "f.npz")
    assert np.array_equal(back.train, features.train) and np.array_equal(back.val, features.val)

    assert read_stage(tmp_path / "stage") is None
    state = {"w": torch.arange(4.0)}
    samples = np.zeros((6, 4, 3), np.uint8)
    write_stage(tmp_path / "stage", state, {"stage": "colorization", "samples": samples})
    weights, record = read_stage(tmp_path / "stage")
    assert torch.equal(weights["w"], state["w"])
    assert record == {"stage": "colorization"}  # arrays stay out of the JSON record
    assert (tmp_path / "stage" / SAMPLES_FILE).is_file()
