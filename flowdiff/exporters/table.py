"""An exporter that keeps every batch in memory and writes them as one table at the end
(``flowdiff generate`` to ``.csv``, ``.csv.gz`` or ``.parquet``: the output is bounded by
``--records``, and ``write_flows`` makes a file that ``flowdiff ingest``/``eval`` read back
exactly)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from flowdiff.exporters.base import Exporter


class TableSink(Exporter):
    kind = "table"

    def __init__(self, name: str):
        super().__init__(name)
        self.batches: list[pd.DataFrame] = []
        self.records = 0

    def submit(self, batch: pd.DataFrame) -> int:
        self.batches.append(batch)
        self.records += len(batch)
        return len(batch)

    def table(self) -> pd.DataFrame:
        """Every record submitted, in submission order (the generator's order)."""
        return pd.concat(self.batches, ignore_index=True)

    def write(self, path: str | Path) -> Path:
        from flowdiff.ingest import write_flows

        return write_flows(self.table(), path)
