"""`flowdiff serve` with a Kafka exporter while the tansu broker is killed and restarted on the
same port: the daemon keeps running, reports the outage in /metrics and /readyz, and with the
``block`` policy every record generated after the restart arrives with no gap in ``seq``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest

from realtools import Tansu, free_port
from test_exporter_kafka import consume_all

REPO = Path(__file__).resolve().parents[1]


def uncaught_tracebacks(stderr: str) -> list[str]:
    """The tracebacks in a daemon's stderr except those kafka-python logs itself: when the
    broker goes away mid-read, its transport logs the ConnectionResetError it caught (with
    the traceback, outermost frame in kafka/). Anything raised through flowdiff code has an
    outer frame outside kafka-python."""
    blocks = stderr.split("Traceback (most recent call last):")[1:]
    return [block for block in blocks
            if "/kafka/" not in block.strip().splitlines()[0]]


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def ready(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status == 200
    except urllib.error.HTTPError:
        return False


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (OSError, KeyError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _tear_down(serve: subprocess.Popen, broker: Tansu) -> None:
    """Kill the daemon if a failed assertion left it running, then stop the broker."""
    if serve.poll() is None:
        serve.kill()
        serve.wait()
    broker.stop()


@pytest.mark.slow
def test_serve_survives_broker_restart_block_policy(tmp_path, tiny_model):
    broker = Tansu().start()
    metrics_port = free_port()
    config = tmp_path / "serve.yaml"
    config.write_text(f"""
serve:
  model: {tiny_model}
  streams: 2
  seed: 3
  pace: realtime
  speed: 50.0
  shutdown_timeout: 30
  threads: 1
metrics:
  listen: 127.0.0.1:{metrics_port}
exporters:
  - kind: kafka
    name: kafka
    policy: block
    queue: 2
    bootstrap_servers: {broker.bootstrap}
    topic: serve
    linger_ms: 5
    # request/delivery timeouts at their defaults (10 s / 30 s): health must not wait for them
    max_block_ms: 1000
    retry_backoff_s: 0.2
""")
    healthy = 'flowdiff_exporter_healthy{exporter="kafka"}'
    serve = subprocess.Popen([sys.executable, "-m", "flowdiff", "serve", "--config", str(config)],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: scrape(metrics_port)["flowdiff_turns_total"] >= 3, 90, "first turns")
        assert scrape(metrics_port)[healthy] == 1 and ready(metrics_port)

        broker.stop()
        # The broker connection is probed every second: /readyz, the gauge (evaluated at
        # scrape time, so it shows even while backpressure stops the loop) and the error
        # counter all show the outage within 5 s, not after delivery_timeout_ms.
        wait_for(lambda: not ready(metrics_port), 5, "/readyz 503 within 5 s of the outage")
        assert scrape(metrics_port)[healthy] == 0
        errors = 'flowdiff_exporter_errors_total{exporter="kafka"}'
        assert scrape(metrics_port)[errors] > 0
        assert serve.poll() is None, "the daemon must keep running during the outage"

        broker.start()  # same port, empty broker
        restarted = time.monotonic()
        wait_for(lambda: ready(metrics_port), 5, "/readyz 200 within 5 s of the recovery")
        assert scrape(metrics_port)[healthy] == 1
        before = scrape(metrics_port)["flowdiff_turns_total"]
        wait_for(lambda: scrape(metrics_port)["flowdiff_turns_total"] >= before + 3, 60,
                 "generation after the restart")
        final = scrape(metrics_port)
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0, serve.stderr.read()[-3000:]
        generated = {k: v for k, v in final.items() if k.startswith("flowdiff_records_generated_total")}
        assert generated and time.monotonic() > restarted
        messages = consume_all(broker.bootstrap, "serve")
    finally:
        _tear_down(serve, broker)

    by_stream = defaultdict(list)
    for m in messages:
        value = json.loads(m.value)
        by_stream[value["stream_id"]].append(value["seq"])
    assert set(by_stream) == {0, 1}
    for stream, seqs in by_stream.items():
        unique = sorted(set(seqs))
        # every record from the first one the restarted broker saw up to the last generated
        # one is there: no gap (records held back during the outage included)
        assert unique == list(range(unique[0], unique[-1] + 1)), f"gap in stream {stream}"
        assert len(unique) >= 3 * 8, "at least three turns (horizon 8) after the restart"
        # at-least-once: a round the outage overlapped is sent again; first copies in order
        first_copies = list(dict.fromkeys(seqs))
        assert first_copies == sorted(first_copies), f"stream {stream} out of order"


@pytest.mark.slow
def test_kill_9_after_a_broker_restart_loses_nothing(tmp_path, tiny_model):
    """tansu stopped and restarted mid-run, then the daemon killed with kill -9 and
    restarted: from the first record the restarted broker holds, every seq of every stream
    arrives, and records delivered twice are identical (at-least-once, same content)."""
    broker = Tansu().start()
    metrics_port = free_port()
    config = tmp_path / "serve.yaml"
    config.write_text(f"""
