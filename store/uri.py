"""Experiments on storage every node reaches: `s3://`, `gs://` and other pyarrow URIs.

Ray Tune writes trial results and checkpoints straight to `--storage` when it is a URI. The
driver's own files (experiment.json, trials.json, the study, leaderboard, best configs, the
evaluation and reports) are written in a local staging copy of the experiment and uploaded
through `pyarrow.fs`; the analysis downloads an experiment's files, without its checkpoints
(~100 MB each), to read it. A URI may carry pyarrow's query options, such as
`s3://bucket/prefix?endpoint_override=host:port&scheme=http` for an S3-compatible server.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path, PurePosixPath

import pyarrow.fs as pafs

from store.atomic import DiskFullError, atomic_file

URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
CHECKPOINT = re.compile(r"^checkpoint_\d+$")  # Tune's checkpoint folders in a trial directory


class RemoteError(RuntimeError):
    """A URI that pyarrow cannot open, or storage that refused a read or write."""


def is_uri(text: str | Path) -> bool:
    return isinstance(text, str) and bool(URI.match(text))


def join_uri(uri: str, *parts: str) -> str:
    """`uri`/parts, keeping any `?query` options at the end."""
    base, _, query = uri.partition("?")
    path = "/".join([base.rstrip("/"), *parts])
    return f"{path}?{query}" if query else path


def open_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem for `uri` and the path on it; RemoteError names what failed."""
    try:
        return pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise RemoteError(f"{uri}: cannot open this storage ({error})") from None


def _found(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def exists(uri: str) -> bool:
    return _found(*open_uri(uri))


def download(uri: str, local: Path, checkpoints: bool = False) -> int:
    """Copy the experiment at `uri` into `local` (files there are replaced); Tune's checkpoint
    folders only if asked. Returns the number of files copied."""
    fs, root = open_uri(uri)
    if not _found(fs, root):
        return 0
    copied = 0
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        relative = PurePosixPath(info.path).relative_to(PurePosixPath(root))
        if info.type != pafs.FileType.File or (
                not checkpoints and any(CHECKPOINT.match(p) for p in relative.parts)):
            continue
        # a reader of the staging copy never sees half a file, nor two writers one temporary
        with atomic_file(Path(local, *relative.parts)) as tmp, \
                fs.open_input_stream(info.path) as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        copied += 1
    return copied


def local_copy(uri: str) -> Path:
    """A local copy of the experiment at `uri`, without checkpoints, in a new temporary folder
    named like the experiment."""
    import tempfile

    name = PurePosixPath(uri.partition("?")[0].rstrip("/")).name
    local = Path(tempfile.mkdtemp(prefix="transfer-search-")) / name
    try:
        copied = download(uri, local)
    except DiskFullError:
        raise
    except OSError as error:  # pyarrow's network and credential errors
        raise RemoteError(f"{uri}: cannot reach it ({str(error).splitlines()[0]}); check the "
                          "URI, the credentials and the network") from None
    if copied == 0:
        raise RemoteError(f"{uri}: no experiment there")
    return local


def upload(local: Path, uri: str, skip: tuple[str, ...] = ()) -> None:
    """Copy `local`'s entries, except the top-level names in `skip`, to the experiment at
    `uri`; each object is replaced whole, so a reader never sees half a file."""
    fs, root = open_uri(uri)
    fs.create_dir(root, recursive=True)
    for entry in sorted(Path(local).iterdir()):
        if entry.name in skip or entry.name.startswith("."):
            continue
        target = f"{root.rstrip('/')}/{entry.name}"
        if entry.is_dir():
            pafs.copy_files(str(entry), target, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=fs)
        else:
            with fs.open_output_stream(target) as dst:
                dst.write(entry.read_bytes())


def checkpoint_dirs(uri: str, trial_dir: str) -> list[str]:
    """The checkpoint folders (paths on the storage) of one trial, `trial_dir` relative to the
    experiment at `uri`."""
    fs, root = open_uri(join_uri(uri, trial_dir))
    if not _found(fs, root):
        return []
    return sorted(i.path for i in fs.get_file_info(pafs.FileSelector(root))
                  if i.type == pafs.FileType.Directory and CHECKPOINT.match(i.base_name))


def delete_dir(uri: str, path: str) -> None:
    """Delete `path`, a folder on the storage of `uri`."""
    fs, _ = open_uri(uri)
    fs.delete_dir(path)


def size(uri: str) -> int:
    """Bytes of every file under `uri`."""
    fs, root = open_uri(uri)
    if not _found(fs, root):
        return 0
    return sum(i.size or 0 for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
               if i.type == pafs.FileType.File)
