"""The cache: one root, entries that appear whole or not at all, a full disk said plainly, and
two experiments filling one cache at once."""

import errno
import hashlib
import queue
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from store.atomic import DiskFullError, atomic_dir, atomic_file
from trainables.cache import cache_root
from trainables.data.load import load_dataset
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


def test_a_replacing_directory_entry_swaps_out_the_old_one(tmp_path):
    final = tmp_path / "model"
    for who in ("first", "second"):
        with atomic_dir(final, replace=True) as tmp:
            (tmp / "who").write_text(who)
    assert (final / "who").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


# A full disk ------------------------------------------------------------------------------

TOO_BIG = 200_000  # bytes: more than the 64 kB tmpfs holds
ADVICE = "; free some space, or point --cache-dir / --storage at a larger disk"


def assert_disk_full(error: BaseException, final: Path, mount: Path) -> None:
    message = str(error)
    assert isinstance(error, DiskFullError) and error.errno == errno.ENOSPC
    assert re.fullmatch(rf"no space left on device writing {re.escape(str(final))} "
                        rf"\([\d.]+ k?B free on {re.escape(str(mount))}\)"
                        + re.escape(ADVICE), message), message
    assert "\n" not in message


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() or p.name.startswith(".")]


@pytest.mark.parametrize("writer", ["write_bytes", "np.save", "torch.save"])
def test_a_full_disk_fails_a_file_with_a_clear_message_and_no_leftover(full_disk, writer):
    final = full_disk / "features" / "x.npy"
    write = {"write_bytes": lambda p: p.write_bytes(b"x" * TOO_BIG),  # OSError ENOSPC
             "np.save": lambda p: np.save(p, np.zeros(TOO_BIG, np.uint8)),  # OSError, no errno
             "torch.save": lambda p: torch.save(torch.zeros(TOO_BIG, dtype=torch.uint8), p),
             }[writer]  # torch.save says RuntimeError: the nearly full disk tells
    with pytest.raises(DiskFullError) as caught, atomic_file(final) as tmp:
        write(tmp)
    assert_disk_full(caught.value, final, full_disk)
    assert leftovers(full_disk) == []


