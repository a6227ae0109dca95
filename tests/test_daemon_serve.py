"""The serve loop end to end with the REAL tiny model and codec (``tiny_model`` in conftest:
trained once per session on the first 1,500 UGR'16 records, a few seconds on one core)."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from prometheus_client import CollectorRegistry

from flowdiff.config import ExporterConfig, parse_config
from flowdiff.daemon.service import Service, StopFlag
from flowdiff.exporters.base import Exporter
from flowdiff.exporters.stdout import JsonLinesExporter
from conftest import assert_restore_continues
from realtools import http_get

REPO = Path(__file__).resolve().parents[1]
START = 1_700_000_000.0  # fixed clock: same seed -> identical records, timestamps included


class Collect(Exporter):
    """Keeps every delivered batch; optionally blocks after ``open_batches`` deliveries."""
    kind = "collect"

    def __init__(self, name="collect", open_batches: int | None = None):
        super().__init__(name)
        self.batches: list[pd.DataFrame] = []
        self.gate = threading.Event()
        self.open_batches = open_batches
        self.is_healthy = True

    def submit(self, batch):
        if self.open_batches is not None and len(self.batches) >= self.open_batches:
            self.gate.wait()
        self.batches.append(batch)
        return len(batch)

    @property
    def healthy(self):
        return self.is_healthy

    def records(self) -> pd.DataFrame:
        return pd.concat(self.batches, ignore_index=True)


def make_cfg(model: Path, **serve):
    base = {"model": str(model), "streams": 3, "seed": 11, "pace": "fast", "threads": 1,
            "sampler": {"kind": "replacement", "steps": 4}}
    base.update(serve)
    return parse_config({"serve": base, "metrics": {"listen": "127.0.0.1:0"}}, "test")


def run_collect(model, exporter=None, registry=None, **serve):
    exporter = exporter or Collect()
    service = Service(make_cfg(model, **serve), StopFlag(), registry=registry or CollectorRegistry(),
                      exporters=[(ExporterConfig(kind="collect", name=exporter.name), exporter)],
                      clock=lambda: START)
    return service.run(), exporter


def test_stream_is_continuous_across_turns(tiny_model):
    result, out = run_collect(tiny_model, max_records=3 * 8 * 4)  # 4 turns of H = 8
    records = out.records()
    assert result.turns == 4 and len(records) == 96
    assert result.next_seq == [32, 32, 32]
    for stream, part in records.groupby("stream_id"):
        np.testing.assert_array_equal(part["seq"].to_numpy(), np.arange(32))
        ts = part["ts"].to_numpy()
        assert (np.diff(ts) >= 0).all(), f"stream {stream}: time goes backwards"
        assert ts[0] >= START
    assert set(records["stream_id"]) == {0, 1, 2}
    assert records["srcip"].dtype == np.uint32 and records["seq"].dtype == np.int64


def test_contexts_slide_and_records_decode_the_new_steps(tiny_model):
    from flowdiff.artifact import load_artifact
    from flowdiff.daemon.generator import StreamGenerator
    from flowdiff.model import make_sampler

    art = load_artifact(tiny_model)
    gen = StreamGenerator(art.model, art.codec, make_sampler("replacement", steps=3),
                          context=art.context, horizon=art.horizon, streams=2, seed=5)
    gen.start_unconditional(make_sampler("ddim", steps=3), start_ts=START)
    for _ in range(3):
        before = gen.contexts.clone()  # (S, C, F)
        clocks = gen.clocks.clone()
        history = {k: v.copy() for k, v in gen.history.items()}
        turn = gen.step()
        h = art.horizon
        assert gen.contexts.shape == before.shape
        assert torch.equal(gen.contexts[:, :-h], before[:, h:])  # slid by H
        assert not torch.equal(gen.contexts[:, -h:], before[:, -h:])
        for s in range(2):  # the records are exactly the decoded new steps, stream by stream
            expected = art.codec.decode_streams(
                gen.contexts[s:s + 1, -h:].numpy(), clocks[s:s + 1].numpy(),
                [np.random.default_rng(turn.decode_seeds[s])],
                {k: v[s:s + 1] for k, v in history.items()})
            got = turn.records[turn.records["stream_id"] == s].drop(columns=["stream_id", "seq"])
            pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.result.table)
        assert art.codec.reuse_fields and all(  # the reuse history moved on with the stream
            (v[:, -1] == turn.records.groupby("stream_id")[k].last().to_numpy()).all()
            for k, v in gen.history.items())


def test_a_restored_generator_continues_exactly(tiny_model):
    """Snapshot after two turns, restore into a fresh generator: the next turns equal the
    uninterrupted run's — the saved generator states seed the sampled ports too, and the
    saved address history resolves reuse codes that point into the previous turn."""
    from flowdiff.artifact import load_artifact

    art = load_artifact(tiny_model)
    assert art.codec.draws and art.codec.reuse_fields   # the default codec samples and reuses
    assert_restore_continues(art)


def test_same_seed_gives_same_records(tiny_model):
    _, first = run_collect(tiny_model, max_records=48)
    _, second = run_collect(tiny_model, max_records=48)
    _, other = run_collect(tiny_model, max_records=48, seed=12)
    pd.testing.assert_frame_equal(first.records(), second.records())
    assert not first.records()["srcip"].equals(other.records()["srcip"])


def test_resume_continues_seq_without_gap_or_duplicate(tiny_model, tmp_path):
    state = str(tmp_path / "state")
    first, out1 = run_collect(tiny_model, max_records=40, state_dir=state)
    second, out2 = run_collect(tiny_model, max_records=40, state_dir=state)
    assert not first.resumed and second.resumed
    both = pd.concat([out1.records(), out2.records()])
    for stream, part in both.groupby("stream_id"):
        seq = part["seq"].to_numpy()
        np.testing.assert_array_equal(np.sort(seq), np.arange(len(seq)))  # no gap, no dup
    # resuming gives exactly what an uninterrupted run produces
    _, straight = run_collect(tiny_model, max_records=96)
    key = ["stream_id", "seq"]
    a = both.sort_values(key, ignore_index=True).drop(columns="ts")
    b = straight.records().sort_values(key, ignore_index=True).drop(columns="ts")
    pd.testing.assert_frame_equal(a, b)


def _wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_metrics_and_health_follow_a_stalled_exporter(tiny_model):
    registry = CollectorRegistry()
    sink = Collect("sink", open_batches=0)  # blocks on the first batch
    cfg = make_cfg(tiny_model, health_stale_seconds=1.0)
    cfg.exporters[0].queue = 1
    stop = StopFlag()
    service = Service(cfg, stop, registry=registry,
                      exporters=[(ExporterConfig(kind="collect", name="sink", queue=1), sink)],
                      clock=lambda: START)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    value = registry.get_sample_value
    # 1 batch inside the blocked exporter, 1 in the queue, the 3rd turn waits in submit
    assert _wait_for(lambda: value("flowdiff_queue_depth_batches", {"exporter": "sink"}) == 1
                     and (value("flowdiff_turns_total") or 0) == 2 and service.server)
    time.sleep(1.5)
    assert value("flowdiff_turns_total") == 2  # generation stalled: backpressure
    base = f"http://127.0.0.1:{service.server.address[1]}"
    status, text = http_get(base + "/metrics")
    assert status == 200
    for stream in range(3):  # 3 turns x H = 8 records generated per stream, none exported
        assert f'flowdiff_records_generated_total{{stream="{stream}"}} 24.0' in text
    assert "flowdiff_records_exported_total{" not in text
    assert 'flowdiff_queue_capacity_batches{exporter="sink"} 1.0' in text
    assert "flowdiff_predict_seconds_count 3.0" in text
    assert 'sampler="replacement"' in text and 'streams="3"' in text  # model info
    import shutil
    import subprocess

    if shutil.which("promtool"):  # the live exposition lints clean too
        lint = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                              capture_output=True, timeout=30)
        assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
    status, reason = http_get(base + "/healthz")
    assert status == 503 and "stalled" in reason  # the loop has not turned for > 1 s
    assert http_get(base + "/readyz") == (200, "ready\n")
    sink.is_healthy = False
    status, reason = http_get(base + "/readyz")
    assert status == 503 and "sink" in reason
    sink.is_healthy = True
    sink.gate.set()  # the sink recovers: the loop turns again and health comes back
    assert _wait_for(lambda: http_get(base + "/healthz")[0] == 200)
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    exported = sum(value("flowdiff_records_exported_total", {"exporter": "sink",
                                                            "stream": str(s)}) for s in range(3))
    assert exported == len(sink.records()) == service.result.records


def test_start_from_real_seed_windows(tiny_model, tmp_path):
    from conftest import shared_file

    sample = pd.read_csv(shared_file("ugr16/ugr16_sample_20k.csv"), nrows=300)
    seed_file = tmp_path / "seed.csv"
    sample.to_csv(seed_file, index=False)
    result, out = run_collect(tiny_model, max_records=24, start="real",
                              seed_data=str(seed_file))
    assert result.records == 24 and set(out.records()["stream_id"]) == {0, 1, 2}


def test_generate_command_writes_n_records_reproducibly(tiny_model, tmp_path):
    import argparse

    from flowdiff.commands import generate

    parser = argparse.ArgumentParser()
    generate.register(parser.add_subparsers())
    outputs = []
    for name in ("a.jsonl", "b.jsonl"):
        args = parser.parse_args(["generate", "--model", str(tiny_model), "--records", "50",
                                  "--seed", "3", "--streams", "2", "--steps", "3",
                                  "--start-ts", str(START), "--out", str(tmp_path / name)])
        assert args.func(args) == 0
        outputs.append((tmp_path / name).read_text())
    lines = outputs[0].splitlines()
    assert len(lines) == 50 and outputs[0] == outputs[1]
    first = json.loads(lines[0])
    assert {"ts", "srcip", "dstip", "proto", "stream_id", "seq"} <= set(first)
    assert first["srcip"].count(".") == 3
    # table formats go through ingest's writer and read back as canonical flows
    from flowdiff.ingest import read_flows

    args = parser.parse_args(["generate", "--model", str(tiny_model), "--records", "20",
                              "--streams", "2", "--steps", "2", "--out",
                              str(tmp_path / "c.csv")])
    assert args.func(args) == 0
    table, _summary = read_flows(tmp_path / "c.csv")
    assert len(table) == 20 and table["srcip"].dtype == np.uint32


def test_jsonlines_exporter_writes_text_forms():
    buf = io.StringIO()
    table = pd.DataFrame({"ts": [1.5], "srcip": np.array([3232235777], dtype=np.uint32),
                          "dstip": np.array([167772161], dtype=np.uint32),
                          "proto": np.array([6], dtype=np.uint8),
                          "flags": np.array([18], dtype=np.uint8),
                          "stream_id": np.array([0], dtype=np.int32),
                          "seq": np.array([9], dtype=np.int64)})
    assert JsonLinesExporter("j", buf).submit(table) == 1
    assert json.loads(buf.getvalue()) == {"ts": 1.5, "srcip": "192.168.1.1",
                                          "dstip": "10.0.0.1", "proto": 6, "flags": ".A..S.",
                                          "stream_id": 0, "seq": 9}


def _serve_until_sigterm(config: Path, out: Path, notify: Path, min_lines: int):
    import os
    import signal
    import subprocess
    import sys

    env = dict(os.environ, NOTIFY_SOCKET=str(notify), WATCHDOG_USEC="200000")
    with open(out, "w") as stdout:
        proc = subprocess.Popen([sys.executable, "-m", "flowdiff", "serve", "--config",
                                 str(config)], stdout=stdout, stderr=subprocess.PIPE, env=env,
                                cwd=REPO)
        try:
            assert _wait_for(lambda: out.exists() and out.read_text().count("\n") >= min_lines
                             or proc.poll() is not None, timeout=90), "no output from serve"
            assert proc.poll() is None, proc.stderr.read().decode()
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=30)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
    return rc, took, proc.stderr.read().decode()


@pytest.mark.slow
def test_sigterm_and_restart_continue_every_stream(tiny_model, tmp_path):
    import socket

    config = tmp_path / "serve.yaml"
    config.write_text(f"""