serve:
  model: {tiny_model}
  streams: 2
  seed: 5
  pace: realtime
  speed: 50.0
  threads: 1
  state_dir: {tmp_path / 'state'}
  state_every: 3
metrics:
  listen: 127.0.0.1:{metrics_port}
exporters:
  - {{kind: kafka, name: kafka, policy: block, queue: 2, bootstrap_servers: {broker.bootstrap},
     topic: crash, linger_ms: 5, max_block_ms: 1000, retry_backoff_s: 0.2}}
""")
    command = [sys.executable, "-m", "flowdiff", "serve", "--config", str(config)]
    serve = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        wait_for(lambda: scrape(metrics_port)["flowdiff_turns_total"] >= 3, 90, "first turns")
        broker.stop()
        wait_for(lambda: not ready(metrics_port), 5, "/readyz 503 during the outage")
        broker.start()  # empty: what it holds from here on must have no gap
        wait_for(lambda: ready(metrics_port), 10, "/readyz 200 after the restart")
        turns = scrape(metrics_port)["flowdiff_turns_total"]
        wait_for(lambda: scrape(metrics_port)["flowdiff_turns_total"] >= turns + 6, 60,
                 "generation after the broker restart")
        serve.send_signal(signal.SIGKILL)
        serve.wait(timeout=30)
        serve = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
        wait_for(lambda: scrape(metrics_port)["flowdiff_turns_total"] >= 4, 90,
                 "turns after the daemon restart")
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0, serve.stderr.read()[-3000:]
        assert "generated again with their original timestamps" in serve.stderr.read()
        messages = consume_all(broker.bootstrap, "crash")
    finally:
        _tear_down(serve, broker)

    by_key = defaultdict(set)
    for m in messages:
        value = json.loads(m.value)
        by_key[(value["stream_id"], value["seq"])].add(m.value)
    assert all(len(copies) == 1 for copies in by_key.values()), "a seq with two contents"
    for stream in (0, 1):
        seqs = sorted(seq for s, seq in by_key if s == stream)
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), f"gap in stream {stream}"
        assert len(seqs) >= 6 * 8, "turns from before and after the kill"


@pytest.mark.slow
def test_sigterm_with_the_broker_down_stops_within_shutdown_timeout(tmp_path, tiny_model):
    """The broker goes away for good; the exporter retries forever (retry_timeout_s: null)
    with 10 s between rounds, longer than the whole shutdown bound, and the queue is full.
    SIGTERM must still end the daemon within shutdown_timeout: at the bound the fan-out cuts
    the exporter short (``terminate``: the retry wait ends at once) and closes it."""
    broker = Tansu().start()
    metrics_port = free_port()
    shutdown_timeout = 4.0
    config = tmp_path / "serve.yaml"
    config.write_text(f"""
serve:
  model: {tiny_model}
  streams: 2
  pace: fast
  shutdown_timeout: {shutdown_timeout}
  threads: 1
metrics:
  listen: 127.0.0.1:{metrics_port}
exporters:
  - {{kind: kafka, name: kafka, policy: block, queue: 2, bootstrap_servers: {broker.bootstrap},
     topic: down, linger_ms: 5, max_block_ms: 500, retry_backoff_s: 10, retry_timeout_s: null}}
""")
    serve = subprocess.Popen([sys.executable, "-m", "flowdiff", "serve", "--config", str(config)],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: scrape(metrics_port)["flowdiff_turns_total"] >= 3, 90, "first turns")
        broker.stop()
        wait_for(lambda: not ready(metrics_port), 10, "/readyz 503 once the broker is gone")
        time.sleep(1.0)  # a delivery round is under way against the stopped broker
        asked, asked_at = time.monotonic(), time.strftime("%H:%M:%S")
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(timeout=60)
        took = time.monotonic() - asked
        err = serve.stderr.read()
    finally:
        _tear_down(serve, broker)
    # the bound, plus a second for the interpreter to exit after the daemon stopped
    assert took <= shutdown_timeout + 1.0, \
        f"stopped {took:.1f} s after SIGTERM (sent at {asked_at})\n{err[-3000:]}"
    assert code == 1, err[-3000:]  # records were lost at the bound: not a clean shutdown
    assert "did not drain" in err and not uncaught_tracebacks(err), err[-3000:]
    # the retry wait was cut short (submit returned at once) and the exporter closed without
    # waiting for the broker, during the shutdown (not left to the interpreter's exit)
    closed = err.find("Closing the Kafka producer with 0 secs timeout")
    assert 0 <= closed < err.index("flowdiff.daemon.service: stopped after"), err[-3000:]
