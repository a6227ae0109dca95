"""Rotating output files: each file is written as ``<name>.part`` and renamed to ``<name>``
when complete (so a reader never sees half a file), rotated by record count, size or age.

Used by the ``file`` and ``pcap`` exporters. The format is a ``SegmentWriter`` made by a
factory per file; this module owns naming, counting, the rename and the I/O error message.
Completed files are never opened again, so a later failure (disk full) cannot damage them.

A failed write (disk full) is taken back so that a retry of the same chunk neither loses nor
repeats records: every chunk is flushed to the file, so a plain (not gzip) file of a
``resumable`` format is cut back to the end of its last whole chunk and stays open; a gzip or
Parquet file cannot be cut (compressor or footer state) and is abandoned: deleted when it
held no earlier chunk, else left as ``.part`` with an ERROR naming how many records only it
holds. No empty ``.part`` is ever left behind.

The open ``.part`` is held with ``flock``; ``adopt_orphans`` completes the unlocked ``.part``
files a killed process left behind (cut to whole records, renamed into place), so rows an
exporter acknowledged before a kill -9 reach a completed file.
"""

from __future__ import annotations

import fcntl
import gzip
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Callable, Protocol

from flowdiff.exporters.base import ExporterError

log = logging.getLogger(__name__)


class SegmentWriter(Protocol):
    """One output file's format: ``begin`` writes any header, ``write`` one chunk, ``end``
    any trailer. The stream belongs to the rotator (it closes it). ``resumable``: a new
    writer on a file cut back to a chunk boundary continues it correctly (no state beyond
    the bytes written; ``begin`` is called again only when the file was cut to empty)."""

    resumable: bool

    def begin(self) -> None: ...

    def write(self, chunk) -> None: ...

    def end(self) -> None: ...


@dataclass(frozen=True)
class RotationPolicy:
    max_records: int | None = None     # records per file (exact: batches are split)
    max_bytes: int | None = None       # bytes on disk; a file ends after the write crossing it
    max_seconds: float | None = None   # age of a file; checked on each write and flush


