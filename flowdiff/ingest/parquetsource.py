"""Chunked reading of Parquet files (row groups streamed in batches, typed columns)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from flowdiff.ingest.errors import IngestError
from flowdiff.ingest.summary import IngestSummary
from flowdiff.ingest.tabular import ColumnPlan, RawChunk, canonical_chunks

PARQUET_MAGIC = b"PAR1"


def parquet_columns(path: Path) -> list[str]:
    return list(_open(path).schema_arrow.names)


def _open(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise IngestError(path, None, None, f"not a readable Parquet file: {exc}") from exc


def read_parquet_plan(path: Path, plan: ColumnPlan, *, chunk_rows: int, skip_bad: bool,
                      summary: IngestSummary) -> Iterator[pd.DataFrame]:
    """Canonical chunks of a Parquet file read by ``plan``; places are 1-based row numbers."""
    file = _open(path)
    plan.check_header(path, list(file.schema_arrow.names), "row", summary)
    yield from canonical_chunks(_chunks(path, file, plan.sources, chunk_rows), plan, path,
                                "row", skip_bad, summary)


def _chunks(path: Path, file: pq.ParquetFile, columns: list[str],
            chunk_rows: int) -> Iterator[RawChunk]:
    done = 0
    batches = file.iter_batches(batch_size=chunk_rows, columns=columns)
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as exc:
            raise IngestError(path, done + 1, None, f"unreadable Parquet data: {exc}",
                              where="row") from exc
        if batch is None:
            return
        frame = batch.to_pandas()
        start = done
        done += len(frame)
        yield RawChunk(frame, lambda row, start=start: start + row + 1)
