"""Per-record quantities derived from a canonical flow table, shared by the metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd

NUMERIC_FIELDS = ("td", "pkt", "byt")
FIVE_TUPLE = ("srcip", "dstip", "srcport", "dstport", "proto")


def has(table: pd.DataFrame, *columns: str) -> bool:
    return all(c in table.columns for c in columns)


def relative_time(table: pd.DataFrame) -> np.ndarray:
    """Flow start time in seconds since the trace's first record."""
    ts = table["ts"].to_numpy(float)
    return ts - ts.min()


def inter_arrival(table: pd.DataFrame) -> np.ndarray:
    """Gaps between consecutive start times in record order (n - 1 values)."""
    return np.diff(table["ts"].to_numpy(float))


def bytes_per_packet(table: pd.DataFrame) -> np.ndarray:
    """byt / pkt, with pkt < 1 treated as 1 (that record is flagged by the validity check)."""
    return table["byt"].to_numpy(float) / np.maximum(table["pkt"].to_numpy(float), 1.0)


def numeric_field(table: pd.DataFrame, name: str) -> np.ndarray | None:
    """A numeric field by name, including the derived ``iat`` and ``bpp``; None if absent."""
    if name == "iat":
        return inter_arrival(table) if len(table) > 1 else None
    if name == "bpp":
        return bytes_per_packet(table) if has(table, "byt", "pkt") else None
    if name == "ts":
        return relative_time(table)
    return table[name].to_numpy(float) if name in table.columns else None
