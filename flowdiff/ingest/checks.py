"""Turn the problems found in one chunk into an error (strict) or dropped, counted rows."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from flowdiff.ingest.errors import IngestError, format_location
from flowdiff.ingest.fields import Issue
from flowdiff.ingest.summary import IngestSummary


class ChunkCheck:
    """Collects (field, issue) pairs for one chunk, in the order the fields were parsed."""

    def __init__(self, rows: int):
        self.rows = rows
        self.problems: list[tuple[str | None, Issue]] = []

    def add(self, field: str | None, issues: list[Issue]) -> None:
        self.problems.extend((field, issue) for issue in issues if issue.mask.any())

    def resolve(self, path: Path, locate: Callable[[int], int], where: str, skip_bad: bool,
                summary: IngestSummary) -> np.ndarray:
        """Return the (rows,) mask of rows to keep. Strict mode raises IngestError for the
        earliest bad row of the chunk; ``skip_bad`` counts each bad row once, under the
        first problem found in it."""
        keep = np.ones(self.rows, dtype=bool)
        if not self.problems:
            return keep
        if not skip_bad:
            firsts = [int(np.argmax(issue.mask)) for _, issue in self.problems]
            k = int(np.argmin(firsts))            # earliest row; ties go to the first field
            field, issue = self.problems[k]
            raise IngestError(path, locate(firsts[k]), field, issue.describe(firsts[k]),
                              where=where)
        for field, issue in self.problems:
            new = issue.mask & keep
            count = int(new.sum())
            if count:
                row = int(np.argmax(new))
                example = (f"{format_location(path.name, locate(row), field, where)}: "
                           f"{issue.describe(row)}")
                summary.skip(f"{field}: {issue.reason}" if field else issue.reason, count,
                             example)
                keep &= ~new
        return keep