serve:
  model: {tiny_model}
  streams: 3
  seed: 4
  pace: fast
  threads: 1
  sampler: {{kind: replacement, steps: 3}}
  state_dir: {tmp_path / 'state'}
  state_every: 2
  shutdown_timeout: 10
metrics:
  listen: 127.0.0.1:0
exporters:
  - kind: stdout
    queue: 2
""")
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(0.5)
    try:
        rc1, took1, err1 = _serve_until_sigterm(config, tmp_path / "run1.jsonl", notify, 60)
        rc2, took2, err2 = _serve_until_sigterm(config, tmp_path / "run2.jsonl", notify, 60)
        messages = []
        while True:
            try:
                messages.append(sock.recv(512).decode())
            except TimeoutError:
                break
    finally:
        sock.close()
    assert rc1 == 0 and rc2 == 0, err1 + err2
    assert took1 < 10 and took2 < 10  # inside shutdown_timeout
    assert "resumed 3 streams" in err2
    kinds = [m.split("\n")[0] for m in messages]
    assert kinds.count("READY=1") == 2 and kinds.count("STOPPING=1") == 2
    assert "WATCHDOG=1" in kinds
    assert kinds.index("READY=1") < kinds.index("WATCHDOG=1") < kinds.index("STOPPING=1")
    runs = [pd.DataFrame([json.loads(line) for line in (tmp_path / f"run{i}.jsonl")
                          .read_text().splitlines()]) for i in (1, 2)]
    for stream in range(3):
        first = runs[0].loc[runs[0]["stream_id"] == stream, "seq"].to_numpy()
        second = runs[1].loc[runs[1]["stream_id"] == stream, "seq"].to_numpy()
        np.testing.assert_array_equal(first, np.arange(len(first)))
        np.testing.assert_array_equal(second, len(first) + np.arange(len(second)))
        assert len(second) > 0


@pytest.mark.slow
def test_out_of_the_box_serve_streams_the_packaged_model_to_stdout():
    """`flowdiff serve` with no config: the shipped model, JSON lines on stdout."""
    import subprocess
    import sys

    from flowdiff.artifact import PACKAGED, read_manifest

    read_manifest(PACKAGED)  # the packaged model is part of the deliverable
    proc = subprocess.run([sys.executable, "-m", "flowdiff", "serve", "--pace", "fast",
                           "--streams", "2", "--max-records", "300", "--listen", "127.0.0.1:0"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == 300          # 1.5 turns of 2 streams x horizon 100
    assert {r["stream_id"] for r in records} == {0, 1}
    ts = [r["ts"] for r in records]
    assert ts == sorted(ts)             # the shared timeline: merged output in time order
    for stream in (0, 1):
        seqs = [r["seq"] for r in records if r["stream_id"] == stream]
        assert seqs == list(range(len(seqs)))
    assert all(r["srcip"].count(".") == 3 and r["pkt"] >= 1 for r in records)


def test_falling_behind_real_time_raises_lag_and_warns_once(tiny_model, caplog):
    """speed 10^5: synthetic time runs far faster than the model can generate."""
    registry = CollectorRegistry()
    sink = Collect("sink")
    stop = StopFlag()
    cfg = make_cfg(tiny_model, pace="realtime", speed=1e5, lag_warning_seconds=0.01)
    service = Service(cfg, stop, registry=registry,
                      exporters=[(ExporterConfig(kind="collect", name="sink"), sink)])
    thread = threading.Thread(target=service.run, daemon=True)
    with caplog.at_level("WARNING", logger="flowdiff.daemon.pacing"):
        thread.start()
        assert _wait_for(lambda: (registry.get_sample_value("flowdiff_turns_total") or 0) >= 4)
        lag = registry.get_sample_value("flowdiff_pacing_lag_seconds")
        stop.set()
        thread.join(timeout=30)
    assert lag > 0.01
    warnings = [r for r in caplog.records if "behind real time" in r.getMessage()]
    assert len(warnings) == 1  # once per minute, not once per turn
    seqs = sink.records().groupby("stream_id")["seq"].apply(list)
    assert all(s == list(range(len(s))) for s in seqs)  # late, but nothing dropped


@pytest.mark.slow
@pytest.mark.parametrize("command", ["serve", "generate"])
def test_output_into_head_exits_zero_quietly(tiny_model, tmp_path, command):
    """`flowdiff serve | head -5` (and `generate --out - | head -5`): once head has its
    lines and exits, flowdiff sees EPIPE and ends with exit 0 and no ERROR line, as Unix
    tools do."""
    import subprocess
    import sys

    config = tmp_path / "serve.yaml"
    config.write_text(f"""
