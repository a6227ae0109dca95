"""Chunked reading of CSV text (plain or gzip, detected by magic bytes) into raw chunks
that know the physical line number of every row, with read errors turned into IngestError."""

from __future__ import annotations

import bisect
import contextlib
import csv
import io
import logging
import re
import warnings
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import pandas as pd

from flowdiff.ingest.errors import IngestError
from flowdiff.ingest.summary import IngestSummary
from flowdiff.ingest.tabular import ColumnPlan, RawChunk, canonical_chunks

log = logging.getLogger(__name__)
GZIP_MAGIC = b"\x1f\x8b"
Progress = Callable[[int, int], None]   # (bytes of the file consumed, file size)

_FIELD_COUNT = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_SKIPPED_LINE = re.compile(r"Skipping line (\d+): expected (\d+) fields, saw (\d+)")


class LineCounter(io.RawIOBase):
    """A read-only stream over a file (gunzipping it when ``gzip``) that counts the newlines
    it has passed on, so a failure can be placed on a line. Decompression is done here with
    zlib rather than GzipFile so that every byte before a cut is delivered (GzipFile drops
    the last block it was decoding when it meets the end of a truncated file)."""

    BLOCK = 1 << 16

    def __init__(self, raw: BinaryIO, gzip_members: bool):
        self.raw = raw
        self.newlines = 0
        self.inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzip_members else None
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending:
            block = self.raw.read(self.BLOCK)
            if not block:
                if self.inflate is not None and not self.inflate.eof:
                    raise EOFError("compressed file ended before the end-of-stream marker")
                return 0
            self.pending = self._decode(block)
        size = min(len(buffer), len(self.pending))
        buffer[:size] = self.pending[:size]
        self.newlines += self.pending.count(b"\n", 0, size)
        self.pending = self.pending[size:]
        return size

    def _decode(self, block: bytes) -> bytes:
        if self.inflate is None:
            return block
        out = [self.inflate.decompress(block)]
        while self.inflate.eof and self.inflate.unused_data:  # next gzip member
            rest = self.inflate.unused_data
            self.inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out.append(self.inflate.decompress(rest))
        return b"".join(out)


@contextlib.contextmanager
def open_text_bytes(path: Path) -> Iterator[tuple[BinaryIO, BinaryIO]]:
    """(decompressed byte stream, raw file): the raw file's position measures progress.
    Decompression and decoding failures inside the ``with`` block become IngestError
    naming the line the data was cut or broken in."""
    with open(path, "rb") as raw:
        counter = LineCounter(raw, gzip_members=raw.peek(2)[:2] == GZIP_MAGIC)
        try:
            yield io.BufferedReader(counter, LineCounter.BLOCK), raw
        except EOFError as exc:
            raise IngestError(path, counter.newlines + 1, None,
                              "truncated gzip stream: the data ends inside this line, before "
                              "the gzip end-of-stream marker (file cut short?)") from exc
        except zlib.error as exc:
            raise IngestError(path, counter.newlines + 1, None,
                              f"corrupt gzip data: {exc}") from exc
        except UnicodeDecodeError as exc:  # decoded in big blocks: find the real line
            line, column, byte = _first_undecodable(path)
            raise IngestError(path, line, None, f"not UTF-8 text: byte 0x{byte:02x} at "
                              f"column {column} ({exc.reason})") from exc


