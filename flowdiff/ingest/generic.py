"""Any CSV(.gz) or Parquet file of flow records, read through a YAML column mapping."""

from __future__ import annotations

from typing import Iterator

import pandas as pd

from flowdiff.ingest import rules
from flowdiff.ingest.canonical import is_parquet
from flowdiff.ingest.csvsource import first_line, read_csv_plan, split_line
from flowdiff.ingest.errors import IngestError
from flowdiff.ingest.mapping import EPOCH, Mapping
from flowdiff.ingest.parquetsource import read_parquet_plan
from flowdiff.ingest.request import ReadRequest


def plan_for(mapping: Mapping):
    ordered = {f: mapping.columns[f] for f in rules.KNOWN_FIELDS if f in mapping.columns}
    return rules.plan(ordered, ts_is_end=mapping.time_is_end, ip_integers=True,
                      time_format=None if mapping.time_format == EPOCH
                      else mapping.time_format,
                      ts_divisor=mapping.ts_divisor, td_divisor=mapping.td_divisor)


def read(request: ReadRequest) -> Iterator[pd.DataFrame]:
    path, mapping = request.path, request.mapping
    if mapping is None:
        raise IngestError(path, None, None, "the generic format needs a column mapping "
                                            "(--mapping MAP.yaml)")
    plan = plan_for(mapping)
    if is_parquet(path):
        yield from read_parquet_plan(path, plan, chunk_rows=request.chunk_rows,
                                     skip_bad=request.skip_bad, summary=request.summary)
        return
    if mapping.header:
        line = first_line(path, "a CSV header naming the mapped columns")
        header = split_line(line, mapping.delimiter)
        names = header
    else:
        header, names = None, mapping.names
    yield from read_csv_plan(path, plan, header=header, names=names,
                             delimiter=mapping.delimiter, chunk_rows=request.chunk_rows,
                             skip_bad=request.skip_bad, summary=request.summary,
                             progress=request.progress)
