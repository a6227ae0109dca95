"""Apply a column plan (which file column feeds which canonical field, parsed how) to the
raw chunks of a tabular file (CSV or Parquet) and yield conformed canonical chunks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from flowdiff import schema
from flowdiff.ingest.checks import ChunkCheck
from flowdiff.ingest.errors import IngestError
from flowdiff.ingest.fields import Issue, Parser
from flowdiff.ingest.summary import IngestSummary


@dataclass(frozen=True)
class FieldRule:
    field: str      # canonical column
    source: str     # column name in the file
    parse: Parser
    text: bool      # read as text; otherwise the CSV reader may parse numbers natively


@dataclass(frozen=True)
class ColumnPlan:
    rules: tuple[FieldRule, ...]
    ts_is_end: bool = False   # the time column holds the flow END: start = end - td

    @property
    def sources(self) -> list[str]:
        return [rule.source for rule in self.rules]

    @property
    def text_sources(self) -> list[str]:
        return [rule.source for rule in self.rules if rule.text]

    def check_header(self, path: Path, header: list[str], where: str,
                     summary: IngestSummary) -> None:
        """IngestError naming the first missing column; unused columns go to the summary."""
        present = set(header)
        for rule in self.rules:
            if rule.source not in present:
                raise IngestError(path, 1 if where == "line" else None, rule.source,
                                  f"missing column {rule.source!r} (for canonical "
                                  f"{rule.field!r}): the header has {header}, expected "
                                  f"{self.sources}", where=where)
        summary.ignored_columns = [c for c in header if c not in set(self.sources)]


@dataclass
class RawChunk:
    """Rows of a tabular file as read (text for CSV), plus where they are in the file."""
    frame: pd.DataFrame
    locate: Callable[[int], int]   # row position in frame -> line (or row) number


def canonical_chunks(chunks: Iterable[RawChunk], plan: ColumnPlan, path: Path, where: str,
                     skip_bad: bool, summary: IngestSummary) -> Iterator[pd.DataFrame]:
    """Non-empty canonical chunks; a single empty table (with the plan's columns) if the
    input holds no records."""
    produced = False
    for chunk in chunks:
        table = _canonical(chunk, plan, path, where, skip_bad, summary)
        if len(table):
            produced = True
            yield table
    if not produced:
        fields = {rule.field for rule in plan.rules}
        yield schema.empty_table([c for c in schema.COLUMNS + schema.OUTPUT_COLUMNS
                                  if c in fields])


def _canonical(chunk: RawChunk, plan: ColumnPlan, path: Path, where: str, skip_bad: bool,
               summary: IngestSummary) -> pd.DataFrame:
    frame = chunk.frame
    n = len(frame)
    summary.rows_read += n
    check = ChunkCheck(n)
    if where == "line":  # a blank line reads as a row with every column missing
        blank = frame.isna().all(axis=1).to_numpy()
        check.add(None, [Issue(blank, "empty line", lambda row: "empty line: expected "
                               "a flow record")])
    columns: dict[str, np.ndarray] = {}
    for rule in plan.rules:
        parsed = rule.parse(frame[rule.source])
        check.add(rule.source, parsed.issues)
        columns[rule.field] = parsed.values
    if plan.ts_is_end:  # start = end - duration
        columns["ts"] = columns["ts"] - columns["td"]
    keep = check.resolve(path, chunk.locate, where, skip_bad, summary)
    table = pd.DataFrame(columns)
    if not keep.all():
        table = table[keep].reset_index(drop=True)
    table = schema.conform(table)
    summary.rows_kept += len(table)
    if len(table):
        ts = table["ts"].to_numpy()
        summary.observe_times(float(ts.min()), float(ts.max()))
    return table

