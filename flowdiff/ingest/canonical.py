"""The canonical flow table as written by ``write_flows``: CSV(.gz) with a header of
canonical column names (dotted IPs, ``.AP.SF`` flags, protocol numbers, ``ts`` in epoch
seconds) or Parquet with the canonical dtypes. Reading accepts the same lenient text forms
as the schema helpers (integer IPs, protocol names, flag bitmasks)."""

from __future__ import annotations

from typing import Iterator

import pandas as pd

from flowdiff import schema
from flowdiff.ingest import rules
from flowdiff.ingest.csvsource import first_line, read_csv_plan, split_line
from flowdiff.ingest.parquetsource import PARQUET_MAGIC, parquet_columns, read_parquet_plan
from flowdiff.ingest.request import ReadRequest

def looks_like(fields: list[str]) -> bool:
    return set(schema.REQUIRED) <= set(fields)


def is_parquet(request_path) -> bool:
    with open(request_path, "rb") as f:
        return f.read(4) == PARQUET_MAGIC


def read(request: ReadRequest) -> Iterator[pd.DataFrame]:
    path = request.path
    if is_parquet(path):
        plan = _plan(parquet_columns(path))
        yield from read_parquet_plan(path, plan, chunk_rows=request.chunk_rows,
                                     skip_bad=request.skip_bad, summary=request.summary)
        return
    line = first_line(path, f"a header of canonical columns {list(schema.COLUMNS)}")
    header = split_line(line, ",")
    yield from read_csv_plan(path, _plan(header), header=header, names=header, delimiter=",",
                             chunk_rows=request.chunk_rows, skip_bad=request.skip_bad,
                             summary=request.summary, progress=request.progress)


def _plan(header: list[str]):
    """Every canonical column the file has (the required ones even if absent, so the
    missing-column error names them)."""
    present = [c for c in rules.KNOWN_FIELDS if c in header or c in schema.REQUIRED]
    return rules.plan({c: c for c in present}, ip_integers=True)