def test_a_full_disk_fails_a_directory_entry_with_a_clear_message_and_no_leftover(full_disk):
    entry = full_disk / "stages" / "entry"
    with pytest.raises(DiskFullError) as caught:
        write_stage(entry, {"w": torch.zeros(TOO_BIG // 4)}, {"stage": "supervised"})
    assert_disk_full(caught.value, entry, full_disk)
    with pytest.raises(DiskFullError) as caught, atomic_dir(entry) as tmp:
        (tmp / "part").write_bytes(b"x" * TOO_BIG)
    assert_disk_full(caught.value, entry, full_disk)
    assert leftovers(full_disk) == [] and not entry.exists()


def test_a_quota_counts_as_a_full_disk_and_other_errors_stay_as_they_are(tmp_path):
    final = tmp_path / "x.bin"
    with pytest.raises(DiskFullError, match="no space left on device writing"), \
            atomic_file(final):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")
    with pytest.raises(PermissionError), atomic_file(final):  # a roomy disk: not a full one
        raise PermissionError(errno.EACCES, "Permission denied")
    assert list(tmp_path.iterdir()) == []


def test_on_a_nearly_full_disk_an_error_that_names_another_cause_stays_as_it_is(full_disk):
    with pytest.raises(PermissionError), atomic_file(full_disk / "x.bin") as tmp:
        tmp.write_bytes(b"x")
        raise PermissionError(errno.EACCES, "Permission denied")
    assert leftovers(full_disk) == []


def image_folder(root: Path, per_class: int = 6, size: int = 48) -> Path:
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("data", ["folder", "demo"])
def test_preparing_data_into_a_full_cache_says_so(full_disk, tmp_path, data):
    # DiskFullError is not a DataError: run.py has to catch it by its own name
    source = str(image_folder(tmp_path / "images")) if data == "folder" else "demo"
    with pytest.raises(DiskFullError) as caught:
        load_dataset(source, image_size=48, cache_dir=full_disk)
    message = str(caught.value)
    assert message.startswith(f"no space left on device writing {full_disk / 'data'}/")
    assert message.endswith(ADVICE)
    assert leftovers(full_disk) == []


# Two experiments filling one cache ---------------------------------------------------------

SIZES = (16, 24, 32)  # one dataset entry per round, so both processes prepare each one
REPEATS = 5


def same_entries(seed: int = 0) -> tuple[Features, dict, dict]:
    rng = np.random.default_rng(seed)
    features = Features(rng.random((256, 256), np.float32), rng.random((64, 256), np.float32))
    state = {"w": torch.from_numpy(rng.random((256, 256), np.float32)), "b": torch.arange(9.0)}
    return features, state, {"stage": "supervised", "epochs": 1}


def digest(data, features: Features, stage: tuple) -> dict:
    """Every array's exact bytes, hashed: equal digests mean equal entries."""
    def sha(array) -> str:
        return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()

    weights, record = stage
    splits = {f"{name}.{part}": sha(getattr(getattr(data, name), part))
              for name in ("train", "val", "test") for part in ("images", "labels")}
    return {**splits, "classes": data.classes, "record": record,
            "features": [sha(features.train), sha(features.val)],
            "stage": {k: sha(v.numpy()) for k, v in weights.items()}}


def fill_cache(folder: str, cache: str, barrier, results) -> None:
    """One experiment's turn at the cache (a spawned process): prepare, write, read back."""
    features, state, record = same_entries()
    root = Path(cache)
    seen = []
    for size in SIZES:
        barrier.wait()  # both processes prepare the same entry at the same moment
        data = load_dataset(folder, image_size=size, cache_dir=root)
        for _ in range(REPEATS):
            barrier.wait()  # and write, then read, the same features and stage together
            write_features(root / "features" / "f.npz", features)
            write_stage(root / "stages" / "s", state, record)
            seen.append(digest(data, read_features(root / "features" / "f.npz"),
                               read_stage(root / "stages" / "s")))
    results.put(seen)


def collect(workers: list, results, timeout: float = 120) -> list:
    """Each worker's result; fails at once when one dies, instead of at the timeout."""
    seen, deadline = [], time.monotonic() + timeout
    try:
        while len(seen) < len(workers):
            try:
                seen.append(results.get(timeout=1))
            except queue.Empty:
                failed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
                assert not failed, f"a process filling the cache failed: exit codes {failed}"
                assert time.monotonic() < deadline, "the processes filling the cache hang"
        for worker in workers:
            worker.join(timeout=30)
            assert worker.exitcode == 0
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
    return seen


def test_two_experiments_filling_one_cache_at_once_leave_it_whole(tmp_path):
    import multiprocessing

    from trainables.data import imagefolder

    folder, cache = image_folder(tmp_path / "images", per_class=12), tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2, timeout=60), ctx.Queue()
    workers = [ctx.Process(target=fill_cache, args=(str(folder), str(cache), barrier, results))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    seen = collect(workers, results)
    assert seen[0] == seen[1]
    assert [p for p in cache.rglob("*") if ".tmp" in p.name] == []
    decoded = imagefolder.DECODED
    third = [digest(load_dataset(str(folder), image_size=size, cache_dir=cache),
                    read_features(cache / "features" / "f.npz"), read_stage(cache / "stages" / "s"))
             for size in SIZES for _ in range(REPEATS)]
    assert imagefolder.DECODED == decoded  # every size came from the cache the two filled
    assert third == seen[0]
    features, state, record = same_entries()
    back = read_features(cache / "features" / "f.npz")
    assert np.array_equal(back.train, features.train) and np.array_equal(back.val, features.val)
    weights, stored = read_stage(cache / "stages" / "s")
    assert all(torch.equal(weights[k], v) for k, v in state.items()) and stored == record
