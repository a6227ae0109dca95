"""JSON lines, as flowdiff itself writes them (``flowdiff generate``/``serve`` on stdout, the
``file`` exporter's ``jsonl`` format): one JSON object per line, plain or gzip'd.

Fields are the canonical names in their outside forms (dotted IPs, ``.AP.SF`` flags,
protocol numbers; integer IPs, protocol names and flag bitmasks are accepted too), plus
``stream_id`` and ``seq``, which are kept. The keys of the first record play the part of a
CSV header: they decide which optional fields the table has; a later record without one of
them is a missing value. Other keys (``generator_version``) are not used.

Chunks of ``chunk_rows`` lines are parsed at once by pyarrow's JSON reader; only a chunk
that pyarrow refuses (a line that is not JSON, a field whose JSON type changes) is parsed
again line by line to find and name the bad line.
"""

from __future__ import annotations

import io
import itertools
import json
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.json as pa_json

from flowdiff import schema
from flowdiff.ingest import rules
from flowdiff.ingest.csvsource import open_text_bytes
from flowdiff.ingest.errors import IngestError, format_location
from flowdiff.ingest.request import ReadRequest
from flowdiff.ingest.summary import IngestSummary
from flowdiff.ingest.tabular import ColumnPlan, RawChunk, canonical_chunks

SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")
_BLANK_LINE = re.compile(rb"^[ \t\r]*$", re.MULTILINE)
EXPECTED = "JSON lines flow records (one JSON object per line)"


def has_suffix(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def looks_like(line: str) -> bool:
    """The first line of a text file opens a JSON object."""
    return line.lstrip().startswith("{")


def read(request: ReadRequest) -> Iterator[pd.DataFrame]:
    path = request.path
    line_number, keys = _first_record_keys(path)
    missing = [c for c in schema.REQUIRED if c not in keys]
    if missing:
        raise IngestError(path, line_number, missing[0],
                          f"missing field {missing[0]!r}: the first record has keys {keys}, "
                          f"expected at least {list(schema.REQUIRED)}")
    plan = rules.plan({c: c for c in rules.KNOWN_FIELDS if c in keys}, ip_integers=True)
    request.summary.ignored_columns = [k for k in keys if k not in set(plan.sources)]
    yield from canonical_chunks(_chunks(request, plan), plan, path, "line", request.skip_bad,
                                request.summary)


def _first_record_keys(path: Path) -> tuple[int, list[str]]:
    """(line number, keys) of the first non-blank line, which must be a JSON object."""
    with open_text_bytes(path) as (stream, _raw):
        for number, line in enumerate(stream, start=1):
            if line.strip():
                record = _decode_line(path, number, line)
                return number, list(record)
    raise IngestError(path, 1, None, f"file is empty: expected {EXPECTED}")


def _decode_line(path: Path, number: int, line: bytes) -> dict:
    """One line as a JSON object; IngestError naming the line otherwise."""
    try:
        record = json.loads(line)
    except UnicodeDecodeError as exc:
        raise IngestError(path, number, None, f"not UTF-8 text: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise IngestError(path, number, None, f"not valid JSON ({exc.msg} at column "
                                              f"{exc.colno}): expected a JSON object") from exc
    if not isinstance(record, dict):
        raise IngestError(path, number, None, f"a JSON {type(record).__name__}, not an "
                                              "object: expected one flow record per line")
    return record


def _chunks(request: ReadRequest, plan: ColumnPlan) -> Iterator[RawChunk]:
    path, summary = request.path, request.summary
    size = path.stat().st_size
    first_line = 1
    with open_text_bytes(path) as (stream, raw):
        while True:
            lines = list(itertools.islice(stream, request.chunk_rows))
            if not lines:
                return
            frame, line_numbers = _frame(path, lines, first_line, request.skip_bad, summary)
            for source in plan.sources:  # a key absent from the whole chunk: all missing
                if source not in frame.columns:
                    frame[source] = None
            if request.progress is not None:
                request.progress(raw.tell(), size)
            first_line += len(lines)
            yield RawChunk(frame, lambda row, numbers=line_numbers: int(numbers[row]))


def _frame(path: Path, lines: list[bytes], first_line: int, skip_bad: bool,
           summary: IngestSummary) -> tuple[pd.DataFrame, np.ndarray]:
    """(frame, (rows,) line number of each row). Row i is line first_line + i; blank lines
    become rows with every field missing (reported as empty lines, as in CSV)."""
    data = b"".join(lines)
    if not data.endswith(b"\n"):
        data += b"\n"
    data = _BLANK_LINE.sub(b"{}", data[:-1]) + b"\n"
    numbers = np.arange(first_line, first_line + len(lines))
    try:
        table = pa_json.read_json(io.BytesIO(data), read_options=pa_json.ReadOptions(
            use_threads=False, block_size=len(data) + 1))
    except pa.ArrowInvalid:
        return _frame_by_line(path, lines, numbers, skip_bad, summary)
    if table.num_rows != len(lines):  # one object per line gives one row per line; be sure
        return _frame_by_line(path, lines, numbers, skip_bad, summary)
    return table.to_pandas(), numbers


def _frame_by_line(path: Path, lines: list[bytes], numbers: np.ndarray, skip_bad: bool,
                   summary: IngestSummary) -> tuple[pd.DataFrame, np.ndarray]:
    """The slow path for a chunk pyarrow refused: ``json.loads`` per line, values kept as
    they are (object columns) for the field parsers to judge. A line that is not a JSON
    object raises, or with ``skip_bad`` is dropped here and counted."""
    records: list[dict] = []
    kept: list[int] = []
    for offset, line in enumerate(lines):
        number = int(numbers[offset])
        if not line.strip():
            records.append({})
            kept.append(offset)
            continue
        try:
            records.append(_decode_line(path, number, line))
            kept.append(offset)
        except IngestError as exc:
            if not skip_bad:
                raise
            summary.rows_read += 1
            summary.skip("not a JSON object", 1,
                         f"{format_location(path.name, number, None)}: {exc.detail}")
    frame = pd.DataFrame.from_records(records, index=range(len(records)))
    return frame, numbers[np.asarray(kept, dtype=np.int64)]
