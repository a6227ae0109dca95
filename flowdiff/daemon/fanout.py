"""Fan-out: one bounded queue and one worker thread per exporter.

The generation loop calls ``submit(batch)``; each exporter's queue takes the same batch
(DataFrames are shared read-only). Policy per exporter when its queue is full: ``block`` waits
(backpressure: generation stalls, memory stays bounded by ``queue`` batches) and ``drop``
discards the batch for that exporter, counting the records in
``flowdiff_records_dropped_total{reason="queue_full"}``. Workers pace records (see
``pacing.Pacer``), deliver them, and count exported records and errors. ``close`` drains in
order: queues empty -> exporters flushed and closed, within a deadline.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from flowdiff.daemon.metrics import DaemonMetrics
from flowdiff.daemon.pacing import Pacer
from flowdiff.exporters.base import Exporter

log = logging.getLogger(__name__)

_CLOSE = object()  # queue sentinel: flush and close the exporter, then end the worker
_PUT_POLL = 0.1  # seconds between checks of the abort flag while blocked on a full queue


@dataclass
class Sink:
    exporter: Exporter
    policy: str  # "block" | "drop"
    capacity: int  # queue bound, in batches


class _Lane:
    """One exporter with its queue and worker thread."""

    def __init__(self, sink: Sink, fanout: "Fanout"):
        self.sink = sink
        self.name = sink.exporter.name
        self.queue: queue.Queue = queue.Queue(maxsize=sink.capacity)
        self.fanout = fanout
        self.closed = False
        self.thread = threading.Thread(target=self._work, name=f"exporter-{self.name}",
                                       daemon=True)
        sink.exporter.on_errors = fanout.metrics.exporter_errors.labels(exporter=self.name).inc

    def is_healthy(self) -> bool:
        return bool(self.sink.exporter.healthy) and not self.closed

    def _work(self) -> None:
        m = self.fanout.metrics
        while True:
            item = self.queue.get()
            m.queue_depth.labels(exporter=self.name).set(self.queue.qsize())
            if item is _CLOSE:
                self._close_exporter()
                return
            try:
                self.fanout.pacer.release(item, self._deliver, self.fanout.hurry)
            except Exception:  # a worker must never die silently
                log.exception("exporter %s: unexpected failure while delivering", self.name)

    def _deliver(self, chunk: pd.DataFrame) -> None:
        m = self.fanout.metrics
        exporter = self.sink.exporter
        try:
            exporter.submit(chunk)
            m.count_exported(self.name, _stream_counts(chunk))
        except Exception as exc:  # ExporterError or a bug in the exporter: count, log, go on
            m.exporter_errors.labels(exporter=self.name).inc()
            m.dropped.labels(exporter=self.name, reason="error").inc(len(chunk))
            log.error("exporter %s: %d records lost: %s", self.name, len(chunk), exc)

    def _close_exporter(self) -> None:
        try:
            self.sink.exporter.close()
        except Exception as exc:
            self.fanout.metrics.exporter_errors.labels(exporter=self.name).inc()
            log.error("exporter %s: close failed: %s", self.name, exc)
        self.closed = True


def _stream_counts(batch: pd.DataFrame) -> np.ndarray:
    return np.bincount(batch["stream_id"].to_numpy(dtype=np.int64)) if len(batch) else \
        np.zeros(0, dtype=np.int64)


class Fanout:
    def __init__(self, sinks: list[Sink], metrics: DaemonMetrics, pacer: Pacer,
                 give_up: Callable[[], bool] = lambda: False):
        self.metrics = metrics
        self.give_up = give_up  # polled while blocked on a full queue: True = stop waiting
        self.pacer = pacer
        self.hurry = threading.Event()  # set at shutdown: release without pacing
        self.abort = threading.Event()  # set when the shutdown bound is reached
        self.lanes = [_Lane(s, self) for s in sinks]
        for lane in self.lanes:
            metrics.queue_capacity.labels(exporter=lane.name).set(lane.sink.capacity)
            metrics.queue_depth.labels(exporter=lane.name).set(0)
            metrics.dropped.labels(exporter=lane.name, reason="queue_full")  # show zero
            # Evaluated at each scrape, so an outage shows even while the loop is blocked.
            metrics.exporter_healthy.labels(exporter=lane.name).set_function(lane.is_healthy)

    def start(self) -> "Fanout":
        for lane in self.lanes:
            lane.thread.start()
        return self

    def submit(self, batch: pd.DataFrame) -> None:
        """Queue ``batch`` for every exporter under its policy (may block: backpressure)."""
        for lane in self.lanes:
            if lane.sink.policy == "drop":
                try:
                    lane.queue.put_nowait(batch)
                except queue.Full:
                    self.metrics.dropped.labels(exporter=lane.name, reason="queue_full").inc(
                        len(batch))
            else:
                while True:
                    try:
                        lane.queue.put(batch, timeout=_PUT_POLL)
                        break
                    except queue.Full:
                        if self.abort.is_set() or self.give_up():
                            self.metrics.dropped.labels(exporter=lane.name,
                                                        reason="shutdown").inc(len(batch))
                            break
            self.metrics.queue_depth.labels(exporter=lane.name).set(lane.queue.qsize())

    def healthy(self) -> list[str]:
        """Names of exporters that report unhealthy."""
        return [lane.name for lane in self.lanes if not lane.is_healthy()]

    def close(self, timeout: float) -> bool:
        """Drain every queue, flush and close every exporter, within ``timeout`` seconds.
        Returns True when all exporters closed in time; records still queued after the
        deadline are counted as dropped (reason ``shutdown``) and logged."""
        deadline = time.monotonic() + timeout
        self.hurry.set()
        for lane in self.lanes:
            while True:
                try:
                    lane.queue.put(_CLOSE, timeout=max(0.0, min(_PUT_POLL,
                                                                deadline - time.monotonic())))
                    break
                except queue.Full:
                    if time.monotonic() >= deadline:
                        break
        clean = True
        for lane in self.lanes:
            lane.thread.join(timeout=max(0.0, deadline - time.monotonic()))
            if lane.thread.is_alive() or not lane.closed:
                clean = False
                self.abort.set()
                lost = 0
                while True:
                    try:
                        item = lane.queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not _CLOSE:
                        lost += len(item)
                self.metrics.dropped.labels(exporter=lane.name, reason="shutdown").inc(lost)
                log.error("exporter %s did not drain within %.1f s: %d queued records dropped",
                          lane.name, timeout, lost)
        return clean
