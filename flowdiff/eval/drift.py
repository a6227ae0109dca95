"""Drift view: the headline metrics on consecutive segments of one synthetic stream.

The stream is cut, in record order, into segments of ``segment_records`` (a tail shorter
than half a segment joins the last one). Each segment is compared with the whole real
trace. ``relative_change`` is ``|last - first| / first`` for the distance metrics (mean
JSD, largest scale-free EMD, temporal-dependence error), so "the last segment's metrics
are within 10 % of the first" reads as ``max_relative_change <= 0.1``. The violation
fraction and the discriminative scores (windows, records) are near 0 for a good stream, where a ratio is noise;
they get ``absolute_change`` = ``|last - first|`` instead.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from flowdiff.eval.compare import EvalConfig, RealReference, compare, headline

RELATIVE_METRICS = ("jsd_mean", "emd_sf_max", "dependence_error")
ABSOLUTE_METRICS = ("violation_fraction", "discriminative", "record_discriminative")
DRIFT_METRICS = RELATIVE_METRICS + ABSOLUTE_METRICS


def segment_bounds(n: int, segment_records: int) -> list[tuple[int, int]]:
    """[(start, stop)) index ranges of consecutive segments covering 0..n."""
    starts = list(range(0, n, segment_records))
    bounds = [(s, min(s + segment_records, n)) for s in starts]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < segment_records / 2:
        tail = bounds.pop()
        bounds[-1] = (bounds[-1][0], tail[1])
    return bounds


def drift(reference: RealReference, synthetic: pd.DataFrame, config: EvalConfig) -> dict:
    segments = []
    for start, stop in segment_bounds(len(synthetic), config.segment_records):
        part = synthetic.iloc[start:stop].reset_index(drop=True)
        row = headline(compare(reference, part, config))
        segments.append({"start": start, "stop": stop,
                         **{k: row.get(k) for k in DRIFT_METRICS}})
    first, last = segments[0], segments[-1]
    relative = {k: _change(first[k], last[k], relative=True) for k in RELATIVE_METRICS}
    absolute = {k: _change(first[k], last[k], relative=False) for k in ABSOLUTE_METRICS}
    known = [v for v in relative.values() if v is not None]
    return {"segment_records": config.segment_records, "segments": segments,
            "relative_change": relative, "absolute_change": absolute,
            "max_relative_change": float(max(known)) if known else None}


def _change(first: float | None, last: float | None, relative: bool) -> float | None:
    if first is None or last is None or not (np.isfinite(first) and np.isfinite(last)):
        return None
    diff = abs(last - first)
    return float(diff / max(abs(first), 1e-12)) if relative else float(diff)