serve: {{model: {tiny_model}, streams: 2, pace: fast, threads: 1,
         sampler: {{kind: replacement, steps: 2}}}}
metrics: {{listen: 127.0.0.1:0}}
""")
    args = (f"serve --config {config}" if command == "serve" else
            f"generate --model {tiny_model} --records 100000 --steps 2 --out -")
    started = time.monotonic()
    proc = subprocess.run(["bash", "-c", f'set -o pipefail; "$0" -m flowdiff {args} | head -5',
                           sys.executable], capture_output=True, text=True, timeout=90, cwd=REPO)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]  # pipefail: serve's own status
    assert len(proc.stdout.splitlines()) == 5
    assert "ERROR" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "reader closed the output" in proc.stderr
    assert took < 60


def _serve_config(path: Path, tiny_model: Path, state: Path, exporter: str, port: int) -> Path:
    path.write_text(f"""
serve: {{model: {tiny_model}, streams: 3, seed: 8, pace: fast, threads: 1,
         sampler: {{kind: replacement, steps: 2}}, state_dir: {state}, state_every: 3}}
metrics: {{listen: '127.0.0.1:{port}'}}
exporters:
  - {exporter}
""")
    return path


def _saved_and_exported(state: Path, port: int) -> tuple[int, int, int]:
    """(records the saved state counts as done, records the exporters delivered so far,
    records of the turns the saved state counts as possibly emitted: the turns generated at
    the save plus state_every - 1)."""
    import re

    payload = torch.load(state / "state.pt", weights_only=True)
    saved, turns = int(payload["next_seq"].sum()), int(payload["turns"])
    per_turn = saved // turns if turns else 0  # a save before any acknowledged turn: unknown
    generated = saved + (int(payload.get("generated_turns", turns)) - turns) * per_turn
    text = http_get(f"http://127.0.0.1:{port}/metrics")[1]
    exported = sum(float(v) for v in re.findall(r"^flowdiff_records_exported_total\{.*\} (\S+)$",
                                                text, re.M))
    return saved, int(exported), generated


def _read_lines(stream, count: int | None, pause: float) -> list[dict]:
    """``count`` JSON lines (all until EOF when None), ``pause`` s each: a slow consumer. A
    last line without its newline is a write that kill -9 cut short: not delivered."""
    records = []
    while count is None or len(records) < count:
        line = stream.readline()
        if not line.endswith("\n"):
            break
        records.append(json.loads(line))
        time.sleep(pause)
    return records


def _kill_9_while_lagging_then_restart(tiny_model, work: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run 0: a slow consumer; kill -9 at a moment when records were delivered after the
    last save. Run 1: restart on the same state, read 240 records, SIGTERM. Returns the
    records each run delivered (everything read from its stdout)."""
    import signal
    import subprocess
    import sys

    from realtools import free_port

    work.mkdir(parents=True, exist_ok=True)
    state, port = work / "state", free_port()
    config = _serve_config(work / "serve.yaml", tiny_model, state, "{kind: stdout, queue: 2}", port)
    command = [sys.executable, "-m", "flowdiff", "serve", "--config", str(config)]
    runs = []
    for run in range(2):
        with open(work / f"err{run}.txt", "w") as err:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True,
                                    cwd=REPO)
        try:
            first = _read_lines(proc.stdout, 240, pause=0.004)
            assert len(first) == 240, (work / f"err{run}.txt").read_text()[-2000:]
            if run == 0:
                # Kill while records were delivered after the last save (so some are emitted
                # twice) and all of them belong to turns that save counts as possibly emitted:
                # the restart emits those again with their timestamps. Reading slower than
                # the daemon generates fills the pipe and the queue (batches wait at the save).
                deadline = time.monotonic() + 60
                while True:
                    saved, exported, generated = _saved_and_exported(state, port)
                    assert saved <= exported, "progress saved for records not delivered"
                    if saved < exported <= generated:
                        break
                    assert time.monotonic() < deadline, \
                        "no moment with records delivered after a save, all in turns it counts"
                    first += _read_lines(proc.stdout, 6, pause=0.02)
                proc.send_signal(signal.SIGKILL)
            else:
                proc.send_signal(signal.SIGTERM)
            runs.append(first + _read_lines(proc.stdout, None, pause=0.0))  # the pipe's rest
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert "generated again with their original timestamps" in (work / "err1.txt").read_text()
    return pd.DataFrame(runs[0]), pd.DataFrame(runs[1])


