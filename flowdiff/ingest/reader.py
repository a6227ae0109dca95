"""The entry points: read a trace file in any supported format into canonical flow tables."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from flowdiff import schema
from flowdiff.ingest.csvsource import Progress
from flowdiff.ingest.errors import IngestError
from flowdiff.ingest.formats import FORMATS, READERS, detect
from flowdiff.ingest.mapping import UNITS, Mapping, load_mapping
from flowdiff.ingest.request import ReadRequest
from flowdiff.ingest.summary import IngestSummary

log = logging.getLogger(__name__)
CHUNK_ROWS = 200_000
EARLIEST, LATEST = 631_152_000.0, 4_102_444_800.0  # 1990-01-01 and 2100-01-01 UTC


def iter_flow_chunks(path: str | Path, format: str = "auto",
                     mapping: Mapping | str | Path | dict | None = None,
                     skip_bad: bool = False, chunk_rows: int = CHUNK_ROWS,
                     summary: IngestSummary | None = None,
                     progress: Progress | None = None) -> Iterator[pd.DataFrame]:
    """Conformed canonical chunks of ``path`` in file order (pcap: in order of flow end).

    ``summary`` (optional) is filled in as the chunks are read; ``progress`` is called
    with (bytes consumed, file size) after each CSV chunk. Raises IngestError on bad input
    (with ``skip_bad``, bad rows are dropped and counted in the summary instead)."""
    request = _request(path, format, mapping, skip_bad, chunk_rows, summary, progress)
    started = time.perf_counter()
    for chunk in _unit_checked(request, READERS[request.summary.format](request)):
        request.summary.seconds = time.perf_counter() - started
        yield chunk
    request.summary.seconds = time.perf_counter() - started
    _log_skips(request.summary)


def read_flows(path: str | Path, format: str = "auto",
               mapping: Mapping | str | Path | dict | None = None, skip_bad: bool = False,
               chunk_rows: int = CHUNK_ROWS,
               progress: Progress | None = None) -> tuple[pd.DataFrame, IngestSummary]:
    """The whole file as one conformed canonical table sorted by ``ts`` (stable: ties keep
    file order), and the summary of the run."""
    request = _request(path, format, mapping, skip_bad, chunk_rows, None, progress)
    summary = request.summary
    started = time.perf_counter()
    chunks = list(_unit_checked(request, READERS[summary.format](request)))
    table = pd.concat(chunks, ignore_index=True) if chunks else schema.empty_table(schema.REQUIRED)
    del chunks
    order = np.argsort(table["ts"].to_numpy(), kind="stable")
    if not (order[1:] > order[:-1]).all():
        table = table.take(order).reset_index(drop=True)
    summary.seconds = time.perf_counter() - started
    _log_skips(summary)
    return table, summary


def _request(path, format, mapping, skip_bad, chunk_rows, summary, progress) -> ReadRequest:
    path = Path(path)
    if format not in FORMATS:
        raise IngestError(path, None, None, f"unknown format {format!r}: expected one of "
                                            f"{list(FORMATS)}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    mapping = _mapping(mapping)
    if format == "auto":
        format = detect(path, mapping is not None)
    elif not path.is_file():
        raise IngestError(path, None, None, "no such file")
    if summary is None:
        summary = IngestSummary(path, format)
    summary.path, summary.format = path, format
    return ReadRequest(path, chunk_rows, skip_bad, summary, mapping, progress)


def _unit_checked(request: ReadRequest, chunks: Iterator[pd.DataFrame]
                  ) -> Iterator[pd.DataFrame]:
    """``chunks``, refused (IngestError) when the time unit a detected format assumes
    (NetShare: microseconds; canonical names with integer IPs are detected as NetShare) puts
    the first chunk's median start time before 1990 or after 2100: a wrong unit, not an old
    or future trace. Formats whose unit is stated (canonical: seconds; a generic mapping's
    ``time_unit``) keep relative times such as 0.0, 1.5, ..."""
    if request.summary.format != "netshare":
        yield from chunks
        return
    unit, fix = "us", ("NetShare's ts is in microseconds; if these are epoch {unit}, read the "
                       "file with --format generic and a mapping with time_unit: {unit} (or "
                       "--format canonical for seconds with canonical columns)")
    checked = False
    for chunk in chunks:
        if not checked and len(chunk):
            checked = True
            _check_time_unit(request.path, float(np.median(chunk["ts"].to_numpy())), unit, fix)
        yield chunk


def _check_time_unit(path: Path, median: float, unit: str, fix: str) -> None:
    if EARLIEST <= median < LATEST:
        return
    raw = median * UNITS[unit]  # the number as written in the file
    fits = [u for u, per_second in UNITS.items() if EARLIEST <= raw / per_second < LATEST]
    when = pd.Timestamp(median, unit="s").isoformat() if abs(median) < 9e9 else f"{median:.3g} s"
    hint = fix.format(unit=fits[0]) if fits else "check --format and the mapping's time_unit"
    raise IngestError(path, None, "ts", f"read as epoch {unit}, the start times lie around "
                      f"{when} UTC, outside 1990..2100: wrong time unit? {hint}")


def _mapping(mapping) -> Mapping | None:
    if mapping is None or isinstance(mapping, Mapping):
        return mapping
    if isinstance(mapping, dict):
        return Mapping.from_dict(mapping)
    return load_mapping(mapping)


def _log_skips(summary: IngestSummary) -> None:
    if summary.rows_skipped:
        log.warning("%s: skipped %d of %d rows (%s)", summary.path, summary.rows_skipped,
                    summary.rows_read, ", ".join(f"{r}: {n}" for r, n in
                                                 summary.skipped.items()))
