"""One fan-out feeding every exporter kind at once (each with its own queue and worker),
built through the registry from the shipped example config, each checked with its real tool."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from flowdiff.daemon.fanout import Fanout, Sink
from flowdiff.daemon.metrics import DaemonMetrics
from flowdiff.daemon.pacing import Pacer
from flowdiff.exporters.registry import build_exporter, exporter_config_type
from flowdiff.ingest import read_flows
from realtools import Nfcapd, Tansu, suricata_flows, synthetic_records
from test_exporter_kafka import consume

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "configs" / "exporters-example.yaml"


def test_example_config_loads_with_the_project_loader():
    from flowdiff.config import load_config

    cfg = load_config(EXAMPLE)
    kinds = {e.kind for e in cfg.exporters}
    assert {"kafka", "file", "pcap", "netflow"} <= kinds
    for entry in cfg.exporters:
        assert entry.options.check() == []


def test_unknown_and_invalid_keys_are_reported_with_their_path(tmp_path):
    from flowdiff.config import ConfigError, load_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("exporters:\n"
                   "  - kind: file\n    formt: csv\n"
                   "  - kind: netflow\n    collector: nowhere\n")
    with pytest.raises(ConfigError) as caught:
        load_config(bad)
    text = str(caught.value)
    assert "exporters[0].formt: unknown key" in text
    assert "collector: expected host:port" in text


def test_one_fanout_feeds_every_exporter(tmp_path):
    broker = Tansu().start()
    collector = Nfcapd(tmp_path / "nfcapd").start()
    try:
        entries = yaml.safe_load(EXAMPLE.read_text())["exporters"]
        overrides = {
            "kafka": {"bootstrap_servers": broker.bootstrap, "topic": "fanout", "linger_ms": 5},
            "file": {"directory": str(tmp_path / "files")},
            "pcap": {"directory": str(tmp_path / "pcap")},
            "netflow": {"collector": f"127.0.0.1:{collector.port}"},
        }
        sinks, exporters = [], {}
        for entry in entries:
            kind = entry["kind"]
            if kind not in overrides:
                continue
            options = {k: v for k, v in entry.items() if k not in ("kind", "name", "policy", "queue")}
            options.update(overrides[kind])
            if kind == "file":
                options["directory"] = str(tmp_path / "files" / entry["name"])
            exporter = build_exporter(kind, entry["name"], exporter_config_type(kind)(**options))
            exporters[entry["name"]] = exporter
            sinks.append(Sink(exporter, "block", capacity=4))
        registry = CollectorRegistry()
        fanout = Fanout(sinks, DaemonMetrics(registry),
                        Pacer("fast", 1.0, anchor_ts=0.0, anchor_wall=0.0)).start()
        batches = [synthetic_records(120, seed=i, streams=2, start_seq=i * 60,
                                     start_ts=1_700_000_000.0 + 10 * i, first_host=1000 * i) for i in range(5)]
        for batch in batches:
            fanout.submit(batch)
        assert fanout.close(timeout=60)
        total = sum(len(b) for b in batches)
        for name in exporters:
            exported = sum(registry.get_sample_value("flowdiff_records_exported_total",
                                                     {"exporter": name, "stream": s}) or 0
                           for s in ("0", "1"))
            assert exported == total, name
            assert not registry.get_sample_value("flowdiff_exporter_errors_total",
                                                 {"exporter": name})
        rows = collector.stop_and_read()
    finally:
        broker_messages = consume(broker.bootstrap, "fanout", 600) if broker.proc else []
        broker.stop()
        collector.stop()

    assert len(rows) == total
    assert len(broker_messages) == total
    assert {json.loads(m.value)["seq"] for m in broker_messages} == set(range(300))
    for name, exporter in exporters.items():
        if exporter.kind == "file":
            files = exporter.completed
            if exporter.config.format == "jsonl":
                count = sum(len(Path(f).read_text().splitlines()) for f in files)
            else:
                count = sum(len(read_flows(f)[0]) for f in files)
            assert count == total, name
        if exporter.kind == "pcap":
            flows = suricata_flows(exporter.completed[0], tmp_path / "suricata")
            assert len(flows) == total
