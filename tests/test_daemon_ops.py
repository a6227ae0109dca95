"""Operations pieces on their own: sd_notify datagrams, state files, the HTTP endpoints and
the metric catalogue (linted by the real promtool)."""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest
import torch
from prometheus_client import CollectorRegistry

from flowdiff.daemon.http import OpsServer
from flowdiff.daemon.metrics import DaemonMetrics
from flowdiff.daemon.sdnotify import SdNotifier
from flowdiff.daemon.state import StateError, StreamState, load_state, save_state
from realtools import http_get


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    yield path, sock
    sock.close()


def test_sd_notify_sends_datagrams(notify_socket):
    path, sock = notify_socket
    now = [0.0]
    notifier = SdNotifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"},
                          clock=lambda: now[0])
    assert notifier.enabled and notifier.watchdog_interval == 1.0
    notifier.ready("3 streams")
    assert sock.recv(256) == b"READY=1\nSTATUS=3 streams"
    notifier.watchdog()
    notifier.watchdog()  # within the interval: rate-limited
    now[0] = 1.5
    notifier.watchdog()
    notifier.stopping()
    assert [sock.recv(256) for _ in range(3)] == [b"WATCHDOG=1", b"WATCHDOG=1", b"STOPPING=1"]


def test_sd_notify_is_a_noop_outside_systemd():
    notifier = SdNotifier({})
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False


def _state(streams=3, fingerprint=None):
    gens = [torch.Generator().manual_seed(i) for i in range(streams)]
    return StreamState(contexts=torch.rand(streams, 5, 4), rng_states=[g.get_state() for g in gens],
                       next_seq=torch.arange(streams, dtype=torch.int64) * 100,
                       clocks=torch.full((streams,), 1.7e9, dtype=torch.float64), turns=7,
                       fingerprint=fingerprint or {"artifact": "abc", "streams": streams})


def test_state_round_trip_is_atomic_and_exact(tmp_path):
    state = _state()
    path = save_state(tmp_path, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]  # no temp left behind
    loaded = load_state(tmp_path, state.fingerprint)
    assert torch.equal(loaded.contexts, state.contexts)
    assert torch.equal(loaded.next_seq, state.next_seq)
    assert loaded.turns == 7
    g = torch.Generator()
    g.set_state(loaded.rng_states[2])
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=torch.Generator()
                                                                  .manual_seed(2)))
    assert path.stat().st_size < 100_000


def test_state_keeps_the_address_history_and_reads_states_without_it(tmp_path):
    state = _state()
    state.history = {"dstip": torch.tensor([[1, 2], [-1, 3], [4, 4]], dtype=torch.int64)}
    save_state(tmp_path, state)
    loaded = load_state(tmp_path, state.fingerprint)
    assert set(loaded.history) == {"dstip"}
    assert torch.equal(loaded.history["dstip"], state.history["dstip"])
    # a state file of flowdiff 0.1 has no "history": it loads with an empty one
    payload = torch.load(tmp_path / "state.pt", weights_only=True)
    del payload["history"]
    torch.save(payload, tmp_path / "state.pt")
    assert load_state(tmp_path, state.fingerprint).history == {}


def test_state_missing_mismatched_or_corrupt(tmp_path):
    assert load_state(tmp_path, {"artifact": "abc"}) is None
    save_state(tmp_path, _state())
    with pytest.raises(StateError, match="streams: saved 3, now 4"):
        load_state(tmp_path, {"artifact": "abc", "streams": 4})
    (tmp_path / "state.pt").write_bytes(b"not a torch file")
    with pytest.raises(StateError, match="cannot read state file"):
        load_state(tmp_path, {"artifact": "abc", "streams": 3})


FP = {"artifact": "abc", "streams": 3, "context": 5, "width": 4, "horizon": 10}

