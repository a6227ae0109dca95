"""Fan-out: bounded queues, block/drop policies, pacing, drain on close."""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from flowdiff.daemon.fanout import Fanout, Sink
from flowdiff.daemon.metrics import DaemonMetrics
from flowdiff.daemon.pacing import LagWatch, Pacer
from flowdiff.exporters.base import Exporter, ExporterError
from flowdiff.exporters.null import NullConfig, NullExporter


class GateExporter(Exporter):
    """Delivers only while its gate is open (a sink that can stall on demand)."""
    kind = "gate"

    def __init__(self, name: str):
        super().__init__(name)
        self.gate = threading.Event()
        self.batches: list[pd.DataFrame] = []
        self.closed = False

    def submit(self, batch):
        self.gate.wait()
        self.batches.append(batch)
        return len(batch)

    def close(self):
        self.closed = True


class FailingExporter(Exporter):
    """Fails the first ``failures`` submits (all of them by default), then delivers."""
    kind = "failing"

    def __init__(self, name: str, failures: int | None = None):
        super().__init__(name)
        self.failures = failures
        self.attempts = 0
        self.batches: list[pd.DataFrame] = []

    def submit(self, batch):
        self.attempts += 1
        if self.failures is None or self.attempts <= self.failures:
            raise ExporterError(f"{self.name}: target unreachable")
        self.batches.append(batch)
        return len(batch)


