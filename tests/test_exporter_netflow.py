"""NetFlow v9 / IPFIX exporter against a real nfcapd collector, read back with nfdump."""

from __future__ import annotations

import socket
import struct
from datetime import datetime, timezone

import numpy as np
import pytest

from flowdiff.exporters import ipfix_codec
from flowdiff.exporters.netflow import CONFIG, EXPORTER
from flowdiff.schema import int_to_ip, proto_name
from realtools import Nfcapd, free_port, synthetic_records, ugr16_records


def nfdump_time(text: str) -> float:
    return datetime.strptime(text.strip(), "%Y-%m-%d %H:%M:%S").replace(
        tzinfo=timezone.utc).timestamp()


def check_rows_match(rows: list[dict], table) -> None:
    """Every record read back once, with matching addresses, ports, protocol, packets,
    bytes, flags and times (nfdump's csv prints start/end in whole seconds and the
    duration in ms)."""
    assert len(rows) == len(table)
    src, dst = int_to_ip(table["srcip"].to_numpy()), int_to_ip(table["dstip"].to_numpy())
    expected = {}
    for i, r in enumerate(table.itertuples()):
        expected.setdefault((src[i], int(r.srcport), dst[i], int(r.dstport), int(r.proto)),
                            []).append(r)
    numbers = {proto_name(p).upper(): int(p) for p in np.unique(table["proto"].to_numpy())}
    for row in rows:
        key = (row["sa"], int(row["sp"]), row["da"], int(float(row["dp"])),
               numbers[row["pr"].strip().upper()])
        candidates = expected[key]
        r = candidates.pop(0)
        assert int(row["ipkt"]) == r.pkt and int(row["ibyt"]) == r.byt
        start_ms = int(np.floor(r.ts * 1000))
        end_ms = start_ms + int(round(r.td * 1000))
        assert nfdump_time(row["ts"]) == start_ms // 1000
        assert nfdump_time(row["te"]) == end_ms // 1000
        assert float(row["td"]) == pytest.approx((end_ms - start_ms) / 1000, abs=0.0011)
    assert all(not v for v in expected.values())


@pytest.fixture
def collector(tmp_path):
    nfcapd = Nfcapd(tmp_path / "nfcapd").start()
    yield nfcapd
    nfcapd.stop()


def test_config_validation():
    with pytest.raises(ValueError, match="collector: expected host:port"):
        CONFIG(collector="nowhere")
    with pytest.raises(ValueError, match="template_id: expected 256..65535"):
        CONFIG(template_id=5)
    assert CONFIG().check() == []


@pytest.mark.parametrize("version", [9, 10])
def test_every_record_read_back_by_nfdump(collector, version):
    table = synthetic_records(700, seed=version)
    exporter = EXPORTER("nf", CONFIG(collector=f"127.0.0.1:{collector.port}", version=version,
                                     source_id=42, template_every_packets=5))
    for chunk in np.array_split(np.arange(len(table)), 3):
        exporter.submit(table.iloc[chunk])
    exporter.close()
    rows = collector.stop_and_read()
    check_rows_match(rows, table)
    assert exporter.errors == 0 and exporter.healthy
    assert exporter.templates_sent == -(-exporter.packets_sent // 5)
    flags = {r["flg"] for r in rows if r["pr"] == "TCP"}
    assert "...AP.SF" in flags  # TCP flags travel too (0x1B)
    if version == 9:
        assert {r["eng"] for r in rows} == {"0/42"}  # source id


def test_ugr16_records_round_trip_through_ipfix(collector, ugr16_sample):
    table = ugr16_records(ugr16_sample, 1500)
    exporter = EXPORTER("nf", CONFIG(collector=f"127.0.0.1:{collector.port}", version=10))
    exporter.submit(table)
    exporter.close()
    check_rows_match(collector.stop_and_read(), table)


def test_sequence_numbers_templates_and_headers_on_the_wire():
    """Capture the datagrams on a plain UDP socket and decode the headers."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(2)
    for version in (9, 10):
        exporter = EXPORTER("nf", CONFIG(collector=f"127.0.0.1:{sink.getsockname()[1]}",
                                         version=version, source_id=7, template_every_packets=3,
                                         packets_per_second=None))
        table = synthetic_records(exporter.per_packet * 7, seed=1)
        exporter.submit(table)
        exporter.close()
        datagrams = [sink.recv(65535) for _ in range(7)]
        assert all(len(d) <= 1400 for d in datagrams)
        if version == 9:
            heads = [struct.unpack("!HHIIII", d[:20]) for d in datagrams]
            assert [h[4] for h in heads] == list(range(7))             # per packet
            assert {h[5] for h in heads} == {7}
            has_template = [struct.unpack("!H", d[20:22])[0] == 0 for d in datagrams]
        else:
            heads = [struct.unpack("!HHIII", d[:16]) for d in datagrams]
            assert [h[3] for h in heads] == [i * exporter.per_packet for i in range(7)]  # records
            assert {h[4] for h in heads} == {7} and all(h[1] == len(d) for h, d in zip(heads, datagrams))
            has_template = [struct.unpack("!H", d[16:18])[0] == 2 for d in datagrams]
        assert has_template == [True, False, False, True, False, False, True]
    sink.close()


def test_template_interval_resends_by_time():
    now = [0.0]
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    exporter = EXPORTER("nf", CONFIG(collector=f"127.0.0.1:{sink.getsockname()[1]}",
                                     template_every_packets=1000, template_interval_s=10,
                                     packets_per_second=None), clock=lambda: now[0])
    for t in (0.0, 5.0, 10.0, 12.0):
        now[0] = t
        exporter.submit(synthetic_records(3, seed=int(t)))
    assert exporter.templates_sent == 2  # at t=0 and t=10
    sink.close()


def test_pacing_spaces_packets():
    now, slept = [0.0], []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    exporter = EXPORTER("nf", CONFIG(collector=f"127.0.0.1:{sink.getsockname()[1]}",
                                     packets_per_second=100), clock=lambda: now[0], sleep=sleep)
    exporter.submit(synthetic_records(exporter.per_packet * 11, seed=3))
    assert exporter.packets_sent == 11
    assert sum(slept) == pytest.approx(0.10)   # 10 gaps of 1/100 s
    sink.close()


def test_collector_down_counts_errors_and_late_collector_learns_template(tmp_path):
    port = free_port(socket.SOCK_DGRAM)
    exporter = EXPORTER("nf", CONFIG(collector=f"127.0.0.1:{port}", template_every_packets=3,
                                     packets_per_second=None))
    first = synthetic_records(exporter.per_packet * 4, seed=1)
    exporter.submit(first)        # nobody listens: ICMP port unreachable -> refused sends
    assert exporter.errors > 0 and not exporter.healthy
    collector = Nfcapd(tmp_path / "late")
    collector.port = port
    collector.start()
    try:
        second = synthetic_records(exporter.per_packet * 9, seed=2, start_ts=1_800_000_000.0)
        exporter.submit(second)
        exporter.close()
        assert exporter.healthy
        rows = collector.stop_and_read()
    finally:
        collector.stop()
    # the template is re-sent every 3 packets, so at most the 2 packets sent before the
    # first template reaches the collector are undecodable
    assert len(second) - 2 * exporter.per_packet <= len(rows) <= len(second)
    assert all(nfdump_time(r["ts"]) >= 1_800_000_000 for r in rows)


def test_codec_record_layout_sizes():
    assert ipfix_codec.layout(10).record_size == 47
    assert ipfix_codec.layout(9).record_size == 39
