"""Tune's copies of a run's state into a local experiment: a file whole, or the old one."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch
from fsspec.implementations.local import LocalFileSystem

from store.tune_storage import tune_filesystem

SIZE = 4 << 20

# Tune's sync, as it runs on every save: the staging folder copied over the experiment's with
# pyarrow, each time with other contents (two staging folders, taken in turn), until killed.
COPIER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import pyarrow.fs as pafs
    from store.tune_storage import tune_filesystem
    staging, experiment, atomic = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "atomic"
    fs = tune_filesystem(experiment) if atomic else pafs.LocalFileSystem()
    for version in (0, 1):
        for name in ("tuner.pkl", "experiment_state.json", "searcher-state.pkl"):
            (staging / str(version)).mkdir(exist_ok=True)
            (staging / str(version) / name).write_bytes(bytes([version]) * {size})
    for round in range(10**6):
        pafs.copy_files(str(staging / str(round % 2)), experiment, destination_filesystem=fs,
                        chunk_size=1 << 16)
        if round == 0:
            (staging / "copied").touch()
""").format(size=SIZE)


def copy_until_killed(tmp_path: Path, mode: str) -> list[bytes]:
    """The contents of the files under Tune's names once the copier is killed."""
    staging, experiment = tmp_path / "staging", tmp_path / "experiment"
    staging.mkdir(parents=True)
    experiment.mkdir()  # as Tune makes it before it copies
    copier = subprocess.Popen([sys.executable, "-c", COPIER, str(staging), str(experiment), mode])
    try:
        deadline = time.monotonic() + 60
        while not (staging / "copied").exists():
            assert copier.poll() is None, f"the copier exited with {copier.returncode}"
            assert time.monotonic() < deadline, "the copier did not copy once in 60 s"
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        copier.send_signal(signal.SIGKILL)
        copier.wait(timeout=30)
    # a killed writer's temporary file stays, hidden, and not under a suffix a resume copies back
    left = [path.name for path in experiment.iterdir() if path.name.startswith(".")]
    assert mode == "plain" or all(name.endswith(".part") for name in left), left
    return [path.read_bytes() for path in sorted(experiment.iterdir())
            if not path.name.startswith(".")]


def whole(content: bytes) -> bool:
    return len(content) == SIZE and content == content[:1] * SIZE


def test_a_driver_killed_while_tune_copies_its_state_leaves_each_file_whole(tmp_path):
    for attempt in range(3):
        files = copy_until_killed(tmp_path / f"atomic{attempt}", "atomic")
        assert len(files) == 3 and all(whole(content) for content in files), \
            [len(content) for content in files]
    # pyarrow's own local filesystem, killed the same way, leaves files cut short (7 kills in 10
    # did, measured), which is what a resume then failed on
    assert any(not all(whole(content) for content in copy_until_killed(tmp_path / f"p{i}", "plain"))
               for i in range(10))


class FailingRead(LocalFileSystem):
    """A local source whose second read of a file fails, as a vanished staging file would."""

    def open(self, path, mode="rb", **kwargs):
        handle = super().open(path, mode, **kwargs)
        reads, read = [], handle.read

        def failing_read(size=-1):
            reads.append(size)
            if len(reads) > 1:
                raise OSError("read failed")
            return read(size)

        handle.read = failing_read
        return handle


def test_a_copy_that_fails_midway_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    source, experiment = tmp_path / "state.pkl", tmp_path / "experiment"
    source.write_bytes(b"new" * SIZE)
    experiment.mkdir()
    (experiment / "state.pkl").write_bytes(b"old")
    with pytest.raises(OSError, match="read failed"):
        pafs.copy_files(str(source), str(experiment / "state.pkl"), chunk_size=1 << 20,
                        source_filesystem=pafs.PyFileSystem(pafs.FSSpecHandler(FailingRead())),
                        destination_filesystem=tune_filesystem(str(experiment)))
    assert os.listdir(experiment) == ["state.pkl"]
    assert (experiment / "state.pkl").read_bytes() == b"old"


def test_a_write_that_fills_the_disk_keeps_the_old_file_and_leaves_no_temporary(full_disk):
    (full_disk / "tuner.pkl").write_bytes(b"old")
    source = full_disk.parent / "tuner.pkl"
    source.write_bytes(os.urandom(256 << 10))  # 4 times the disk
    with pytest.raises(OSError, match="No space left"):
        pafs.copy_files(str(source), str(full_disk / "tuner.pkl"),
                        destination_filesystem=tune_filesystem(str(full_disk)))
    assert os.listdir(full_disk) == ["tuner.pkl"]
    assert (full_disk / "tuner.pkl").read_bytes() == b"old"


def test_a_restarted_trial_reads_its_local_checkpoint_in_place(tmp_path, monkeypatch):
    """Ray's as_directory() copies a checkpoint on any filesystem but pyarrow's local one to a
    temporary folder first: ~100 MB more to write per restart, resume or PBT exploit."""
    from ray import tune
    from ray.train import Checkpoint

    from trainables import trainable

    torch.save({"epoch": 3}, tmp_path / trainable.CHECKPOINT_FILE)
    checkpoint = Checkpoint(str(tmp_path), filesystem=tune_filesystem(str(tmp_path)))
    monkeypatch.setattr(tune, "get_checkpoint", lambda: checkpoint)
    monkeypatch.setattr(Checkpoint, "to_directory", lambda *_: pytest.fail("copied"))
    assert trainable.tune_checkpoint() == {"epoch": 3}


def test_object_stores_keep_pyarrows_own_filesystem():
    assert tune_filesystem("s3://bucket/experiments/e") is None
    assert tune_filesystem("/srv/experiments/e").type_name == "py::local+atomic"
