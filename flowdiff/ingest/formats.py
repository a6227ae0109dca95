"""The input formats, and recognising one from a file's magic bytes, extension and header."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pandas as pd

from flowdiff.ingest import canonical, generic, jsonl, netshare, pcap, ugr16
from flowdiff.ingest.csvsource import first_line, open_text_bytes, split_line
from flowdiff.ingest.errors import IngestError
from flowdiff.ingest.parquetsource import PARQUET_MAGIC
from flowdiff.ingest.pcapfile import is_capture
from flowdiff.ingest.request import ReadRequest

READERS: dict[str, Callable[[ReadRequest], Iterator[pd.DataFrame]]] = {
    "ugr16": ugr16.read,
    "netshare": netshare.read,
    "generic": generic.read,
    "canonical": canonical.read,
    "jsonl": jsonl.read,
    "pcap": pcap.read,
}
FORMATS = ("auto", *READERS)


def detect(path: Path, has_mapping: bool) -> str:
    """The format of ``path``: capture magic -> pcap; a mapping given -> generic; Parquet
    -> canonical; ``.jsonl``/``.jsonl.gz`` name, or a first line opening a JSON object ->
    jsonl; CSV by its first line (UGR'16 header or header-less UGR'16 row, NetShare header,
    canonical header)."""
    if not path.is_file():
        raise IngestError(path, None, None, "no such file")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise IngestError(path, 1, None, "file is empty: expected flow records")
    if is_capture(head):
        return "pcap"
    if has_mapping:
        return "generic"
    if head == PARQUET_MAGIC:
        return "canonical"
    if jsonl.has_suffix(path):
        return "jsonl"
    line = first_line(path, "flow records")
    if jsonl.looks_like(line):
        return "jsonl"
    fields = split_line(line, ",")
    if ugr16.looks_like(fields):
        return "ugr16"
    if netshare.looks_like(fields, _second_line(path)):
        return "netshare"
    if canonical.looks_like(fields):
        return "canonical"
    raise IngestError(path, 1, None, f"unrecognised header {fields[:8]}: expected UGR'16 "
                      f"({','.join(ugr16.COLUMNS)}), NetShare (srcip,dstip,...,ts,...,type) "
                      "or canonical (ts,td,srcip,dstip,...) columns, or JSON lines; for other layouts use "
                      "--format generic --mapping MAP.yaml")


def _second_line(path: Path) -> list[str] | None:
    with open_text_bytes(path) as (stream, _raw):
        stream.readline()
        line = stream.readline().decode("utf-8").rstrip("\r\n")
    return split_line(line, ",") if line else None