def _first_undecodable(path: Path) -> tuple[int, int, int]:
    """(1-based line, 1-based byte column, byte value) of the first byte that is not UTF-8
    in the (decompressed) text; (0, 0, 0) if every line decodes on its own."""
    with open(path, "rb") as raw:
        lines = io.BufferedReader(LineCounter(raw, gzip_members=raw.peek(2)[:2] == GZIP_MAGIC),
                                  LineCounter.BLOCK)
        for number, line in enumerate(lines, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return number, exc.start + 1, line[exc.start]
    return 0, 0, 0


def first_line(path: Path, expected: str) -> str:
    """The first line of the (decompressed) text, without its newline. IngestError (line 1)
    if the file holds no text; ``expected`` says what it should hold."""
    with open_text_bytes(path) as (stream, _raw):
        line = stream.readline()
        if not line.strip() and not stream.read(1 << 16).strip():
            raise IngestError(path, 1, None, f"file is empty: expected {expected}")
        return line.decode("utf-8").rstrip("\r\n")


def split_line(line: str, delimiter: str) -> list[str]:
    return [f.strip() for f in next(csv.reader([line], delimiter=delimiter))]


class LineMap:
    """Row number (0-based, among rows pandas returned) -> physical line (1-based)."""

    def __init__(self, first_data_line: int):
        self.first_data_line = first_data_line
        self.skipped: list[int] = []   # physical lines pandas dropped (wrong field count)

    def line(self, row: int) -> int:
        line = self.first_data_line + row
        for skipped in self.skipped:  # sorted; each dropped line at or before shifts by one
            if skipped > line:
                break
            line += 1
        return line


def csv_chunks(path: Path, *, header: bool, names: list[str], text_columns: list[str],
               delimiter: str, chunk_rows: int, skip_bad: bool, summary: IngestSummary,
               progress: Progress | None = None) -> Iterator[RawChunk]:
    """Raw chunks of every column (all are read, so that every field count is checked):
    ``text_columns`` as text, the others as pandas' C parser reads them (numbers natively;
    a column with any non-number stays text, for the field parsers to report). Rows with a
    wrong field count raise (strict) or are skipped and counted. ``names`` are the column
    names when the file has no header."""
    lines = LineMap(2 if header else 1)
    rows_done = 0
    size = path.stat().st_size
    with open_text_bytes(path) as (stream, raw):
        reader = _parse(path, lambda: pd.read_csv(
            stream, sep=delimiter, header=0 if header else None,
            names=None if header else names, index_col=False, engine="c",
            dtype={column: "str" for column in text_columns},
            keep_default_na=False, na_values=[""], skip_blank_lines=False,
            chunksize=chunk_rows, encoding="utf-8",
            on_bad_lines="warn" if skip_bad else "error"))
        while True:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", pd.errors.ParserWarning)
                frame = _parse(path, lambda: next(reader, None))
            _note_skipped(path, caught, lines, summary)
            if frame is None:
                break
            start = rows_done
            rows_done += len(frame)
            if progress is not None:
                progress(raw.tell(), size)
            yield RawChunk(frame.reset_index(drop=True),
                           lambda row, start=start: lines.line(start + row))


def _parse(path: Path, call):
    try:
        return call()
    except pd.errors.EmptyDataError as exc:
        raise IngestError(path, 1, None, "file is empty: expected a CSV header and rows "
                                         "of flow records") from exc
    except pd.errors.ParserError as exc:
        found = _FIELD_COUNT.search(str(exc))
        if found:
            expected, line, saw = found.groups()
            raise IngestError(path, int(line), None,
                              f"expected {expected} fields, found {saw}") from exc
        raise IngestError(path, None, None, f"not readable as CSV: {exc}") from exc


def _note_skipped(path: Path, caught, lines: LineMap, summary: IngestSummary) -> None:
    for warning in caught:
        if not issubclass(warning.category, pd.errors.ParserWarning):
            # e.g. DtypeWarning for a column of mixed numbers and text: the field parsers
            # read such a column as text and report its bad values themselves
            log.debug("%s: pandas: %s", path, warning.message)
            continue
        for found in _SKIPPED_LINE.finditer(str(warning.message)):
            line, expected, saw = (int(g) for g in found.groups())
            bisect.insort(lines.skipped, line)
            summary.rows_read += 1
            summary.skip("wrong number of fields", 1,
                         f"{path.name} line {line}: expected {expected} fields, found {saw}")


def read_csv_plan(path: Path, plan: ColumnPlan, *, header: list[str] | None,
                  names: list[str], delimiter: str, chunk_rows: int, skip_bad: bool,
                  summary: IngestSummary, progress: Progress | None) -> Iterator[pd.DataFrame]:
    """Canonical chunks of a CSV file read by ``plan``. ``header``: the file's header
    fields, or None when the file has none (then ``names`` name its columns)."""
    plan.check_header(path, header if header is not None else names, "line", summary)
    chunks = csv_chunks(path, header=header is not None, names=names,
                        text_columns=plan.text_sources, delimiter=delimiter,
                        chunk_rows=chunk_rows, skip_bad=skip_bad, summary=summary,
                        progress=progress)
    yield from canonical_chunks(chunks, plan, path, "line", skip_bad, summary)
