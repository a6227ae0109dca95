"""Rotating output files: each file is written as ``<name>.part`` and renamed to ``<name>``
when complete (so a reader never sees half a file), rotated by record count, size or age.

Used by the ``file`` and ``pcap`` exporters. The format is a ``SegmentWriter`` made by a
factory per file; this module owns naming, counting, the rename and the I/O error message.
Completed files are never opened again, so a later failure (disk full) cannot damage them.
"""

from __future__ import annotations

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
    any trailer. The stream belongs to the rotator (it closes it)."""

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
        self._opened_at = 0.0

    # ------------------------------------------------------------- state
    @property
    def part_path(self) -> Path | None:
        return None if self._path is None else self._path.with_name(self._path.name + ".part")

    def room(self) -> int | None:
        """Records the open (or next) file still takes under ``max_records``; None: no limit."""
        if self.policy.max_records is None:
            return None
        return self.policy.max_records - (self._records if self._path is not None else 0)

    # ------------------------------------------------------------- writing
    def write(self, chunk, records: int) -> None:
        """Append ``chunk`` (``records`` records, at most ``room()``) to the open file,
        opening one first if needed; rotates when a limit is reached."""
        if self._path is not None and self._too_old():
            self.finish()
        if self._path is None:
            self._open()
        self._guard("write to", lambda: self._writer.write(chunk))
        if self.policy.max_bytes is not None and self._stream is not self._raw:
            self._guard("write to", self._stream.flush)  # sync-flush gzip: size on disk is exact
        self._records += records
        full = self.policy.max_records is not None and self._records >= self.policy.max_records
        big = self.policy.max_bytes is not None and self._size() >= self.policy.max_bytes
        if full or big:
            self.finish()

    def rotate_if_old(self) -> None:
        if self._path is not None and self._too_old():
            self.finish()

    def finish(self) -> None:
        """Complete the open file: trailer, flush, fsync, close, rename ``.part`` -> final."""
        if self._path is None:
            return
        part, final = self.part_path, self._path

        def complete():
            self._writer.end()
            if self._stream is not self._raw:
                self._stream.close()      # gzip trailer; leaves the raw file open
            self._raw.flush()
            if self.fsync:
                os.fsync(self._raw.fileno())
            self._raw.close()
            os.replace(part, final)

        self._guard("complete", complete)
        self.completed.append(final)
        log.info("completed %s (%d records)", final, self._records)
        self._reset()

    def flush(self) -> None:
        if self._stream is not None:
            self._guard("flush", self._stream.flush)

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

        def start():
            self.directory.mkdir(parents=True, exist_ok=True)
            self._raw = open(self.part_path, "xb")
            self._stream = self._raw if self.gzip_level is None else gzip.GzipFile(
                fileobj=self._raw, mode="wb", compresslevel=self.gzip_level, mtime=0)
            self._writer = self.make_writer(self._stream)
            self._writer.begin()

        self._guard("create", start)

    def _too_old(self) -> bool:
        return (self.policy.max_seconds is not None
                and self.clock() - self._opened_at >= self.policy.max_seconds)

    def _size(self) -> int:
        return self._raw.tell()

    def _guard(self, action: str, operation: Callable[[], object]) -> None:
        """Run ``operation``; an OSError becomes an ExporterError naming the file. The broken
        file is abandoned (left as ``.part``), so the next write starts a new one."""
        try:
            operation()
        except OSError as exc:
            path = self.part_path or self.directory
            self._abandon()
            raise ExporterError(f"cannot {action} {path}: {exc.strerror or exc} "
                                f"(completed files so far stay intact: {len(self.completed)})"
                                ) from exc

    def _abandon(self) -> None:
        for handle in (self._stream, self._raw):
            try:
                if handle is not None:
                    handle.close()
            except OSError:
                pass  # the error that brought us here is the one reported
        self._reset()

    def _reset(self) -> None:
        self._path = self._raw = self._stream = self._writer = None
        self._records = 0
