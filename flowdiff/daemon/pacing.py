"""Time: map synthetic timestamps to wall-clock release times and measure lag.

The generator's clocks start at the wall clock (timestamps are rebased onto "now"), so with
``speed == 1`` a record is due at its own ``ts``. ``speed`` compresses (> 1) or stretches (< 1)
time around the start anchor. ``pace: fast`` releases everything at once.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

RELEASE_GRANULARITY = 0.01  # seconds: records due within this window are released together
LAG_WARNING_PERIOD = 60.0  # seconds between two lag warnings


class Pacer:
    """Release schedule shared by the exporter workers and the generation loop."""

    def __init__(self, pace: str, speed: float, anchor_ts: float, anchor_wall: float,
                 clock: Callable[[], float] = time.time):
        self.realtime = pace == "realtime"
        self.speed = speed
        self.anchor_ts = anchor_ts
        self.anchor_wall = anchor_wall
        self.clock = clock

    def reanchor(self, anchor_ts: float, anchor_wall: float) -> None:
        """Map ``anchor_ts`` to ``anchor_wall`` from now on (after the clocks jumped)."""
        self.anchor_ts, self.anchor_wall = anchor_ts, anchor_wall

    def due(self, ts):
        """Wall-clock release time of synthetic timestamp(s) ``ts``."""
        return self.anchor_wall + (ts - self.anchor_ts) / self.speed

    def seconds_until(self, ts: float) -> float:
        return float(self.due(ts)) - self.clock() if self.realtime else 0.0

    def release(self, batch: pd.DataFrame, deliver: Callable[[pd.DataFrame], None],
                hurry: threading.Event) -> None:
        """Call ``deliver`` on ``batch`` in time order, each record no earlier than its due
        time (realtime) or all at once (fast, or once ``hurry`` is set at shutdown). Waits on
        ``hurry`` so a shutdown cuts the wait short."""
        if not self.realtime or hurry.is_set() or batch.empty:
            deliver(batch)
            return
        batch = batch.sort_values("ts", kind="stable", ignore_index=True)
        due = self.due(batch["ts"].to_numpy())  # (n,) wall times, ascending
        start = 0
        while start < len(batch):
            now = self.clock()
            end = int(np.searchsorted(due, now + RELEASE_GRANULARITY, side="right"))
            if end > start:
                deliver(batch.iloc[start:end])
                start = end
                continue
            if hurry.wait(timeout=min(float(due[start]) - now, 1.0)):
                deliver(batch.iloc[start:])
                return


class LagWatch:
    """Publishes the pacing lag and warns at most once per minute while it exceeds a bound."""

    def __init__(self, gauge, threshold: float, clock: Callable[[], float] = time.monotonic):
        self.gauge = gauge
        self.threshold = threshold
        self.clock = clock
        self._last_warning: float | None = None
        self.warnings = 0

    def update(self, lag: float) -> None:
        lag = max(0.0, lag)
        self.gauge.set(lag)
        if lag <= self.threshold:
            return
        now = self.clock()
        if self._last_warning is None or now - self._last_warning >= LAG_WARNING_PERIOD:
            self._last_warning = now
            self.warnings += 1
            log.warning("generation is %.1f s behind real time (bound %.1f s): records are "
                        "released late, none dropped; use fewer streams, fewer sampler steps "
                        "or a lower speed", lag, self.threshold)
