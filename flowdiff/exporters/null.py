"""``null`` exporter: counts records and discards them (benchmarks; backpressure tests can
slow it down with ``delay_seconds``)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd

from flowdiff.exporters.base import ErrorCallback, Exporter, ExporterSettings


@dataclass
class NullConfig(ExporterSettings):
    delay_seconds: float = 0.0  # sleep per batch, to simulate a slow sink

    def check(self) -> list[tuple[str, str]]:
        if self.delay_seconds < 0:
            return [("delay_seconds", f"must be >= 0, got {self.delay_seconds}")]
        return []

class NullExporter(Exporter):
    kind = "null"

    def __init__(self, name: str, config: NullConfig, *, on_errors: ErrorCallback | None = None):
        super().__init__(name, config, on_errors=on_errors)
        self.records = 0
        self.batches = 0

    def submit(self, batch: pd.DataFrame) -> int:
        if self.config.delay_seconds:
            time.sleep(self.config.delay_seconds)
        self.records += len(batch)
        self.batches += 1
        return len(batch)


CONFIG = NullConfig
EXPORTER = NullExporter
