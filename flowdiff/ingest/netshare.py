"""NetShare's flow CSV: ``srcip,dstip,srcport,dstport,proto,ts,td,pkt,byt,type``.

IPs are uint32 integers or dotted quads, ``ts`` is the flow start in MICROseconds since the
epoch, ``td`` seconds, ``proto`` a name or number, ``type`` the label."""

from __future__ import annotations

from typing import Iterator

import pandas as pd

from flowdiff import schema
from flowdiff.ingest import rules
from flowdiff.ingest.csvsource import first_line, read_csv_plan, split_line
from flowdiff.ingest.request import ReadRequest

SOURCES = {"ts": "ts", "td": "td", "srcip": "srcip", "dstip": "dstip", "srcport": "srcport",
           "dstport": "dstport", "proto": "proto", "pkt": "pkt", "byt": "byt",
           "label": "type"}
TS_PER_SECOND = 1e6


def looks_like(fields: list[str], second_line: list[str] | None) -> bool:
    """NetShare's header (with ``type``), or canonical-looking names with integer IPs."""
    if not {"srcip", "dstip", "ts"} <= set(fields):
        return False
    if "type" in fields:
        return True
    if second_line is None or len(second_line) != len(fields):
        return False
    return second_line[fields.index("srcip")].isdigit()


def read(request: ReadRequest) -> Iterator[pd.DataFrame]:
    path = request.path
    line = first_line(path, "a NetShare CSV header (srcip,dstip,...,ts,...,type)")
    header = split_line(line, ",")
    sources = {field: source for field, source in SOURCES.items()
               if source in header or field in schema.REQUIRED}
    plan = rules.plan(sources, ip_integers=True, ts_divisor=TS_PER_SECOND)
    yield from read_csv_plan(path, plan, header=header, names=header, delimiter=",",
                             chunk_rows=request.chunk_rows, skip_bad=request.skip_bad,
                             summary=request.summary, progress=request.progress)
