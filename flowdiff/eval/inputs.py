"""Reading the traces to compare (through ingest) and checking they can be compared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from flowdiff import schema


class EvalInputError(ValueError):
    """A trace that cannot be evaluated; the message names the file and what was expected."""


def read_table(path: str | Path) -> pd.DataFrame:
    """Read one trace in any format ingest supports (auto-detected) as a canonical table
    sorted by ``ts``. Unreadable input raises ingest's IngestError (file, line, field);
    a readable but unusable trace raises EvalInputError."""
    from flowdiff.ingest import read_flows

    path = Path(path)
    if not path.exists():
        raise EvalInputError(f"{path}: no such file")
    table, _summary = read_flows(path)
    check_table(table, str(path))
    return table


def check_table(table: pd.DataFrame, name: str) -> None:
    """Raise EvalInputError unless ``table`` is a non-empty canonical table."""
    if not isinstance(table, pd.DataFrame):
        raise EvalInputError(f"{name}: expected a flow table (pandas DataFrame), "
                             f"got {type(table).__name__}")
    if len(table) == 0:
        raise EvalInputError(f"{name}: the trace holds no records")
    missing = [c for c in schema.REQUIRED if c not in table.columns]
    if missing:
        raise EvalInputError(f"{name}: lacks required column(s) {missing}; "
                             f"expected canonical columns {list(schema.COLUMNS)}")
    for column in ("ts", "td", "pkt", "byt"):
        if column in table.columns:
            finite = np.isfinite(table[column].to_numpy(float))
            if not finite.all():
                raise EvalInputError(f"{name}: record {int(np.flatnonzero(~finite)[0])} "
                                     f"field {column!r} is not a finite number")
