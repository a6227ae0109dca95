"""One daemon per state directory: ``state_dir/flowdiff.lock`` is held with ``flock`` for the
life of the process. The kernel releases the lock when the process ends, even on kill -9, so
a file left behind never blocks a restart. The file holds the holder's pid, for the message.

Two daemons on one ``state_dir`` would both resume the same streams and emit every record
twice; the second one is refused instead (``serve`` exits 2 naming ``serve.state_dir``).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from flowdiff.daemon.state import StateError

LOCK_FILE = "flowdiff.lock"


class LockError(StateError):
    """The state directory is in use by another daemon (message names it and the pid)."""


def _in_use(directory: Path, path: Path, holder: str) -> LockError:
    return LockError(f"{directory} is in use by another flowdiff daemon "
                     f"(pid {holder or 'unknown'}, lock file {path}); stop it or give this "
                     "one its own state_dir")


class StateDirLock:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "StateDirLock":
        """Take the lock (creating the directory) or raise LockError naming the holder."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateError(f"cannot use {self.directory}: "
                             f"{exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise _in_use(self.directory, self.path, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock. The file stays: removing it could race with the next holder."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def check_unlocked(directory: str | Path) -> str | None:
    """The LockError message when a running daemon holds ``directory``'s lock, else None
    (takes and drops the lock at once; nothing is created)."""
    directory = Path(directory)
    path = directory / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None  # no lock file (or no directory yet): nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return str(_in_use(directory, path, os.pread(fd, 32, 0).decode(errors="replace").strip()))
    finally:
        os.close(fd)  # closing drops a lock taken here
    return None