@pytest.mark.slow
def test_kill_9_while_a_slow_consumer_lags_loses_nothing(tiny_model, tmp_path):
    """The consumer reads slowly, so batches wait in the queue when the periodic state save
    happens; kill -9, restart: every seq of every stream arrives, and the records emitted
    again equal the first ones (timestamps included).

    The moment of the kill is picked from the state file and the metrics, read one after
    the other; a save can land between that reading and the signal (about 1 run in 4
    here), and then nothing is emitted twice. Such a run still must lose nothing; the
    scenario is tried again (up to 4 times) until a restart re-emits records to compare."""
    key = ["stream_id", "seq"]
    compared = 0
    for attempt in range(4):
        first, second = _kill_9_while_lagging_then_restart(tiny_model, tmp_path / f"try{attempt}")
        for stream in range(3):
            seqs = np.union1d(first.loc[first["stream_id"] == stream, "seq"],
                              second.loc[second["stream_id"] == stream, "seq"])
            np.testing.assert_array_equal(seqs, np.arange(len(seqs)),
                                          err_msg=f"attempt {attempt}, stream {stream}")
        again = first.merge(second, on=key, suffixes=("", "_again"))
        for column in (c for c in first.columns if c not in key):
            np.testing.assert_array_equal(again[column].to_numpy(),
                                          again[f"{column}_again"].to_numpy(), err_msg=column)
        compared = len(again)
        if compared:
            break
    assert compared > 0, "no restart re-emitted anything in 4 tries: the test tested nothing"


