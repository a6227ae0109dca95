"""``stdout`` exporter: one JSON object per record on standard output (or standard error).
``JsonLinesExporter`` writes the same lines to any text handle (``flowdiff generate``)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Literal, TextIO

import pandas as pd

from flowdiff.exporters.base import Exporter, ExporterConfig, ExporterError
from flowdiff.schema import to_json_records


def write_json_lines(batch: pd.DataFrame, out: TextIO) -> int:
    """Write one JSON object per record (text IPs and flags); return the number written."""
    records = to_json_records(batch)
    if records:
        out.write("\n".join(json.dumps(r, separators=(",", ":")) for r in records) + "\n")
    return len(records)


class JsonLinesExporter(Exporter):
    kind = "jsonl"

    def __init__(self, name: str, handle: TextIO):
        super().__init__(name)
        self.handle = handle

    def submit(self, batch: pd.DataFrame) -> int:
        try:
            written = write_json_lines(batch, self.handle)
            self.handle.flush()  # paced records must reach a pipe when released
            return written
        except OSError as exc:  # BrokenPipeError included
            raise ExporterError(f"{self.name}: cannot write JSON lines: {exc}") from exc

    def flush(self) -> None:
        try:
            self.handle.flush()
        except OSError as exc:
            raise ExporterError(f"{self.name}: cannot flush: {exc}") from exc


@dataclass
class StdoutConfig(ExporterConfig):
    stream: Literal["stdout", "stderr"] = "stdout"


class StdoutExporter(JsonLinesExporter):
    kind = "stdout"

    def __init__(self, name: str, config: StdoutConfig):
        super().__init__(name, sys.stdout if config.stream == "stdout" else sys.stderr)
        self.config = config


CONFIG = StdoutConfig
EXPORTER = StdoutExporter
