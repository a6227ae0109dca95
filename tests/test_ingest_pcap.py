"""Packet -> flow assembly on a capture written by scapy: timeouts, FIN, link layers."""

from __future__ import annotations

import pytest

from flowdiff.ingest import FlowTimeouts, read_flows
from flowdiff.ingest import pcap as pcap_format

scapy = pytest.importorskip("scapy.all")
T0 = 1_600_000_000.0


def packet(layers, t: float):
    frame = scapy.Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / layers
    frame.time = T0 + t
    return frame


def tcp(t: float, flags: str, tos: int = 0, payload: bytes = b""):
    return packet(scapy.IP(src="10.0.0.1", dst="10.0.0.2", tos=tos)
                  / scapy.TCP(sport=1000, dport=80, flags=flags) / payload, t)


def udp(t: float):
    return packet(scapy.IP(src="10.0.0.3", dst="10.0.0.4") / scapy.UDP(sport=53, dport=5353)
                  / (b"x" * 10), t)


@pytest.fixture
def capture(tmp_path):
    frames = [
        tcp(0, "S", tos=0x28), tcp(10, "A", payload=b"a" * 100),   # one flow
        tcp(30, "A"),                                               # idle 20 s > 15: new
        tcp(35, "PA", payload=b"b" * 50), tcp(36, "FA"),           # FIN ends it
        tcp(37, "A"),                                               # so this is new
        packet(scapy.IP(src="10.0.0.5", dst="10.0.0.6") / scapy.ICMP(type=8, code=0), 5),
        packet(scapy.Dot1Q(vlan=7) / scapy.IP(src="10.0.0.7", dst="10.0.0.8")
               / scapy.UDP(sport=1, dport=2), 6),
        packet(scapy.IPv6(src="::1", dst="::2") / scapy.UDP(sport=1, dport=2), 7),
        packet(scapy.ARP(pdst="10.0.0.9"), 8),
        *[udp(t) for t in range(100, 240, 10)],                      # 14 packets, 130 s
    ]
    path = tmp_path / "synthetic.pcap"
    scapy.wrpcap(str(path), frames)
    return path


def test_timeouts_fin_and_link_layers(capture):
    flows, summary = read_flows(capture)
    assert summary.rows_read == 24
    assert summary.skipped == {pcap_format.NOT_IPV4: 2}
    rows = {(r.ts - T0, r.srcport, r.dstport, r.proto): r for r in flows.itertuples()}
    syn = rows[(0.0, 1000, 80, 6)]
    assert (syn.pkt, syn.td, syn.flags, syn.tos) == (2, 10.0, 0x02 | 0x10, 0x28)
    assert syn.byt == 40 + 140
    fin = rows[(30.0, 1000, 80, 6)]
    assert (fin.pkt, fin.td, fin.flags, fin.byt) == (3, 6.0, 0x01 | 0x08 | 0x10, 40 + 90 + 40)
    assert rows[(37.0, 1000, 80, 6)].pkt == 1
    assert rows[(5.0, 0, 8 * 256, 1)].pkt == 1                 # ICMP type/code in dstport
    assert rows[(6.0, 1, 2, 17)].pkt == 1                      # VLAN-tagged frame
    long = rows[(100.0, 53, 5353, 17)]
    assert (long.pkt, long.td) == (13, 120.0)                  # cut by the active timeout
    assert rows[(230.0, 53, 5353, 17)].pkt == 1
    assert len(flows) == 7 and flows["pkt"].sum() == 22
    assert flows["ts"].is_monotonic_increasing


def test_timeouts_are_configurable(capture, tmp_path):
    from flowdiff.ingest.request import ReadRequest
    from flowdiff.ingest.summary import IngestSummary

    request = ReadRequest(capture, 1000, False, IngestSummary(capture, "pcap"))
    chunks = list(pcap_format.read(request, FlowTimeouts(idle=60.0, active=1000.0)))
    tcp_flows = sum(int(((c["srcport"] == 1000)).sum()) for c in chunks)
    assert tcp_flows == 2          # no idle split any more; the FIN still ends a flow
    udp_flows = sum(int(((c["srcport"] == 53)).sum()) for c in chunks)
    assert udp_flows == 1
