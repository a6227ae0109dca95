"""The one way files are replaced: a crash at any moment leaves the old file or the new one,
never a torn one.

Every write goes to a temporary file in the target's own directory (so the rename cannot
cross file systems), is flushed and fsynced, renamed over the target with ``os.replace``
(atomic on POSIX), and the directory is fsynced so the rename itself survives a power cut.
On any error, including KeyboardInterrupt, the temporary file is removed and the target is
untouched. A process killed with SIGKILL mid-write leaves a ``.NAME.*.tmp`` file beside the
untouched target; nothing reads those, and the next write of the same target removes them
(so a target has one writer at a time: the daemon's state under its lock, a trainer's
checkpoint, a command's output).

* ``atomic_file(path)``: a context manager yielding the open temporary file;
* ``write_bytes_atomic`` / ``write_text_atomic``: whole contents at once;
* ``write_atomic_via(path, write)``: for libraries that only write to a file name
  (matplotlib's ``savefig``, gensim); the temporary name keeps the target's suffix.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator

FILE_MODE = 0o644  # mkstemp creates 0600; the files written here are for others to read too


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def remove_stale_temps(path: str | os.PathLike) -> None:
    """Remove temporary files an earlier, killed writer of ``path`` left behind."""
    path = Path(path)
    for stale in path.parent.glob(f"{_temp_prefix(path)}*.tmp*"):
        stale.unlink(missing_ok=True)


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename or creation in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _temporary_beside(path: Path, suffix: str, fsync: bool) -> Iterator[tuple[int, str]]:
    """(open descriptor, name) of a temporary file beside ``path``; renamed over ``path``
    when the block ends without an exception, removed when it raises."""
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp" + suffix,
                               dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        yield fd, tmp
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if fsync:
        fsync_directory(path.parent)


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None,
                fsync: bool = True) -> Iterator[IO]:
    """Yield a temporary file (opened with ``mode``, ``"wb"`` or ``"w"``) that replaces
    ``path`` when the block ends without an exception."""
    with _temporary_beside(Path(path), "", fsync) as (fd, _name):
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path, "wb") as handle:
        handle.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_atomic_via(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """``write(temporary_name)`` then the same fsync-and-rename; for writers that take a file
    name (they write the inode the open descriptor refers to, so its fsync covers them).
    The temporary name ends with the target's suffix (formats chosen by extension)."""
    path = Path(path)
    with _temporary_beside(path, path.suffix, True) as (fd, name):
        try:
            write(name)
            os.fsync(fd)
        finally:
            os.close(fd)
