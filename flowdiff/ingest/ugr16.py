"""UGR'16 NetFlow CSV: ``te,td,sa,da,sp,dp,pr,flg,fwd,stos,pkt,byt,label``, header optional.

``te`` is the flow END time, local time without a zone; it is read as UTC, and the start is
``ts = te - td``. ``fwd`` (forwarding status) has no canonical field and is not used."""

from __future__ import annotations

from typing import Iterator

import pandas as pd

from flowdiff.ingest import rules
from flowdiff.ingest.csvsource import first_line, read_csv_plan, split_line
from flowdiff.ingest.errors import IngestError
from flowdiff.ingest.request import ReadRequest

COLUMNS = ("te", "td", "sa", "da", "sp", "dp", "pr", "flg", "fwd", "stos", "pkt", "byt",
           "label")
SOURCES = {"ts": "te", "td": "td", "srcip": "sa", "dstip": "da", "srcport": "sp",
           "dstport": "dp", "proto": "pr", "flags": "flg", "tos": "stos", "pkt": "pkt",
           "byt": "byt", "label": "label"}
TIME_FORMAT = "ISO8601"   # 2016-04-11 00:01:38 (fractional seconds accepted)


def has_header(fields: list[str]) -> bool:
    return fields[:1] == ["te"]


def looks_like(fields: list[str]) -> bool:
    """A UGR'16 header, or a header-less row of 12/13 fields starting with a time."""
    if has_header(fields):
        return True
    return len(fields) in (12, 13) and not pd.isna(
        pd.to_datetime(fields[0], format=TIME_FORMAT, errors="coerce"))


def read(request: ReadRequest) -> Iterator[pd.DataFrame]:
    path = request.path
    line = first_line(path, "UGR'16 flow records")
    fields = split_line(line, ",")
    if has_header(fields):
        header, names = fields, fields
    elif len(fields) in (12, 13):
        header, names = None, list(COLUMNS[:len(fields)])
    else:
        raise IngestError(path, 1, None, f"expected the UGR'16 header {','.join(COLUMNS)} "
                                         f"or a row of 13 fields (12 without label), "
                                         f"found {len(fields)} fields")
    sources = {field: source for field, source in SOURCES.items()
               if source != "label" or source in names}
    plan = rules.plan(sources, ts_is_end=True, ip_integers=False, time_format=TIME_FORMAT)
    yield from read_csv_plan(path, plan, header=header, names=names, delimiter=",",
                             chunk_rows=request.chunk_rows, skip_bad=request.skip_bad,
                             summary=request.summary, progress=request.progress)