def test_drain_timeout_saves_the_acknowledged_position(tiny_model, tmp_path):
    """SIGTERM while the exporter is stuck: the drain gives up at shutdown_timeout and the
    state saved is the delivered position, so the restart continues without a gap."""
    from flowdiff.daemon.state import load_state

    state = str(tmp_path / "state")
    stuck = Collect("sink", open_batches=2)  # delivers two turns, then hangs
    stop = StopFlag()
    cfg = make_cfg(tiny_model, state_dir=state, shutdown_timeout=3.0)
    cfg.exporters[0].queue = 2
    service = Service(cfg, stop, registry=CollectorRegistry(),
                      exporters=[(ExporterConfig(kind="collect", name="sink", queue=2), stuck)],
                      clock=lambda: START)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    assert _wait_for(lambda: service.result.turns >= 4)  # 2 delivered, 1 stuck, queue full
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive() and not service.result.clean_shutdown
    delivered = stuck.records().groupby("stream_id")["seq"].max() + 1
    assert service.result.next_seq == delivered.tolist() == [16, 16, 16]
    saved = load_state(state, {})  # an empty fingerprint checks nothing
    assert saved.next_seq.tolist() == [16, 16, 16] and saved.generated_turns >= 4
    stuck.gate.set()
    _, again = run_collect(tiny_model, max_records=24, state_dir=state)
    assert again.records().groupby("stream_id")["seq"].min().tolist() == [16, 16, 16]


