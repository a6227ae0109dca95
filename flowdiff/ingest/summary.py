"""What an ingest run did: rows read and kept, rows skipped by reason, time range, speed."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

MAX_EXAMPLES = 5  # skipped rows quoted in the summary (the count is always complete)


@dataclass
class IngestSummary:
    path: Path
    format: str
    rows_read: int = 0          # data rows (or packets, for pcap) seen in the input
    rows_kept: int = 0          # canonical records produced
    skipped: Counter = field(default_factory=Counter)   # reason -> rows skipped
    examples: list[str] = field(default_factory=list)   # first skipped rows, with location
    ignored_columns: list[str] = field(default_factory=list)  # input columns not used
    ts_min: float | None = None
    ts_max: float | None = None
    seconds: float = 0.0        # wall time of the run

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else float("nan")

    def skip(self, reason: str, count: int, example: str | None = None) -> None:
        """Record ``count`` rows dropped for ``reason`` (one example message kept)."""
        if count <= 0:
            return
        self.skipped[reason] += count
        if example is not None and len(self.examples) < MAX_EXAMPLES:
            self.examples.append(example)

    def observe_times(self, ts_min: float, ts_max: float) -> None:
        self.ts_min = ts_min if self.ts_min is None else min(self.ts_min, ts_min)
        self.ts_max = ts_max if self.ts_max is None else max(self.ts_max, ts_max)

    def lines(self) -> list[str]:
        """The summary as human-readable lines (the CLI prints them)."""
        out = [f"input:        {self.path} (format {self.format})",
               f"rows read:    {self.rows_read}",
               f"rows kept:    {self.rows_kept}",
               f"rows skipped: {self.rows_skipped}"]
        for reason, count in sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0])):
            out.append(f"  {count:>10}  {reason}")
        for example in self.examples:
            out.append(f"  e.g. {example}")
        if self.ignored_columns:
            out.append(f"columns not used: {', '.join(self.ignored_columns)}")
        if self.ts_min is not None:
            out.append(f"time range:   {_utc(self.ts_min)} .. {_utc(self.ts_max)} "
                       f"({self.ts_max - self.ts_min:.3f} s)")
        out.append(f"speed:        {self.rows_per_second:,.0f} rows/s "
                   f"({self.seconds:.2f} s)")
        return out


def _utc(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc).isoformat(
        timespec="microseconds").replace("+00:00", "Z")
