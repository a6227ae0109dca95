"""The parser (and its valid range) of each canonical field, shared by every tabular format."""

from __future__ import annotations

from flowdiff import schema
from flowdiff.ingest import fields
from flowdiff.ingest.fields import Parser
from flowdiff.ingest.tabular import ColumnPlan, FieldRule

MAX_EPOCH_SECONDS = 1e10     # year 2286: larger start times mean a wrong time unit
MAX_COUNT = 2**62
CATEGORICAL = ("proto", "flags", "label")   # always read as text


def parser_for(field: str, *, ip_integers: bool = True, time_format: str | None = None,
               ts_divisor: float = 1.0, td_divisor: float = 1.0) -> Parser:
    """How to read canonical ``field`` from a file column.

    ``time_format``: ``ts`` is calendar text in that format (``ISO8601`` or strftime);
    otherwise ``ts`` is a number of seconds times ``ts_divisor`` since the epoch.
    ``td_divisor``: ``td`` unit per second (1000 for milliseconds)."""
    if field == "ts":
        if time_format is not None:
            return fields.datetime_text(time_format)
        return fields.real("start time (epoch seconds)", 0.0, MAX_EPOCH_SECONDS, ts_divisor)
    if field == "td":
        return fields.real("duration", 0.0, divisor=td_divisor)
    if field in ("srcip", "dstip"):
        return fields.ipv4(allow_integer=ip_integers)
    if field in ("srcport", "dstport"):
        return fields.integer("port", 0, 65535)
    if field == "proto":
        return fields.protocol()
    if field == "pkt":
        return fields.integer("packet count", 1, MAX_COUNT)
    if field == "byt":
        return fields.integer("byte count", 0, MAX_COUNT)
    if field == "flags":
        return fields.tcp_flags()
    if field == "tos":
        return fields.integer("ToS", 0, 255)
    if field == "label":
        return fields.label()
    if field == "stream_id":
        return fields.integer("stream id", 0, 2**31 - 1)
    if field == "seq":
        return fields.integer("sequence number", 0, MAX_COUNT)
    raise ValueError(f"no parser for canonical field {field!r}")


def plan(sources: dict[str, str], *, ts_is_end: bool = False, ip_integers: bool = True,
         time_format: str | None = None, ts_divisor: float = 1.0,
         td_divisor: float = 1.0) -> ColumnPlan:
    """A plan from ``{canonical field: file column}`` (fields in canonical order)."""
    return ColumnPlan(tuple(
        FieldRule(field, source, parser_for(field, ip_integers=ip_integers,
                                            time_format=time_format, ts_divisor=ts_divisor,
                                            td_divisor=td_divisor),
                  text=field in CATEGORICAL or (field == "ts" and time_format is not None))
        for field, source in sources.items()), ts_is_end=ts_is_end)


KNOWN_FIELDS = schema.COLUMNS + schema.OUTPUT_COLUMNS
