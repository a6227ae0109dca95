"""Fan-out: one bounded queue and one worker thread per exporter.

The generation loop calls ``submit(batch)``; each exporter's queue takes the same batch
(DataFrames are shared read-only). Policy per exporter when its queue is full: ``block`` waits
(backpressure: generation stalls, memory stays bounded by ``queue`` batches) and ``drop``
discards the batch for that exporter, counting the records in
``flowdiff_records_dropped_total{reason="queue_full"}``. Workers pace records (see
``pacing.Pacer``), deliver them, and count exported records and errors. ``close`` drains in
order: queues empty -> exporters flushed and closed, within a deadline; an exporter still
busy at the deadline is cut short (``Exporter.terminate``: its retry waits end at once) and
then closed without waiting for its destination.

A delivery that fails is, under ``block``, retried with back-off (0.1 s doubling to 5 s) until
it succeeds: the exporter reports unhealthy with the error as its reason meanwhile, its queue
fills and generation waits; nothing is discarded before the shutdown bound. Under ``drop``
the failed records are counted (``reason="error"``). An exporter whose reader went away for
good (``OutputClosed``: EPIPE on stdout) ends the run through ``on_output_closed``.

Acknowledged progress: ``submit(batch, turn)`` numbers each batch with the generation turn
that made it. A lane counts a turn as done once its batch was delivered (``submit`` of the
exporter returned: written and flushed, acknowledged by the broker) or dropped by the
``drop`` policy; ``acked_turn()`` is the last turn every lane has done, all earlier ones
included. A batch lost at the shutdown bound or after the reader went away is never done,
so the daemon's saved state stays before it and a restart emits it again.
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
from flowdiff.exporters.base import Exporter, OutputClosed

log = logging.getLogger(__name__)

_CLOSE = object()  # queue sentinel: flush and close the exporter, then end the worker
_PUT_POLL = 0.1  # seconds between checks of the abort flag while blocked on a full queue
_ABORT_GRACE = 0.5  # seconds a worker gets to notice the abort and count its batch
RETRY_FIRST = 0.1  # seconds before the first retry of a failed delivery (policy block)
RETRY_MAX = 5.0  # back-off cap between retries


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
        self.problem: str | None = None  # why deliveries fail right now (retrying), else None
        self.gone = False  # the output's reader went away: later batches are discarded
        self.acked = fanout.start_turn  # every turn <= acked is done (delivered or dropped)
        self._done: set[int] = set()  # turns done out of order (a drop ahead of the queue)
        self._done_lock = threading.Lock()  # the loop (drops) and the worker both mark
        self._undelivered = False  # the batch being released lost records (not done)
        self.thread = threading.Thread(target=self._work, name=f"exporter-{self.name}",
                                       daemon=True)

    def is_healthy(self) -> bool:
        return bool(self.sink.exporter.healthy) and not self.closed and self.problem is None

    def mark_done(self, turn: int | None) -> None:
        """Turn ``turn``'s batch is delivered or deliberately dropped for this lane."""
        if turn is None:
            return
        with self._done_lock:
            self._done.add(turn)
            while self.acked + 1 in self._done:
                self.acked += 1
                self._done.discard(self.acked)

    def _work(self) -> None:
        m = self.fanout.metrics
        while True:
            item = self.queue.get()
            m.queue_depth.labels(exporter=self.name).set(self.queue.qsize())
            if item is _CLOSE:
                self._close_exporter()
                return
            turn, batch = item
            self._undelivered = False
            try:
                self.fanout.pacer.release(batch, self._deliver, self.fanout.hurry)
            except Exception:  # a worker must never die silently
                log.exception("exporter %s: unexpected failure while delivering", self.name)
                self._undelivered = True
            if not self._undelivered:
                self.mark_done(turn)

    def _deliver(self, chunk: pd.DataFrame) -> None:
        m = self.fanout.metrics
        exporter = self.sink.exporter
        backoff = RETRY_FIRST
        while not self.gone:
            try:
                exporter.submit(chunk)
            except OutputClosed as exc:  # e.g. `flowdiff serve | head`: stop quietly
                self.gone = True
                log.info("exporter %s: %s; stopping", self.name, exc)
                self.fanout.on_output_closed(self.name)
                break
            except Exception as exc:  # ExporterError or a bug in the exporter: count, log
                m.exporter_errors.labels(exporter=self.name).inc()
                if self.sink.policy == "drop":
                    m.dropped.labels(exporter=self.name, reason="error").inc(len(chunk))
                    log.error("exporter %s: %d records lost: %s", self.name, len(chunk), exc)
                    return
                self.problem = f"delivery failing, retrying: {exc}"
                if not self.fanout.abort.is_set():
                    log.error("exporter %s: %d records not delivered, retrying in %.1f s: %s",
                              self.name, len(chunk), backoff, exc)
                if self.fanout.abort.wait(backoff):  # the shutdown bound was reached
                    m.dropped.labels(exporter=self.name, reason="shutdown").inc(len(chunk))
                    self._undelivered = True
                    return
                backoff = min(2 * backoff, RETRY_MAX)
                continue
            if self.problem is not None:
                log.info("exporter %s: delivering again", self.name)
                self.problem = None
            m.count_exported(self.name, _stream_counts(chunk))
            return
        m.dropped.labels(exporter=self.name, reason="output_closed").inc(len(chunk))
        self._undelivered = True

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
                 give_up: Callable[[], bool] = lambda: False,
                 on_output_closed: Callable[[str], None] = lambda name: None,
                 start_turn: int = 0):
        self.metrics = metrics
        self.start_turn = start_turn  # turns up to this one were done before (resume)
        self.last_turn = start_turn  # the last turn submitted
        self.give_up = give_up  # polled while blocked on a full queue: True = stop waiting
        self.on_output_closed = on_output_closed  # called with the exporter's name
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

    def submit(self, batch: pd.DataFrame, turn: int | None = None) -> None:
        """Queue ``batch`` (made by generation turn ``turn``, numbered 1, 2, ... after
        ``start_turn``; None: not tracked) for every exporter under its policy (may block:
        backpressure)."""
        if turn is not None:
            self.last_turn = turn
        item = (turn, batch)
        for lane in self.lanes:
            if lane.sink.policy == "drop":
                try:
                    lane.queue.put_nowait(item)
                except queue.Full:
                    self.metrics.dropped.labels(exporter=lane.name, reason="queue_full").inc(
                        len(batch))
                    lane.mark_done(turn)  # dropped by policy: not to be sent again
            else:
                while True:
                    try:
                        lane.queue.put(item, timeout=_PUT_POLL)
                        break
                    except queue.Full:
                        if self.abort.is_set() or self.give_up():
                            self.metrics.dropped.labels(exporter=lane.name,
                                                        reason="shutdown").inc(len(batch))
                            break
            self.metrics.queue_depth.labels(exporter=lane.name).set(lane.queue.qsize())

    def acked_turn(self) -> int:
        """The last turn every exporter has done (delivered or dropped by policy), all
        earlier turns included."""
        return min((lane.acked for lane in self.lanes), default=self.last_turn)

    def healthy(self) -> list[str]:
        """``name`` (or ``name (reason)`` when deliveries fail) of each unhealthy exporter."""
        return [lane.name if lane.problem is None else f"{lane.name} ({lane.problem})"
                for lane in self.lanes if not lane.is_healthy()]

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
                lane.sink.exporter.terminate()  # its waits and retries end now
                lost = 0
                while True:
                    try:
                        item = lane.queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not _CLOSE:
                        lost += len(item[1])
                self.metrics.dropped.labels(exporter=lane.name, reason="shutdown").inc(lost)
                log.error("exporter %s did not drain within %.1f s: %d queued records dropped",
                          lane.name, timeout, lost)
                try:  # the worker closes the exporter once its cut-short submit returns
                    lane.queue.put_nowait(_CLOSE)
                except queue.Full:
                    pass
                # a worker retrying a failed batch sees the abort at once and counts it
                lane.thread.join(timeout=_ABORT_GRACE)
        return clean
