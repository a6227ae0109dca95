"""The one catalogue of the daemon's Prometheus metrics. Every name the daemon exports is
defined here, with its meaning; other modules receive a ``DaemonMetrics`` and never create
metrics themselves. Tests pass a fresh ``CollectorRegistry``.

=========================================  =========  ==================================================
name                                       type       meaning (labels)
=========================================  =========  ==================================================
flowdiff_records_generated_total           counter    records decoded by the generator (stream)
flowdiff_records_exported_total            counter    records an exporter accepted (exporter, stream)
flowdiff_records_dropped_total             counter    records not delivered: queue full under the
                                                      ``drop`` policy, exporter error, shutdown
                                                      bound reached, or the output's reader gone
                                                      (exporter, reason)
flowdiff_queue_depth_batches               gauge      batches waiting in an exporter's queue (exporter)
flowdiff_queue_capacity_batches            gauge      bound of that queue (exporter)
flowdiff_predict_seconds                   histogram  wall time of one predict step over all streams
flowdiff_turns_total                       counter    generation loop turns completed
flowdiff_last_turn_timestamp_seconds       gauge      unix time of the last completed turn
flowdiff_pacing_lag_seconds                gauge      how far the slowest stream's generated frontier is
                                                      behind the wall clock (0 when ahead)
flowdiff_codec_repairs_total               counter    decoded values repaired by the codec (field)
flowdiff_exporter_errors_total             counter    delivery errors reported by an exporter (exporter)
flowdiff_exporter_healthy                  gauge      1 while the exporter reports healthy (exporter)
flowdiff_state_saves_total                 counter    state files written
flowdiff_model_info                        info       artifact version, data hash, window, sampler
flowdiff_shard_info                        info       this daemon's shard: shard (i-of-N), index,
                                                      count, first_stream, streams
=========================================  =========  ==================================================
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

PREDICT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0)


class DaemonMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.generated = Counter("flowdiff_records_generated", "Records decoded by the generator",
                                 ["stream"], registry=registry)
        self.exported = Counter("flowdiff_records_exported", "Records accepted by an exporter",
                                ["exporter", "stream"], registry=registry)
        self.dropped = Counter("flowdiff_records_dropped",
                               "Records not delivered (queue full, exporter error, shutdown)",
                               ["exporter", "reason"], registry=registry)
        self.queue_depth = Gauge("flowdiff_queue_depth_batches", "Batches waiting per exporter",
                                 ["exporter"], registry=registry)
        self.queue_capacity = Gauge("flowdiff_queue_capacity_batches",
                                    "Queue bound per exporter", ["exporter"], registry=registry)
        self.predict_seconds = Histogram("flowdiff_predict_seconds",
                                         "Wall time of one predict step over all streams",
                                         buckets=PREDICT_BUCKETS, registry=registry)
        self.turns = Counter("flowdiff_turns", "Generation loop turns completed",
                             registry=registry)
        self.last_turn = Gauge("flowdiff_last_turn_timestamp_seconds",
                               "Unix time of the last completed turn", registry=registry)
        self.lag = Gauge("flowdiff_pacing_lag_seconds",
                         "Seconds the slowest stream's generated frontier is behind real time",
                         registry=registry)
        self.repairs = Counter("flowdiff_codec_repairs", "Decoded values repaired by the codec",
                               ["field"], registry=registry)
        self.exporter_errors = Counter("flowdiff_exporter_errors",
                                       "Delivery errors reported by an exporter", ["exporter"],
                                       registry=registry)
        self.exporter_healthy = Gauge("flowdiff_exporter_healthy",
                                      "1 while the exporter reports healthy", ["exporter"],
                                      registry=registry)
        self.state_saves = Counter("flowdiff_state_saves", "State files written",
                                   registry=registry)
        self.model_info = Info("flowdiff_model", "Artifact and sampler in use", registry=registry)
        self.shard_info = Info("flowdiff_shard", "This daemon's shard and its global stream ids",
                               registry=registry)

    def count_generated(self, stream_counts, first: int = 0) -> None:
        """``stream_counts[i]`` records were generated by stream ``first + i`` (global id)."""
        for stream, n in enumerate(stream_counts, start=first):
            if n:
                self.generated.labels(stream=str(stream)).inc(int(n))

    def count_exported(self, exporter: str, stream_counts) -> None:
        for stream, n in enumerate(stream_counts):
            if n:
                self.exported.labels(exporter=exporter, stream=str(stream)).inc(int(n))

    def count_repairs(self, repairs: dict) -> None:
        for name, n in repairs.items():
            if n:
                self.repairs.labels(field=str(name)).inc(int(n))