class RotatingFiles:
    """Writes ``directory/<prefix>-<UTC start>-<n><suffix>`` files one after another."""

    def __init__(self, directory: Path, prefix: str, suffix: str, policy: RotationPolicy,
                 make_writer: Callable[[BinaryIO], SegmentWriter], *, gzip_level: int | None = None,
                 fsync: bool = True, clock: Callable[[], float] = time.time):
        self.directory = Path(directory)
        self.prefix = prefix
        self.suffix = suffix + (".gz" if gzip_level is not None else "")
        self.policy = policy
        self.make_writer = make_writer
        self.gzip_level = gzip_level
        self.fsync = fsync
        self.clock = clock
        self.completed: list[Path] = []   # files renamed into place, oldest first
        self._counter = 0
        self._path: Path | None = None    # final name of the open file
        self._raw: BinaryIO | None = None
        self._stream: BinaryIO | None = None
        self._writer: SegmentWriter | None = None
        self._records = 0
        self._good = 0                    # bytes of the open file holding whole chunks
        self._opened_at = 0.0

    # ------------------------------------------------------------- state
    @property
    def part_path(self) -> Path | None:
        return None if self._path is None else self._path.with_name(self._path.name + ".part")

    def room(self) -> int | None:
        """Records the open (or next) file still takes under ``max_records``; None: no limit."""
        if self.policy.max_records is None:
            return None
        if self._path is None or self._full():  # a full open file is completed first
            return self.policy.max_records
        return self.policy.max_records - self._records

    # ------------------------------------------------------------- writing
    def write(self, chunk, records: int) -> None:
        """Append ``chunk`` (``records`` records, at most ``room()``) to the open file,
        opening one first if needed; rotates when a limit is reached. On an error nothing of
        ``chunk`` stays in any file (see the module note), so the caller may retry it."""
        if self._path is not None and (self._too_old() or self._full()):
            self.finish()
        if self._path is None:
            self._open()
        try:
            self._writer.write(chunk)
            if self.policy.max_bytes is not None and self._stream is not self._raw:
                self._stream.flush()  # sync-flush gzip: size on disk is exact
            self._raw.flush()  # the chunk is in the file: a later failure cannot take it back
        except OSError as exc:
            error = self._error("write to", exc)
            self._undo_write()
            raise error from exc
        self._records += records
        self._good = self._raw.tell()
        big = self.policy.max_bytes is not None and self._size() >= self.policy.max_bytes
        if self._full() or big:
            try:
                self.finish()
            except ExporterError as exc:  # the chunk is written: complete the file next time
                log.warning("%s; retried before the next write", exc)

    def rotate_if_old(self) -> None:
        if self._path is not None and self._too_old():
            self.finish()

    def finish(self) -> None:
        """Complete the open file: trailer, flush, fsync, close, rename ``.part`` -> final.
        On an error a plain file stays open as it was (completing it is tried again)."""
        if self._path is None:
            return
        part, final = self.part_path, self._path
        try:
            self._writer.end()
            if self._stream is not self._raw:
                self._stream.close()      # gzip trailer; leaves the raw file open
            self._raw.flush()
            if self.fsync:
                os.fsync(self._raw.fileno())
            self._raw.close()
            os.replace(part, final)
        except OSError as exc:
            error = self._error("complete", exc)
            if not self._resumable() or self._raw.closed:
                self._abandon()
            raise error from exc
        self.completed.append(final)
        log.info("completed %s (%d records)", final, self._records)
        self._reset()

    def flush(self) -> None:
        if self._stream is not None:
            try:
                self._stream.flush()
            except OSError as exc:
                error = self._error("flush", exc)
                self._undo_write()
                raise error from exc

    def adopt_orphans(self, usable_bytes: Callable[[Path], int]) -> list[Path]:
        """Complete the ``<prefix>-*<suffix>.part`` files an earlier, killed process left in
        the directory (a live writer's open file is locked and skipped): each is cut to its
        first ``usable_bytes(part)`` bytes (whole records) and renamed into place, or
        deleted when nothing usable is left. Returns the completed files."""
        adopted = []
        for part in sorted(self.directory.glob(f"{self.prefix}-*{self.suffix}.part")):
            final = part.with_name(part.name.removesuffix(".part"))
            try:
                with open(part, "r+b") as handle:
                    try:
                        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # another process is writing it
                    keep = usable_bytes(part)
                    handle.truncate(keep)
                    if keep and self.fsync:
                        os.fsync(handle.fileno())
                    if keep and not final.exists():
                        os.replace(part, final)  # under the lock: no writer can take it
                if not keep:
                    part.unlink()
                    continue
            except OSError as exc:
                log.error("cannot complete %s left by an earlier run: %s", part, exc)
                continue
            self.completed.append(final)
            adopted.append(final)
            log.warning("completed %s left by an earlier run (%d bytes of whole records)",
                        final, keep)
        return adopted

    # ------------------------------------------------------------- internals
    def _open(self) -> None:
        started = self.clock()
        stamp = datetime.fromtimestamp(started, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        while True:
            self._counter += 1
            final = self.directory / f"{self.prefix}-{stamp}-{self._counter:06d}{self.suffix}"
            if not final.exists() and not final.with_name(final.name + ".part").exists():
                break
        self._path, self._opened_at, self._records = final, started, 0
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._raw = open(self.part_path, "xb")
            fcntl.flock(self._raw.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # see adopt_orphans
            self._start_segment()
            self._raw.flush()
        except OSError as exc:
            error = self._error("create", exc)
            self._abandon()
            raise error from exc
        self._good = self._raw.tell()

    def _start_segment(self) -> None:
        self._stream = self._raw if self.gzip_level is None else gzip.GzipFile(
            fileobj=self._raw, mode="wb", compresslevel=self.gzip_level, mtime=0)
        self._writer = self.make_writer(self._stream)
        self._writer.begin()

    def _full(self) -> bool:
        return self.policy.max_records is not None and self._records >= self.policy.max_records

    def _too_old(self) -> bool:
        return (self.policy.max_seconds is not None
                and self.clock() - self._opened_at >= self.policy.max_seconds)

    def _size(self) -> int:
        return self._raw.tell()

    def _resumable(self) -> bool:
        return self.gzip_level is None and bool(getattr(self._writer, "resumable", False))

    def _error(self, action: str, exc: OSError) -> ExporterError:
        path = self.part_path or self.directory
        return ExporterError(f"cannot {action} {path}: {exc.strerror or exc} "
                             f"(completed files so far stay intact: {len(self.completed)})")

    def _undo_write(self) -> None:
        """Take back a chunk that failed part-way (see the module note)."""
        if self._resumable():
            part, good = self.part_path, self._good
            self._close_quietly()
            try:
                raw = open(part, "r+b")
                fcntl.flock(raw.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                raw.truncate(good)
                raw.seek(good)
            except OSError:
                pass  # cannot even cut it back: abandon it below
            else:
                self._raw = raw
                if good == 0:
                    self._start_segment()
                else:
                    self._stream, self._writer = raw, self.make_writer(raw)
                return
        self._abandon()

    def _abandon(self) -> None:
        """Give up the open file: delete it when no earlier chunk is in it, else leave it as
        ``.part`` and say how many records only it holds."""
        part, records = self.part_path, self._records
        self._close_quietly()
        self._reset()
        if part is None:
            return
        if records == 0:
            try:
                part.unlink(missing_ok=True)
            except OSError:
                pass  # never created (e.g. the directory could not be made)
        else:
            log.error("abandoned %s: its %d records are not in any completed file (a gzip or "
                      "Parquet file cannot be cut back after a failed write)", part, records)

    def _close_quietly(self) -> None:
        for handle in (self._stream, self._raw):
            try:
                if handle is not None:
                    handle.close()
            except (OSError, ValueError):
                pass  # the error that brought us here is the one reported

    def _reset(self) -> None:
        self._path = self._raw = self._stream = self._writer = None
        self._records = self._good = 0
