"""Independent per-column sampling from the training marginals.

Each output column is drawn with replacement from the same training column, independently
of every other column and of the previous records; start times are the first training
start time plus a cumulative sum of inter-arrival gaps drawn from the training trace's
own. The result keeps every marginal and destroys all joint and temporal structure.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from flowdiff import schema
from flowdiff.baselines import BaselineError


def sample_iid(train: pd.DataFrame, records: int, seed: int) -> pd.DataFrame:
    """``records`` synthetic records from a canonical training table (sorted by ts)."""
    if len(train) < 2:
        raise BaselineError(f"iid baseline needs at least 2 training records, got {len(train)}")
    if records < 1:
        raise BaselineError(f"records must be >= 1, got {records}")
    rng = np.random.default_rng(seed)
    ts = np.sort(train["ts"].to_numpy(float))
    gaps = rng.choice(np.diff(ts), size=records - 1, replace=True)
    columns = {"ts": ts[0] + np.concatenate([[0.0], np.cumsum(gaps)])}
    for column in train.columns:
        if column in ("ts",) + schema.OUTPUT_COLUMNS:
            continue
        values = train[column].to_numpy()
        columns[column] = values[rng.integers(0, len(values), size=records)]
    return schema.conform(pd.DataFrame(columns))
