"""The per-machine cache: where it lives, how entries are keyed, and how they are written.

Prepared images (`data/`), torchvision downloads (`torchvision/`), pretraining stages
(`stages/`) and frozen-backbone features (`features/`) live under one root, shared by every
experiment on the machine. Experiments may run side by side, so every entry is written under a
temporary name and renamed into place: a reader sees a whole entry or none, never half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

ENV_VAR = "TRANSFER_SEARCH_CACHE"
# staging: local copies of experiments whose --storage is a URI (s3://, gs://)
AREAS = ("data", "stages", "features", "torchvision", "staging")


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`--cache-dir`, else $TRANSFER_SEARCH_CACHE, else ~/.cache/transfer-search; absolute."""
    root = cache_dir or os.environ.get(ENV_VAR) or Path.home() / ".cache" / "transfer-search"
    return Path(root).expanduser().resolve()


def area(root: Path | None, name: str) -> Path | None:
    """The folder of one kind of entry under `root`; None when caching is off (no root)."""
    if name not in AREAS:
        raise ValueError(f"unknown cache area {name!r}; expected one of {AREAS}")
    return None if root is None else root / name


def fingerprint(*parts: object) -> str:
    """A short, stable hash of JSON-able parts: the key of a cache entry."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _temporary(final: Path) -> Path:
    # unique per writer, so two processes (or threads) never share a temporary name; it keeps
    # `final`'s suffix, so writers that add one when it is missing (np.savez) add none
    unique = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
    return final.with_name(f".{final.stem}.{unique}.tmp{final.suffix}")


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `final` in one rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it becomes `final` in one rename.

    When another writer got there first, its entry is kept and this one dropped: entries are
    keyed by their content, so both are the same.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(final)
    tmp.mkdir()
    try:
        yield tmp
        with contextlib.suppress(OSError):  # final exists: a concurrent writer finished first
            tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
