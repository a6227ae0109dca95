"""What a format reader is asked to do (one object instead of threading options through)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flowdiff.ingest.csvsource import Progress
from flowdiff.ingest.mapping import Mapping
from flowdiff.ingest.summary import IngestSummary


@dataclass
class ReadRequest:
    path: Path
    chunk_rows: int
    skip_bad: bool
    summary: IngestSummary
    mapping: Mapping | None = None       # generic format only
    progress: Progress | None = None     # called with (bytes consumed, file size)