class CrashAfter(Collect):
    """Delivers every batch at once; on receiving batch ``at`` copies the state file as a
    kill -9 at that moment would leave it (the periodic save before, nothing after)."""

    def __init__(self, state: Path, crash: Path, at: int):
        super().__init__("sink")
        self.state, self.crash, self.at = state, crash, at

    def submit(self, batch):
        if len(self.batches) + 1 == self.at:
            import shutil

            self.crash.mkdir()
            shutil.copy(self.state / "state.pt", self.crash / "state.pt")
        return super().submit(batch)


def test_a_crash_between_saves_replays_every_emitted_turn_with_its_timestamps(tiny_model,
                                                                             tmp_path):
    """The exporter keeps up (nothing waits in the queue at the save of turn 3), turns 4 and 5
    are delivered, then the process dies before the save of turn 6. Restarted much later,
    the daemon emits turns 4 and 5 again exactly as before, timestamps included; only then
    are the clocks moved to the wall clock."""
    from flowdiff.daemon.state import load_state

    state, crash = tmp_path / "state", tmp_path / "crash"
    sink = CrashAfter(state, crash, at=5)
    run_collect(tiny_model, exporter=sink, max_records=3 * 8 * 6, state_dir=str(state),
                state_every=3)
    saved = load_state(crash, {})
    # The save of turn 3 holds the last acknowledged turn: 3, or 2 if its batch was still
    # on the way to the exporter; 6 would mean the copy came after the next save.
    assert saved.turns in (2, 3), "the copy was not taken between the saves of turns 3 and 6"
    assert saved.generated_turns == 5  # 3 + state_every - 1: what a crash may have emitted
    first = pd.concat(sink.batches[:5], ignore_index=True)  # delivered before the "crash"
    later = Collect("sink")
    service = Service(make_cfg(tiny_model, state_dir=str(crash), state_every=3, max_records=3 * 8 * 4),
                      StopFlag(), registry=CollectorRegistry(),
                      exporters=[(ExporterConfig(kind="collect", name="sink"), later)],
                      clock=lambda: START + 10_000)
    service.run()
    again = later.records()
    key = ["stream_id", "seq"]
    replayed = first.merge(again, on=key, suffixes=("", "_again"))
    assert sorted(replayed["seq"].unique()) == list(range(8 * saved.turns, 40))  # to turn 5
    for column in (c for c in first.columns if c not in key):
        np.testing.assert_array_equal(replayed[column].to_numpy(),
                                      replayed[f"{column}_again"].to_numpy(), err_msg=column)
    fresh = again[again["seq"] >= 40]
    assert len(fresh) and (fresh["ts"] >= START + 10_000).all()  # then rebased to the wall clock


