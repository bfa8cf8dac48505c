"""Where Ray Tune writes a strategy's state and checkpoints, and through which filesystem.

Tune writes a run's state in a staging folder, then copies it file by file to the experiment
with `pyarrow.fs.copy_files`, on every save: tuner.pkl, experiment_state-*.json, the searcher's
state, and each trial's checkpoints. pyarrow's local filesystem truncates a file when it opens
it for writing, so a driver killed during a copy leaves a file cut short, and `--resume` then
fails on it (`EOFError: Ran out of input` unpickling tuner.pkl). A local experiment is therefore
written through `AtomicLocalWrites`: each file is written under a temporary name and renamed into
place when it is closed, so a reader sees the old file or the new one, whole. Object stores
(s3://, gs://) already make an object visible only once its upload completes, and keep pyarrow's
own filesystem. (A writer that raises inside `with fs.open_output_stream(...)` still has its
stream closed, and so what it wrote renamed into place: pyarrow's close cannot tell it failed.)

Tune pickles this filesystem into tuner.pkl and into every experiment_state-*.json: a resume
unpickles `store.tune_storage.AtomicLocalWrites` by that name, so it must keep it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from store.atomic import temporary_path
from store.uri import is_uri


def tune_filesystem(exp_uri: str) -> pafs.FileSystem | None:
    """The filesystem Tune's RunConfig and Tuner.restore take for `exp_uri`: None (pyarrow's
    own, from the URI) for a URI, atomic writes for a local path."""
    return None if is_uri(exp_uri) else pafs.PyFileSystem(AtomicLocalWrites())


def is_local(filesystem: pafs.FileSystem) -> bool:
    """Whether paths on `filesystem` are this machine's own, to read in place."""
    return isinstance(filesystem, pafs.LocalFileSystem) or (
        isinstance(filesystem, pafs.PyFileSystem)
        and isinstance(filesystem.handler, AtomicLocalWrites))


class _Replacing:
    """A file object writing a temporary file that replaces `final` when closed. A failed write,
    or a copy that fails and never closes it, drops the temporary file, and the old `final`
    stays."""

    def __init__(self, final: str):
        self.final = final
        # no .json or .pkl suffix: a resume copies every such file of the experiment back into
        # Tune's staging folder, and would take a killed writer's leftover along
        self.tmp = temporary_path(Path(final)).with_suffix(".part")
        self.file = open(self.tmp, "wb")  # noqa: SIM115 - closed by close(), when pyarrow does

    @property
    def closed(self) -> bool:
        return self.file.closed

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except BaseException:
            self.drop()  # now: the raised error's traceback keeps this object alive
            raise

    def flush(self) -> None:
        self.file.flush()

    def tell(self) -> int:
        return self.file.tell()

    def close(self) -> None:
        if self.file.closed:
            return
        try:
            self.file.close()  # its last flush can fail too (a full disk)
            os.replace(self.tmp, self.final)
        finally:
            self.tmp.unlink(missing_ok=True)  # gone already once replaced

    def drop(self) -> None:
        """Close without replacing `final`, and remove the temporary file."""
        if not self.file.closed:
            with contextlib.suppress(OSError):
                self.file.close()
        self.tmp.unlink(missing_ok=True)

    def __del__(self):
        # pyarrow drops a stream unclosed when its copy fails; `file` is unset if open() failed
        if hasattr(self, "file") and not self.file.closed:
            self.drop()


class AtomicLocalWrites(pafs.FileSystemHandler):
    """pyarrow's LocalFileSystem, with every file written whole or not at all (see the module's
    docstring). Reads, listings, moves and deletes are LocalFileSystem's own."""

    def __init__(self):
        self.local = pafs.LocalFileSystem()

    def __eq__(self, other):
        return isinstance(other, AtomicLocalWrites)

    def __ne__(self, other):
        return not isinstance(other, AtomicLocalWrites)

    def __reduce__(self):  # to trial actors, which upload their checkpoints through it
        return AtomicLocalWrites, ()

    def get_type_name(self) -> str:
        return "local+atomic"

    def normalize_path(self, path: str) -> str:
        return self.local.normalize_path(path)

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.local.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the contents of the local filesystem's root")

    def delete_file(self, path: str) -> None:
        self.local.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.local.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        tmp = temporary_path(Path(dest)).with_suffix(".part")
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def open_input_stream(self, path: str):
        return self.local.open_input_stream(path)

    def open_input_file(self, path: str):
        return self.local.open_input_file(path)

    def open_output_stream(self, path: str, metadata) -> pa.NativeFile:
        return pa.PythonFile(_Replacing(path), mode="w")

    def open_append_stream(self, path: str, metadata) -> pa.NativeFile:
        return self.local.open_append_stream(path, metadata=metadata)
