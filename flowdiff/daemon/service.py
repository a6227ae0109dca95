"""The serve loop: load the artifact, start or resume streams, generate turn after turn into
the fan-out, and shut down in order when asked.

Signals only set a flag (``StopFlag.set``); the loop notices it between turns, then:
STOPPING=1 -> fan-out drains (queues -> exporters flush and close) -> state saved ->
HTTP server stopped -> exit 0, all inside ``serve.shutdown_timeout``.

Progress is saved only for delivered records (at-least-once): the loop keeps the generator's
snapshot after each turn until every exporter has done that turn (``Fanout.acked_turn``),
and a save (periodic or at shutdown, also after a drain timeout) writes the snapshot of the
acknowledged turn. After a crash the restart regenerates the unacknowledged turns with the
same ``(stream_id, seq)`` and the same content, timestamps included (clocks are moved to the
wall clock only after the last turn generated before the crash).

Everything long-lived that touches the outside world (exporters, the metrics registry, the
environment for sd_notify, the clock) can be passed in, so tests give real local ones.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from prometheus_client import CollectorRegistry

from flowdiff.config import Config, ConfigError, ExporterConfig, Problems
from flowdiff.daemon.fanout import Fanout, Sink
from flowdiff.daemon.generator import StreamGenerator
from flowdiff.daemon.http import OpsServer
from flowdiff.daemon.lock import StateDirLock
from flowdiff.daemon.metrics import DaemonMetrics
from flowdiff.daemon.pacing import LagWatch, Pacer
from flowdiff.daemon.preflight import resolve_device, resolve_threads
from flowdiff.daemon.sdnotify import SdNotifier
from flowdiff.daemon.state import StreamState, load_state, save_state
from flowdiff.exporters.base import Exporter

log = logging.getLogger(__name__)

REALTIME_LEAD_SECONDS = 5.0  # realtime: generate at most this far ahead of the wall clock
STATE_SAVE_RESERVE = 2.0  # seconds of the shutdown bound kept for saving state
# Snapshots kept back to the acknowledged turn. ``block`` lanes bound them by their queues
# (generation waits); only a ``drop`` lane stuck on one batch (it accepts loss) reaches this.
MAX_SNAPSHOTS = 64


class StopFlag:
    """Set from a signal handler (only sets an event and notes when)."""

    def __init__(self):
        self.event = threading.Event()
        self.requested_at: float | None = None

    def set(self, *_signal_args) -> None:
        if self.requested_at is None:
            self.requested_at = time.monotonic()
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()

    def wait(self, timeout: float) -> bool:
        return self.event.wait(timeout)


@dataclass
class ServeResult:
    turns: int = 0
    records: int = 0
    resumed: bool = False
    clean_shutdown: bool = True
    next_seq: list[int] = field(default_factory=list)


def state_fingerprint(artifact, serve) -> dict:
    """What a saved state must match to be resumed: the model and the stream layout (and
    the shard, when sharded: a shard resumes only its own streams)."""
    fingerprint = {"artifact": artifact.artifact_id, "streams": serve.streams, "seed": serve.seed,
                   "context": artifact.context, "horizon": artifact.horizon,
                   "width": int(artifact.codec.width)}
    if serve.shard.sharded:
        fingerprint["shard"] = serve.shard.name
    return fingerprint


def build_exporters(configs: list[ExporterConfig], metrics: DaemonMetrics
                    ) -> list[tuple[ExporterConfig, Exporter]]:
    from flowdiff.exporters.registry import build_exporter

    return [(c, build_exporter(c.kind, c.name, c.options,
                               on_errors=metrics.exporter_errors.labels(exporter=c.name).inc))
            for c in configs]


def _seed_windows(cfg: Config, codec, context: int, streams: int) -> np.ndarray:
    """(S, C, F) real encoded windows from ``serve.seed_data``, one random offset per stream
    (offsets drawn for all shards' streams, this shard keeping its own)."""
    from flowdiff.ingest import read_flows

    table, _summary = read_flows(cfg.serve.seed_data)
    encoded = codec.encode(table)  # (n, F)
    if len(encoded) < context:
        raise ValueError(f"serve.seed_data {cfg.serve.seed_data}: {len(encoded)} records, "
                         f"need at least context = {context}")
    shard = cfg.serve.shard
    offsets = np.random.default_rng(cfg.serve.seed).integers(0, len(encoded) - context + 1,
                                                             streams * shard.count)
    offsets = offsets[shard.first_stream(streams):shard.first_stream(streams) + streams]
    return np.stack([encoded[o:o + context] for o in offsets]).astype(np.float32)


class Service:
    def __init__(self, cfg: Config, stop: StopFlag, *, registry: CollectorRegistry | None = None,
                 exporters: list[tuple[ExporterConfig, Exporter]] | None = None,
                 environ: dict | None = None, clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.stop = stop
        self.registry = registry or CollectorRegistry()
        self.metrics = DaemonMetrics(self.registry)
        self.exporters = exporters
        self.notifier = SdNotifier(environ)
        self.clock = clock
        self.shard = cfg.serve.shard
        self.state_dir = self.shard.state_dir(cfg.serve.state_dir)  # <state_dir>/<i>-of-<N> when sharded
        self.loaded = False
        self.heartbeat: float | None = None  # monotonic time the loop last made progress
        self.fanout: Fanout | None = None
        self.server: OpsServer | None = None
        self.lock: StateDirLock | None = None  # held while serving with a state_dir
        self._snapshots: dict[int, StreamState] = {}  # turn -> generator state after it
        self._rebase_at: int | None = None  # replaying: move clocks after this turn
        self.result = ServeResult()

    # ------------------------------------------------------------ probes
    def health(self) -> tuple[bool, str]:
        if self.heartbeat is None:
            return False, "starting: generation loop has not turned yet"
        age = time.monotonic() - self.heartbeat
        bound = self.cfg.serve.health_stale_seconds
        if age > bound:
            return False, f"stalled: last loop progress {age:.1f} s ago (bound {bound:.0f} s)"
        return True, f"ok: last loop progress {age:.1f} s ago"

    def ready(self) -> tuple[bool, str]:
        if not self.loaded or self.fanout is None:
            return False, "not ready: model loading"
        bad = self.fanout.healthy()
        if bad:
            return False, f"not ready: unhealthy exporter(s) {', '.join(bad)}"
        if self.shard.sharded:
            return True, f"ready ({self.shard.describe(self.cfg.serve.streams)})"
        return True, "ready"

    # ------------------------------------------------------------ run
    def run(self) -> ServeResult:
        """Serve until stopped (or ``max_records``), on ``serve.threads`` torch threads; the
        caller's thread count is restored on return (``generate`` and tests run this in
        their own process)."""
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(resolve_threads(self.cfg.serve.threads))
        try:
            return self._serve()
        finally:
            torch.set_num_threads(previous)

    def _serve(self) -> ServeResult:
        from flowdiff.artifact import load_artifact, resolve_model_dir
        from flowdiff.daemon.preflight import check_sampler

        s = self.cfg.serve
        gen = fingerprint = None
        try:
            if self.state_dir:
                self.lock = StateDirLock(self.state_dir).acquire()
            if self.cfg.metrics.enabled:
                self.server = self._start_server()
            device = resolve_device(s.device)  # auto: CUDA when present
            artifact = load_artifact(resolve_model_dir(s.model), device=device)
            problems = Problems(self.cfg.source, self.cfg.lines)
            check_sampler(self.cfg, artifact.model.process.timesteps, problems)
            problems.raise_if_any()  # before READY, as `flowdiff config check` reports it
            gen = StreamGenerator(artifact.model, artifact.codec,
                                  s.sampler.make(),
                                  context=artifact.context, horizon=artifact.horizon,
                                  streams=s.streams, device=device, timeline=s.timeline,
                                  seed=s.seed + self.shard.first_stream(s.streams),
                                  first_stream=self.shard.first_stream(s.streams),
                                  walk_streams=s.streams * self.shard.count)
            fingerprint = state_fingerprint(artifact, s)
            self._start_streams(gen, artifact, fingerprint)
            self._publish_info(artifact)
            exporters = self.exporters if self.exporters is not None else \
                build_exporters(self.cfg.exporters, self.metrics)
            pacer = Pacer(s.pace, s.speed, anchor_ts=float(gen.clocks.min()),
                          anchor_wall=self.clock(), clock=self.clock)
            if self.state_dir:  # the position a save may go back to
                self._snapshots[gen.turns] = gen.snapshot(fingerprint)
            self.fanout = Fanout([Sink(e, c.policy, c.queue) for c, e in exporters],
                                 self.metrics, pacer, give_up=self._past_drain_deadline,
                                 on_output_closed=self._output_closed,
                                 start_turn=gen.turns).start()
            self.loaded = True
            shard = f" ({self.shard.describe(s.streams)})" if self.shard.sharded else ""
            self.notifier.ready(f"{s.streams} streams{shard}, model {artifact.path}")
            log.info("serving %d streams (C=%d, H=%d, sampler %s/%d steps, pace %s)",
                     s.streams, artifact.context, artifact.horizon, s.sampler.kind,
                     s.sampler.steps, s.pace)
            self._loop(gen, pacer, fingerprint)
        except BaseException:
            self._shutdown(None)  # no state save: a half-done turn must not be persisted
            raise
        self._shutdown(gen)
        return self.result

    def _start_server(self) -> OpsServer:
        listen = self.cfg.metrics.listen
        try:
            server = OpsServer(listen, self.registry, self.health, self.ready)
        except OSError as exc:  # checked before (preflight), but the port may be taken since
            problem = f"metrics.listen: cannot listen on {listen}: {exc.strerror or exc}"
            raise ConfigError(self.cfg.source, [problem]) from exc
        return server.start()

    def _start_streams(self, gen: StreamGenerator, artifact, fingerprint: dict) -> None:
        """Resume from the saved state if there is one, else start fresh."""
        from flowdiff.model import make_sampler

        s = self.cfg.serve
        now = self.clock()
        saved = load_state(self.state_dir, fingerprint) if self.state_dir else None
        if saved is not None:
            generated = saved.generated_turns or saved.turns
            if generated > saved.turns:  # a crash: emit the unacknowledged turns as before
                gen.restore(saved, rebase_to=float("-inf"))
                self._rebase_at = generated
                log.info("resumed %d streams from %s at acknowledged turn %d: turns %d..%d "
                         "(what the crash may have emitted) are generated again with their "
                         "original timestamps", s.streams,
                         self.state_dir, saved.turns, saved.turns + 1, generated)
            else:
                gen.restore(saved, rebase_to=now)
                log.info("resumed %d streams from %s (turn %d)", s.streams, self.state_dir,
                         saved.turns)
            self.result.resumed = True
        elif s.start == "real":
            windows = _seed_windows(self.cfg, artifact.codec, artifact.context, s.streams)
            gen.start_from_windows(windows, start_ts=now)
        else:  # the unconditional start needs an unconditional sampler kind
            gen.start_unconditional(make_sampler("ddim", steps=s.sampler.steps), start_ts=now)

    def _publish_info(self, artifact) -> None:
        s = self.cfg.serve
        self.metrics.model_info.info({
            "artifact": artifact.artifact_id, "path": str(artifact.path),
            "version": str(artifact.meta.get("flowdiff_version", "")),
            "data_sha256": str(artifact.meta.get("data_sha256", ""))[:16],
            "context": str(artifact.context), "horizon": str(artifact.horizon),
            "features": str(artifact.codec.width), "sampler": s.sampler.kind,
            "sampler_steps": str(s.sampler.steps), "streams": str(s.streams),
            "shard": self.shard.name})
        self.metrics.shard_info.info({
            "shard": self.shard.name, "index": str(self.shard.index),
            "count": str(self.shard.count),
            "first_stream": str(self.shard.first_stream(s.streams)), "streams": str(s.streams)})

    def _loop(self, gen: StreamGenerator, pacer: Pacer, fingerprint: dict) -> None:
        s = self.cfg.serve
        lag = LagWatch(self.metrics.lag, s.lag_warning_seconds)
        self.heartbeat = time.monotonic()
        while not self.stop.is_set():
            if s.max_records is not None and self.result.records >= s.max_records:
                break
            ahead = pacer.seconds_until(float(gen.clocks.min())) - REALTIME_LEAD_SECONDS
            if ahead > 0:  # realtime and far enough ahead: wait for the clock
                self._tick()
                self.stop.wait(min(ahead, 1.0))
                continue
            turn = gen.step()
            records = turn.records
            if s.max_records is not None and self.state_dir is None:
                records = records.iloc[:max(0, s.max_records - self.result.records)]
            m = self.metrics
            m.predict_seconds.observe(turn.predict_seconds)
            m.count_generated(turn.stream_counts, first=gen.first_stream)
            m.count_repairs(turn.repairs)
            if self.state_dir:
                self._snapshots[gen.turns] = gen.snapshot(fingerprint)
            self.fanout.submit(records, turn=gen.turns)
            if self._rebase_at is not None and gen.turns >= self._rebase_at:
                self._end_replay(gen, pacer)
            self.result.turns += 1
            self.result.records += len(records)
            m.turns.inc()
            m.last_turn.set(self.clock())
            if pacer.realtime:
                lag.update(-pacer.seconds_until(float(gen.clocks.min())))
            self._tick()
            if self.state_dir:
                self._forget_acknowledged()
                if gen.turns % s.state_every == 0:
                    # A crash before the next save has generated at most state_every - 1
                    # turns more: the restart replays them all with their timestamps.
                    self._save(gen, generated=gen.turns + s.state_every - 1)

    def _output_closed(self, exporter: str) -> None:
        """An exporter's reader went away (``serve | head``): end the run like a Unix tool."""
        self.stop.set()

    def _tick(self) -> None:
        self.heartbeat = time.monotonic()
        self.notifier.watchdog()

    def _past_drain_deadline(self) -> bool:
        """True once the shutdown bound (minus the state-save reserve) has passed."""
        at = self.stop.requested_at
        bound = self.cfg.serve.shutdown_timeout
        return at is not None and time.monotonic() > at + max(0.0, bound - STATE_SAVE_RESERVE)

    def _end_replay(self, gen: StreamGenerator, pacer: Pacer) -> None:
        """The turns emitted before the crash are regenerated: from here on the clocks
        follow the wall clock again (as after a clean restart)."""
        now = self.clock()
        gen.rebase(now)
        pacer.reanchor(float(gen.clocks.min()), now)
        self._rebase_at = None

    def _forget_acknowledged(self) -> None:
        """Drop the snapshots before the acknowledged turn (never needed again), and the
        oldest beyond ``MAX_SNAPSHOTS``."""
        acked = self.fanout.acked_turn()
        for turn in sorted(self._snapshots)[:-1]:  # the newest stays: a save needs one
            if turn < acked or len(self._snapshots) > MAX_SNAPSHOTS:
                del self._snapshots[turn]

    def _save(self, gen: StreamGenerator, generated: int | None = None) -> StreamState:
        """Save the state after the last turn every exporter acknowledged, with the turns
        whose records may have been emitted (``generated``: default the turns generated so
        far, exact at shutdown; a periodic save passes the most a crash before the next
        save can have generated)."""
        self._forget_acknowledged()
        state = self._snapshots[min(self._snapshots)]
        generated = gen.turns if generated is None else generated
        state.generated_turns = max(generated, self._rebase_at or 0)  # replaying: its end
        save_state(self.state_dir, state)
        self.metrics.state_saves.inc()
        return state

    def _shutdown(self, gen: StreamGenerator | None) -> None:
        self.notifier.stopping()
        began = self.stop.requested_at or time.monotonic()
        bound = self.cfg.serve.shutdown_timeout
        if self.fanout is not None:
            remaining = max(0.5, began + bound - STATE_SAVE_RESERVE - time.monotonic())
            self.result.clean_shutdown = self.fanout.close(remaining)
        if gen is not None and gen.contexts is not None:
            self.result.next_seq = [int(x) for x in gen.next_seq]
            if self.state_dir and self.fanout is not None:
                saved = self._save(gen)
                self.result.next_seq = [int(x) for x in saved.next_seq]
                log.info("state saved to %s (acknowledged turn %d of %d, next seq %s)",
                         self.state_dir, saved.turns, gen.turns,
                         self.result.next_seq[:8])
        if self.server is not None:
            self.server.stop()
        if self.lock is not None:
            self.lock.release()
        log.info("stopped after %d turns, %d records (%.1f s after the stop request)",
                 self.result.turns, self.result.records, time.monotonic() - began)
