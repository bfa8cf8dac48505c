"""The per-machine cache: where it lives and how entries are keyed.

Prepared images (`data/`), torchvision downloads (`torchvision/`), pretraining stages
(`stages/`) and frozen-backbone features (`features/`) live under one root, shared by every
experiment on the machine. Experiments may run side by side, so entries are written with
store.atomic's atomic_file and atomic_dir: a reader sees a whole entry or none.
"""

from __future__ import annotations

import hashlib
import json
import os
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
