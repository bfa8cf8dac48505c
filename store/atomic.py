"""Atomic writes: a reader sees a whole file or folder, or none, never half of one.

    with atomic_file(path) as tmp:
        tmp.write_text(text)

Experiments and the per-machine cache are written by processes that may run side by side
(trials, stages, several searches on one machine), so every file and folder is written under a
temporary name and renamed into place. A write that fails for want of space raises
DiskFullError, whose message says where and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def temporary_path(final: Path) -> Path:
    # unique per writer, so two processes (or threads) never share a temporary name; it keeps
    # `final`'s suffix, so writers that add one when it is missing (np.savez) add none
    unique = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
    return final.with_name(f".{final.stem}.{unique}.tmp{final.suffix}")


class DiskFullError(OSError):
    """An entry could not be written because its disk (or quota) is full; str() is one line
    that says where, how much is left, and what to do."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


# Not every writer reports a full disk as ENOSPC: np.save raises an OSError without an errno
# ("requested and written"), torch.save a RuntimeError. Such a failure, one that names no other
# cause, with less than this left free on its disk is taken to be for want of space.
NEARLY_FULL = 1 << 20


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _mount(path: Path) -> Path:
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _size(n: float) -> str:
    units = ["B", "kB", "MB", "GB"]
    while n >= 1000 and len(units) > 1:
        n, units = n / 1000, units[1:]
    return f"{n:.0f} B" if units[0] == "B" else f"{n:.1f} {units[0]}"


def _disk_full(error: Exception, final: Path) -> DiskFullError | None:
    """What `error`, raised while writing `final`, means if the disk is full; else None.

    Called before the temporary file is removed, so the free space is what the failed write
    left.
    """
    near = _existing(final.parent)
    try:
        free = shutil.disk_usage(near).free
    except OSError:
        free = None
    code = getattr(error, "errno", None)
    full = (code in (errno.ENOSPC, errno.EDQUOT)
            or "No space left on device" in str(error)  # safetensors' error carries only this
            or (code is None and isinstance(error, (OSError, RuntimeError))
                and free is not None and free < NEARLY_FULL))
    if not full or isinstance(error, DiskFullError):
        return None
    left = "free space unknown" if free is None else f"{_size(free)} free"
    return DiskFullError(errno.ENOSPC, f"no space left on device writing {final} ({left} on "
                         f"{_mount(near.resolve())}); free some space, or point --cache-dir / "
                         "--storage at a larger disk", str(final))


@contextlib.contextmanager
def _failing_as_disk_full(final: Path) -> Iterator[None]:
    try:
        yield
    except Exception as error:
        full = _disk_full(error, final)
        if full is None:
            raise
        raise full from error


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `final` in one rename.

    A write that fails for want of space raises DiskFullError; the temporary file is removed.
    """
    tmp = temporary_path(final)
    try:
        with _failing_as_disk_full(final):
            final.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it becomes `final` in one rename.

    When another writer got there first, its entry is kept and this one dropped: entries are
    keyed by their content, so both are the same. With `replace` (a folder that is not a cache
    entry, e.g. a re-evaluated model) an existing `final` is swapped out instead. A write that
    fails for want of space raises DiskFullError; the temporary folder is removed.
    """
    tmp = temporary_path(final)
    try:
        with _failing_as_disk_full(final):
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            yield tmp
        if replace and final.is_dir():
            # two renames: a reader sees the old folder, the new or none
            old = temporary_path(final)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):  # final exists: a concurrent writer came first
                tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
