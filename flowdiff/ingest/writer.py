"""Writing a canonical flow table: CSV (``.csv``, ``.csv.gz``) with text IPs and flags, or
Parquet with the canonical dtypes. Written to a temporary file, then renamed (atomic).
Floats are written in their shortest exact form, so ``read_flows`` gives the table back
bit for bit; gzip output has a zero mtime, so equal tables give equal files."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import BinaryIO

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from flowdiff import schema
from flowdiff.atomic import atomic_file

CSV_SUFFIXES = (".csv", ".csv.gz")
GZIP_LEVEL = 6
BATCH_ROWS = 200_000
OUTPUT_MODE = 0o644


def write_flows(table: pd.DataFrame, path: str | Path) -> Path:
    """Write ``table`` (conformed first) to ``path``; the suffix chooses the format.
    ``read_flows(path)`` gives the same table back exactly."""
    path = Path(path)
    name = path.name.lower()
    if not (name.endswith(CSV_SUFFIXES) or name.endswith(".parquet")):
        raise ValueError(f"{path}: unknown output format: expected a name ending in .csv, "
                         ".csv.gz or .parquet")
    table = schema.conform(table)
    with atomic_file(path) as raw:
        if name.endswith(".parquet"):
            table.to_parquet(raw, index=False, engine="pyarrow")
        elif name.endswith(".gz"):
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=GZIP_LEVEL,
                               mtime=0) as zipped:
                _write_csv(table, zipped)
        else:
            _write_csv(table, raw)
    return path


def _write_csv(table: pd.DataFrame, out: BinaryIO) -> None:
    out.write((",".join(table.columns) + "\n").encode("utf-8"))
    arrow = pa.Table.from_pandas(_as_text(table), preserve_index=False)
    for batch in arrow.to_batches(max_chunksize=BATCH_ROWS):
        try:  # unquoted unless a label holds a comma, quote or newline
            out.write(_csv_bytes(batch, "none"))
        except pa.ArrowInvalid:
            out.write(_csv_bytes(batch, "needed"))


def _csv_bytes(batch: pa.RecordBatch, quoting: str) -> bytes:
    sink = pa.BufferOutputStream()
    pa_csv.write_csv(batch, sink, pa_csv.WriteOptions(include_header=False,
                                                      quoting_style=quoting))
    return sink.getvalue().to_pybytes()


def _as_text(table: pd.DataFrame) -> pd.DataFrame:
    """IPs and flags in their text forms (``schema.to_text``: each distinct IP once, flags by
    lookup table)."""
    return schema.to_text(table)