@pytest.mark.slow
def test_kill_9_with_a_file_exporter_loses_nothing(tiny_model, tmp_path):
    """kill -9 with rows flushed to an open .part file after the last save; the restart
    completes that file (cut to whole rows) and generates the unsaved turns again: every seq
    of every stream is in a completed file, and rows present twice are identical."""
    import signal
    import subprocess
    import sys

    from flowdiff.ingest import read_flows
    from realtools import free_port

    state, out, port = tmp_path / "state", tmp_path / "out", free_port()
    config = _serve_config(tmp_path / "serve.yaml", tiny_model, state,
                           f"{{kind: file, directory: {out}, format: csv, rotate_records: 400, "
                           "rotate_seconds: null, fsync: false, queue: 2}", port)
    command = [sys.executable, "-m", "flowdiff", "serve", "--config", str(config)]
    for run in range(2):
        with open(tmp_path / f"err{run}.txt", "w") as err:
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
        try:
            def progressed(run: int = run) -> bool:
                saved, exported, _ = _saved_and_exported(state, port)
                if run == 1:  # the restarted process counts its own exports from 0
                    return exported >= 600
                assert saved <= exported, "progress saved for records not delivered"
                return exported >= 600 and exported > saved and any(out.glob("*.part"))
            assert _wait_for(lambda: _safely(progressed), timeout=90), \
                (tmp_path / f"err{run}.txt").read_text()[-2000:]
            if run == 0:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                assert list(out.glob("*.part")), "no open file at the kill: nothing tested"
            else:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert "left by an earlier run" in (tmp_path / "err1.txt").read_text()
    assert not list(out.glob("*.part"))
    rows = pd.concat([read_flows(f)[0] for f in sorted(out.iterdir())], ignore_index=True)
    key = ["stream_id", "seq"]
    distinct = rows.drop_duplicates()
    assert not distinct.duplicated(key).any(), "a record emitted twice with other content"
    for stream, part in distinct.groupby("stream_id"):
        np.testing.assert_array_equal(np.sort(part["seq"].to_numpy()), np.arange(len(part)))


def _safely(predicate) -> bool:
    """``predicate()``, False while the daemon is not up yet (no state file, no server)."""
    try:
        return predicate()
    except (OSError, KeyError, EOFError, RuntimeError):
        return False
