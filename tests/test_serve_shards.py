"""Sharded serving (docs/scaling.md): two `flowdiff serve --shard i/2` daemons write one
topic of a real tansu broker. The consumer reads every record; the shards' stream ids are
disjoint; per stream, (stream_id, seq) has no duplicate and no gap, also after one shard is
stopped with SIGTERM and started again (it resumes its own streams from its own state)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from realtools import Tansu, free_port, http_get
from test_exporter_kafka import consume_all
from test_exporter_serve_kafka import scrape, wait_for

from flowdiff.config import parse_config
from flowdiff.daemon.shard import ShardConfig, parse_shard

REPO = Path(__file__).resolve().parents[1]
STREAMS = 2  # per shard
HORIZON = 8  # tiny-test.yaml


def test_shard_names_and_ranges():
    shard = parse_shard("1-of-3")
    assert (shard.index, shard.count, shard.name) == (1, 3, "1-of-3")
    assert parse_shard("1/3") == shard
    assert shard.first_stream(4) == 4 and shard.describe(4) == "shard 1 of 3: streams 4..7"
    assert shard.state_dir("/var/lib/flowdiff") == "/var/lib/flowdiff/1-of-3"
    assert ShardConfig().state_dir("/s") == "/s"  # not sharded: the directory as configured
    for bad in ("3/3", "1", "a/b", "0-of-0"):
        with pytest.raises(ValueError):
            parse_shard(bad)
    with pytest.raises(Exception, match=r"serve.shard: shard index 2 is not in 0..1"):
        parse_config({"serve": {"shard": {"index": 2, "count": 2}}}, "t.yaml")
    assert parse_config({"serve": {"shard": {"index": 1, "count": 2}}}, "t.yaml").serve.shard \
        == ShardConfig(1, 2)


@pytest.mark.slow
def test_two_shards_write_one_topic_and_a_restarted_shard_resumes_its_streams(
        tmp_path, tiny_model):
    broker = Tansu().start()
    ports = [free_port(), free_port()]
    config = tmp_path / "serve.yaml"
    config.write_text(f"""
serve:
  model: {tiny_model}
  streams: {STREAMS}
  seed: 9
  pace: realtime
  speed: 50.0
  threads: 1
  state_dir: {tmp_path / 'state'}
  state_every: 3
exporters:
  - {{kind: kafka, name: kafka, policy: block, queue: 2, bootstrap_servers: {broker.bootstrap},
     topic: shards, linger_ms: 5, max_block_ms: 1000, retry_backoff_s: 0.2}}
""")

    def start(index: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "flowdiff", "serve", "--config",
                                 str(config), "--shard", f"{index}/2",
                                 "--listen", f"127.0.0.1:{ports[index]}"],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)

    def turns(index: int) -> float:
        return scrape(ports[index])["flowdiff_turns_total"]

    daemons = [start(0), start(1)]
    try:
        for i in (0, 1):
            wait_for(lambda i=i: turns(i) >= 3, 120, f"shard {i}'s first turns")
        assert http_get(f"http://127.0.0.1:{ports[1]}/readyz") == \
            (200, "ready (shard 1 of 2: streams 2..3)\n")
        info = [k for k in scrape(ports[1]) if k.startswith("flowdiff_shard_info")]
        assert info and 'shard="1-of-2"' in info[0] and 'first_stream="2"' in info[0]

        daemons[1].send_signal(signal.SIGTERM)  # stop shard 1; shard 0 keeps writing
        assert daemons[1].wait(timeout=60) == 0, daemons[1].stderr.read()[-3000:]
        assert (tmp_path / "state" / "1-of-2" / "state.pt").is_file()
        daemons[1] = start(1)
        wait_for(lambda: turns(1) >= 3, 120, "shard 1's turns after its restart")
        before = turns(0)
        wait_for(lambda: turns(0) >= before + 2, 60, "shard 0 still turning")
        for daemon in daemons:
            daemon.send_signal(signal.SIGTERM)
        for daemon in daemons:
            assert daemon.wait(timeout=60) == 0, daemon.stderr.read()[-3000:]
        assert "resumed 2 streams" in daemons[1].stderr.read()
        messages = consume_all(broker.bootstrap, "shards")
    finally:
        for daemon in daemons:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
        broker.stop()

    seqs, partitions = defaultdict(list), defaultdict(set)
    for m in messages:
        value = json.loads(m.value)
        seqs[value["stream_id"]].append(value["seq"])
        partitions[value["stream_id"]].add(m.partition)
        assert m.key == str(value["stream_id"]).encode()
    # shard 0 owns streams 0..1, shard 1 owns 2..3: disjoint, and every one is there
    assert set(seqs) == {0, 1, 2, 3}
    for stream, got in seqs.items():
        assert len(got) == len(set(got)), f"stream {stream}: a (stream_id, seq) twice"
        assert sorted(got) == list(range(len(got))), f"stream {stream}: a gap in seq"
        assert got == sorted(got), f"stream {stream}: out of order in its partition"
        assert len(partitions[stream]) == 1, f"stream {stream} spread over partitions"
    # shard 1 ran before and after its restart: more than its first three turns
    assert min(len(seqs[2]), len(seqs[3])) >= 6 * HORIZON


def test_shard_on_the_command_line_is_checked():
    import argparse

    from flowdiff.commands.serve import overrides
    from flowdiff.config import ConfigError, load_config

    def load(shard: str):
        return load_config(None, overrides(argparse.Namespace(shard=shard)))

    assert load("1-of-2").serve.shard == ShardConfig(1, 2)
    with pytest.raises(ConfigError, match=r"shard index 2 is not in 0..1"):
        load("2/2")
    with pytest.raises(ConfigError, match=r"--shard: expected INDEX/COUNT or INDEX-of-COUNT"):
        load("two")