# name -> (change to a valid saved payload, text the error must contain)
DAMAGE = {
    "not a mapping": (lambda p: [1, 2], "expected state version 1"),
    "no fingerprint": (lambda p: p.pop("fingerprint"), "missing fingerprint"),
    "fingerprint not a mapping": (lambda p: p.update(fingerprint=[1]), "fingerprint is not a"),
    "no next_seq": (lambda p: p.pop("next_seq"), "missing next_seq"),
    "negative seq": (lambda p: p["next_seq"].__setitem__(0, -5), "next_seq: values -5.."),
    "seq 10^12": (lambda p: p["next_seq"].__setitem__(1, 10 ** 12), "outside 0..70"),
    "float seq": (lambda p: p.update(next_seq=p["next_seq"].double()), "next_seq: expected"),
    "infinite clock": (lambda p: p["clocks"].__setitem__(2, float("inf")), "clocks: expected"),
    "NaN clock": (lambda p: p["clocks"].__setitem__(0, float("nan")), "clocks: expected"),
    "clocks wrong length": (lambda p: p.update(clocks=p["clocks"][:2]), "clocks: expected"),
    "contexts wrong shape": (lambda p: p.update(contexts=torch.rand(3, 6, 4)),
                             "contexts: shape (3, 6, 4), expected (3, 5, 4)"),
    "contexts NaN": (lambda p: p["contexts"].__setitem__((0, 0, 0), float("nan")),
                     "contexts: values outside"),
    "contexts not a tensor": (lambda p: p.update(contexts=[0.5]), "contexts: expected"),
    "rng state garbage": (lambda p: p["rng_states"].__setitem__(1, torch.zeros(3, dtype=torch.uint8)),
                          "rng_states[1]: not a torch generator state"),
    "rng states missing": (lambda p: p["rng_states"].pop(), "rng_states: expected a list of 3"),
    "negative turns": (lambda p: p.update(turns=-1), "turns: expected an integer >= 0"),
    "turns a string": (lambda p: p.update(turns="7"), "turns: expected an integer >= 0"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_state_file_is_refused_naming_the_file(tmp_path, damage):
    change, expected = DAMAGE[damage]
    state = _state(fingerprint=FP)
    state.next_seq = torch.full((3,), 70, dtype=torch.int64)  # 7 turns x horizon 10
    path = save_state(tmp_path, state)
    assert load_state(tmp_path, FP) is not None  # valid before the damage
    payload = torch.load(path, weights_only=True)
    payload = change(payload) if damage == "not a mapping" else (change(payload), payload)[1]
    torch.save(payload, path)
    with pytest.raises(StateError) as info:
        load_state(tmp_path, FP)
    assert str(info.value).startswith(f"{path}: ") and expected in str(info.value)


def test_ops_server_endpoints_answer_probe_values():
    registry = CollectorRegistry()
    metrics = DaemonMetrics(registry)
    metrics.count_generated([5, 0, 2])
    health = {"ok": False}
    server = OpsServer("127.0.0.1:0", registry,
                       health=lambda: (health["ok"], "loop" if health["ok"] else "stalled"),
                       ready=lambda: (True, "ready")).start()
    try:
        host, port = server.address
        assert host == "127.0.0.1"
        base = f"http://127.0.0.1:{port}"
        status, body = http_get(base + "/metrics")
        assert status == 200
        assert 'flowdiff_records_generated_total{stream="0"} 5.0' in body
        assert 'flowdiff_records_generated_total{stream="2"} 2.0' in body
        assert http_get(base + "/healthz") == (503, "stalled\n")
        health["ok"] = True
        assert http_get(base + "/healthz") == (200, "loop\n")
        assert http_get(base + "/readyz") == (200, "ready\n")
        assert http_get(base + "/nope")[0] == 404
    finally:
        server.stop()


def test_ops_server_bounds_idle_connections_and_times_them_out(capfd):
    """300 clients that connect and send nothing: at most ``max_connections`` threads, each
    dropped after ``read_timeout``; the endpoints answer again; no traceback when they go."""
    import struct
    import threading
    import time

    server = OpsServer("127.0.0.1:0", CollectorRegistry(), health=lambda: (True, "ok"),
                       ready=lambda: (True, "ready"), read_timeout=1.0, max_connections=8)
    server.start()
    before = threading.active_count()
    idle = []
    try:
        for _ in range(300):
            sock = socket.create_connection(server.address, timeout=5)
            idle.append(sock)
        time.sleep(0.5)
        assert threading.active_count() - before <= 8
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and threading.active_count() > before:
            time.sleep(0.1)  # the read timeout frees every slot
        assert threading.active_count() == before
        assert http_get(f"http://127.0.0.1:{server.address[1]}/healthz") == (200, "ok\n")
        for sock in idle:  # an abrupt close (RST) of a connection the server still holds
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        for sock in idle:
            sock.close()
        time.sleep(0.3)
        server.stop()
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed "
                    "(apt-get install prometheus)")
def test_metric_catalogue_is_promtool_clean():
    from prometheus_client import generate_latest

    registry = CollectorRegistry()
    m = DaemonMetrics(registry)
    m.count_generated([3, 4])
    m.count_exported("out", [3, 4])
    m.dropped.labels(exporter="out", reason="queue_full").inc(2)
    m.queue_depth.labels(exporter="out").set(1)
    m.queue_capacity.labels(exporter="out").set(8)
    m.predict_seconds.observe(0.2)
    m.turns.inc()
    m.last_turn.set(1.7e9)
    m.lag.set(0.0)
    m.count_repairs({"proto_ports": 2})
    m.exporter_errors.labels(exporter="out").inc()
    m.exporter_healthy.labels(exporter="out").set(1)
    m.state_saves.inc()
    m.model_info.info({"artifact": "abc", "sampler": "replacement"})
    m.shard_info.info({"shard": "1-of-2", "index": "1", "count": "2", "first_stream": "16",
                       "streams": "16"})
    text = generate_latest(registry)
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    names = {line.split(" ")[2].removesuffix("_total") for line in text.decode().splitlines()
             if line.startswith("# TYPE") and not line.split(" ")[2].endswith("_created")}
    assert names == {"flowdiff_records_generated", "flowdiff_records_exported",
                     "flowdiff_records_dropped", "flowdiff_queue_depth_batches",
                     "flowdiff_queue_capacity_batches", "flowdiff_predict_seconds",
                     "flowdiff_turns", "flowdiff_last_turn_timestamp_seconds",
                     "flowdiff_pacing_lag_seconds", "flowdiff_codec_repairs",
                     "flowdiff_exporter_errors", "flowdiff_exporter_healthy",
                     "flowdiff_state_saves", "flowdiff_model_info", "flowdiff_shard_info"}