def batch(n: int, start_seq: int = 0, stream: int = 0, ts0: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame({"ts": ts0 + np.arange(n, dtype=np.float64) * 0.001,
                         "stream_id": np.full(n, stream, dtype=np.int32),
                         "seq": start_seq + np.arange(n, dtype=np.int64)})


def fast_pacer() -> Pacer:
    return Pacer("fast", 1.0, anchor_ts=0.0, anchor_wall=0.0)


def value(registry, name, **labels):
    return registry.get_sample_value(name, labels) or 0.0


def test_block_policy_stalls_generation_with_bounded_memory():
    registry = CollectorRegistry()
    gate = GateExporter("slow")
    fanout = Fanout([Sink(gate, "block", 2)], DaemonMetrics(registry), fast_pacer()).start()
    submitted = []

    def produce():
        for i in range(10):
            fanout.submit(batch(100, start_seq=i * 100))
            submitted.append(i)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    time.sleep(0.5)
    # the worker holds 1 batch (blocked in submit), the queue holds 2, the producer waits on
    # the 4th: generation is stalled and nothing beyond the bound is buffered
    assert len(submitted) == 3
    assert fanout.lanes[0].queue.qsize() == 2
    assert value(registry, "flowdiff_queue_depth_batches", exporter="slow") == 2
    gate.gate.set()
    producer.join(timeout=5)
    assert len(submitted) == 10
    assert fanout.close(timeout=5)
    seqs = np.concatenate([b["seq"].to_numpy() for b in gate.batches])
    np.testing.assert_array_equal(seqs, np.arange(1000))  # in order, nothing lost
    assert gate.closed
    assert value(registry, "flowdiff_records_exported_total", exporter="slow", stream="0") == 1000
    assert value(registry, "flowdiff_records_dropped_total", exporter="slow",
                 reason="queue_full") == 0


def test_drop_policy_counts_drops_and_never_blocks():
    registry = CollectorRegistry()
    gate = GateExporter("lossy")
    fast = NullExporter("fast", NullConfig())
    fanout = Fanout([Sink(gate, "drop", 1), Sink(fast, "block", 4)], DaemonMetrics(registry),
                    fast_pacer()).start()
    started = time.monotonic()
    for i in range(6):
        fanout.submit(batch(10, start_seq=i * 10))
        time.sleep(0.05)
    assert time.monotonic() - started < 2.0  # the stalled sink did not block the producer
    gate.gate.set()
    assert fanout.close(timeout=5)
    delivered = sum(len(b) for b in gate.batches)
    dropped = value(registry, "flowdiff_records_dropped_total", exporter="lossy",
                    reason="queue_full")
    assert delivered == 20  # one in the worker, one in the queue
    assert dropped == 40
    assert delivered + dropped == 60
    assert fast.records == 60  # the other exporter got everything


def test_exporter_error_under_drop_is_counted_not_fatal():
    registry = CollectorRegistry()
    fanout = Fanout([Sink(FailingExporter("bad"), "drop", 2)], DaemonMetrics(registry),
                    fast_pacer()).start()
    fanout.submit(batch(7), turn=1)
    fanout.submit(batch(5), turn=2)
    assert fanout.close(timeout=5)
    assert value(registry, "flowdiff_exporter_errors_total", exporter="bad") == 2
    assert value(registry, "flowdiff_records_dropped_total", exporter="bad", reason="error") == 12
    assert fanout.acked_turn() == 2  # dropped by policy: done, not to be sent again


def test_exporter_error_under_block_is_retried_not_discarded():
    """Block: a failing delivery is retried with back-off while the lane reports why; the
    turn is acknowledged only once delivered."""
    registry = CollectorRegistry()
    flaky = FailingExporter("flaky", failures=3)
    fanout = Fanout([Sink(flaky, "block", 2)], DaemonMetrics(registry), fast_pacer()).start()
    fanout.submit(batch(7), turn=1)
    deadline = time.monotonic() + 5
    while not fanout.healthy() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fanout.healthy() == ["flaky (delivery failing, retrying: flaky: target unreachable)"]
    assert fanout.acked_turn() == 0
    fanout.submit(batch(5, start_seq=7), turn=2)
    assert fanout.close(timeout=10)
    assert [len(b) for b in flaky.batches] == [7, 5] and fanout.acked_turn() == 2
    assert value(registry, "flowdiff_exporter_errors_total", exporter="flaky") == 3
    assert value(registry, "flowdiff_records_dropped_total", exporter="flaky", reason="error") == 0


def test_block_retry_gives_up_at_the_shutdown_bound_without_acknowledging():
    registry = CollectorRegistry()
    fanout = Fanout([Sink(FailingExporter("bad"), "block", 2)], DaemonMetrics(registry),
                    fast_pacer()).start()
    fanout.submit(batch(7), turn=1)
    assert fanout.close(timeout=1.0) is False
    assert value(registry, "flowdiff_records_dropped_total", exporter="bad", reason="shutdown") == 7
    assert fanout.acked_turn() == 0  # the saved state stays before the lost batch


def test_close_deadline_counts_stuck_records_as_dropped():
    registry = CollectorRegistry()
    gate = GateExporter("stuck")
    fanout = Fanout([Sink(gate, "block", 3)], DaemonMetrics(registry), fast_pacer()).start()
    for i in range(3):
        fanout.submit(batch(10, start_seq=10 * i))
    started = time.monotonic()
    assert fanout.close(timeout=0.5) is False
    assert time.monotonic() - started < 2.0
    # one batch is inside the stuck exporter; the two queued ones are counted as dropped
    assert value(registry, "flowdiff_records_dropped_total", exporter="stuck",
                 reason="shutdown") == 20
    gate.gate.set()


def test_realtime_pacer_releases_records_at_their_time():
    t0 = time.time()
    pacer = Pacer("realtime", speed=2.0, anchor_ts=1000.0, anchor_wall=t0)
    records = pd.DataFrame({"ts": [1000.0, 1000.4, 1000.8], "stream_id": [0, 0, 0],
                            "seq": [0, 1, 2]})
    released = []
    pacer.release(records, lambda chunk: released.extend(
        (int(s), time.time() - t0) for s in chunk["seq"]), threading.Event())
    assert [s for s, _ in released] == [0, 1, 2]
    offsets = [t for _, t in released]  # speed 2: due at 0, 0.2, 0.4 s
    assert offsets[0] < 0.1
    assert 0.17 <= offsets[1] < 0.35
    assert 0.37 <= offsets[2] < 0.55


def test_pacer_hurry_releases_everything_at_once():
    pacer = Pacer("realtime", speed=1.0, anchor_ts=0.0, anchor_wall=time.time())
    hurry = threading.Event()
    threading.Timer(0.1, hurry.set).start()
    released = []
    started = time.monotonic()
    pacer.release(batch(3, ts0=100.0), lambda c: released.append(len(c)), hurry)
    assert sum(released) == 3 and time.monotonic() - started < 1.0


def test_lag_watch_warns_once_per_minute(caplog):
    registry = CollectorRegistry()
    now = [0.0]
    watch = LagWatch(DaemonMetrics(registry).lag, threshold=1.0, clock=lambda: now[0])
    for lag in (0.5, 3.0, 4.0, 5.0):
        watch.update(lag)
        now[0] += 10
    assert registry.get_sample_value("flowdiff_pacing_lag_seconds") == 5.0
    assert watch.warnings == 1
    now[0] += 60
    watch.update(7.0)
    assert watch.warnings == 2
    assert "behind real time" in caplog.text
    watch.update(-3.0)
    assert registry.get_sample_value("flowdiff_pacing_lag_seconds") == 0.0


@pytest.mark.parametrize("policy", ["block", "drop"])
def test_healthy_lists_unhealthy_exporters(policy):
    class Down(NullExporter):
        @property
        def healthy(self):
            return False

    registry = CollectorRegistry()
    fanout = Fanout([Sink(Down("down", NullConfig()), policy, 1),
                     Sink(NullExporter("up", NullConfig()), policy, 1)],
                    DaemonMetrics(registry), fast_pacer())
    assert fanout.healthy() == ["down"]
    assert registry.get_sample_value("flowdiff_exporter_healthy", {"exporter": "down"}) == 0
    assert registry.get_sample_value("flowdiff_exporter_healthy", {"exporter": "up"}) == 1
