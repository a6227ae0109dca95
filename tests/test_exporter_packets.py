"""pcap exporter: packet trains checked by scapy, tshark (checksums, expert infos) and
Suricata (one flow per record with the record's packet and byte counts); live sending inside
a network namespace over a veth pair."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flowdiff.exporters.base import ExporterError
from flowdiff.exporters.packet_builder import ACK, FIN, PSH, SYN, PacketBuilder, mac_bytes
from flowdiff.exporters.packets import CONFIG, EXPORTER
from flowdiff.schema import conform, int_to_ip
from realtools import (require_tool, suricata_flows, synthetic_records, tshark_fields,
                       tshark_problems, ugr16_records)

scapy_all = pytest.importorskip("scapy.all")

ETHERNET_HEADER = 14


def unique_conversations(table: pd.DataFrame) -> pd.DataFrame:
    """Records whose (unordered) endpoint pair occurs once, so each is a flow of its own
    (UGR'16 holds both directions of a connection as two records)."""
    a = table["srcip"].astype("int64") * 65536 + table["srcport"]
    b = table["dstip"].astype("int64") * 65536 + table["dstport"]
    key = (np.minimum(a, b).astype(str) + "-" + np.maximum(a, b).astype(str) + "-"
           + table["proto"].astype(str))
    keep = ~key.duplicated(keep=False) & table["proto"].isin([1, 6, 17])
    return table[keep.to_numpy()].reset_index(drop=True)


def export(tmp_path: Path, table: pd.DataFrame, **changes):
    exporter = EXPORTER("p", CONFIG(directory=str(tmp_path / "pcap"), **changes))
    exporter.submit(table)
    exporter.close()
    return exporter


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="src_mac: invalid MAC address 'zz'"):
        CONFIG(src_mac="zz")
    with pytest.raises(ValueError, match="directory: null needs an interface"):
        CONFIG(directory=None)
    assert CONFIG().interface is None  # never sends live unless configured


def test_checksums_and_fields_agree_with_scapy(tmp_path):
    table = synthetic_records(60, seed=11)
    exporter = export(tmp_path, table, rotate_packets=None)
    packets = scapy_all.rdpcap(str(exporter.completed[0]))
    assert len(packets) == exporter.stats.packets
    for pkt in packets:
        ip = pkt[scapy_all.IP]
        rebuilt = scapy_all.Ether(bytes(pkt))
        for layer in (scapy_all.IP, scapy_all.TCP, scapy_all.UDP, scapy_all.ICMP):
            if layer in rebuilt:
                fresh = rebuilt.copy()
                del fresh[layer].chksum
                assert scapy_all.Ether(bytes(fresh))[layer].chksum == rebuilt[layer].chksum, layer
        assert ip.len == len(bytes(ip))
    assert packets[0][scapy_all.Ether].src == "02:00:00:00:00:01"


def test_tcp_flags_times_and_sizes_follow_the_record(tmp_path):
    record = conform(pd.DataFrame({
        "ts": [1000.0], "td": [2.0], "srcip": [0x0A000001], "dstip": [0x0A000002],
        "srcport": [40000], "dstport": [443], "proto": [6], "pkt": [5], "byt": [2000],
        "flags": [SYN | ACK | PSH | FIN], "tos": [0], "label": ["x"], "stream_id": [0], "seq": [0]}))
    frames = PacketBuilder(mac_bytes("02:00:00:00:00:01"), mac_bytes("02:00:00:00:00:02")).build(record)
    parsed = [(t, scapy_all.Ether(f)) for t, f in frames]
    forward = [(t, p) for t, p in parsed if p[scapy_all.IP].src == "10.0.0.1"]
    reverse = [p for _, p in parsed if p[scapy_all.IP].src == "10.0.0.2"]
    assert len(forward) == 5 and len(reverse) == 1                # + the SYN-ACK reply
    assert sum(p[scapy_all.IP].len for _, p in forward) == 2000
    assert [t for t, _ in forward] == [1000.0, 1000.5, 1001.0, 1001.5, 1002.0]
    flags = [int(p[scapy_all.TCP].flags) for _, p in forward]
    assert flags[0] == SYN and flags[-1] & FIN and all(f & ACK for f in flags[1:])
    assert int(reverse[0][scapy_all.TCP].flags) == SYN | ACK
    assert reverse[0][scapy_all.TCP].ack == forward[0][1][scapy_all.TCP].seq + 1
    assert forward[1][1][scapy_all.TCP].ack == reverse[0][scapy_all.TCP].seq + 1
    # sequence numbers advance by the payload: no gaps for tshark to find
    seqs = [p[scapy_all.TCP].seq for _, p in forward[1:]]
    lens = [len(p[scapy_all.TCP].payload) for _, p in forward[1:]]
    assert all(b - a == n for a, b, n in zip(seqs, seqs[1:], lens))


def test_unsupported_protocols_skipped_and_impossible_sizes_counted(tmp_path):
    table = synthetic_records(4, seed=2)
    table.loc[0, "proto"] = 47          # GRE: no packet form here
    table.loc[1, ["proto", "pkt", "byt"]] = [17, 3, 10]  # fewer bytes than 3 headers
    exporter = export(tmp_path, conform(table), rotate_packets=None)
    assert exporter.stats.skipped == 1 and exporter.stats.adjusted == 1
    assert exporter.stats.records == 3


def test_tshark_finds_no_malformed_or_warning_packets(tmp_path, ugr16_sample):
    table = pd.concat([synthetic_records(300, seed=5),
                       unique_conversations(ugr16_records(ugr16_sample, 4000))], ignore_index=True)
    exporter = export(tmp_path, table, rotate_packets=None)
    problems = tshark_problems(exporter.completed[0])
    assert problems == [], problems[:10]
    # the OR of each TCP record's packet flags (src -> dst) is the record's flags
    seen: dict[tuple, int] = {}
    for *key, flags in tshark_fields(exporter.completed[0], ["ip.src", "tcp.srcport", "ip.dst",
                                                             "tcp.dstport", "tcp.flags"], "tcp"):
        seen[tuple(key)] = seen.get(tuple(key), 0) | int(flags, 16)
    tcp = table[table["proto"] == 6]
    for src, sport, dst, dport, flags in zip(int_to_ip(tcp["srcip"].to_numpy()), tcp["srcport"],
                                             int_to_ip(tcp["dstip"].to_numpy()), tcp["dstport"],
                                             tcp["flags"]):
        assert seen[(src, str(sport), dst, str(dport))] == flags
    # the check can fail: a corrupted checksum is reported
    broken = tmp_path / "broken.pcap"
    data = bytearray(exporter.completed[0].read_bytes())
    data[24 + 16 + 14 + 10] ^= 0xFF   # first packet: IP header checksum byte
    broken.write_bytes(bytes(data))
    assert any("checksum" in p.lower() or "bad" in p.lower() for p in tshark_problems(broken))


@pytest.mark.parametrize("source", ["synthetic", "ugr16"])
def test_suricata_sees_one_flow_per_record_with_its_counts(tmp_path, source, request):
    if source == "synthetic":
        table = synthetic_records(400, seed=7)
    else:
        table = unique_conversations(ugr16_records(request.getfixturevalue("ugr16_sample"), 3000))
    exporter = export(tmp_path, table, rotate_packets=None)
    flows = suricata_flows(exporter.completed[0], tmp_path / "suricata")
    src = int_to_ip(table["srcip"].to_numpy())
    dst = int_to_ip(table["dstip"].to_numpy())
    expected = {}
    for i, r in enumerate(table.itertuples()):
        ports = (None, None) if r.proto == 1 else (int(r.srcport), int(r.dstport))
        expected[(src[i], ports[0], dst[i], ports[1])] = r
    assert len(expected) == len(table) == len(flows)
    for flow in flows:
        r = expected.pop((flow["src_ip"], flow.get("src_port"), flow["dest_ip"],
                          flow.get("dest_port")))
        counts = flow["flow"]
        # tolerance: none for packets; Suricata counts bytes with the 14-byte Ethernet header,
        # NetFlow records count IP bytes, so bytes_toserver == byt + 14 * pkt exactly
        assert counts["pkts_toserver"] == r.pkt
        assert counts["bytes_toserver"] == r.byt + ETHERNET_HEADER * r.pkt
        if r.proto == 6:
            if r.flags & SYN and r.pkt > 1:  # Suricata tracks TCP flags from a SYN on only
                assert int(flow["tcp"]["tcp_flags_ts"], 16) == r.flags
            assert counts["pkts_toclient"] == (1 if r.flags & SYN and r.flags & ACK and r.pkt > 1 else 0)
        else:
            assert counts["pkts_toclient"] == 0
    assert not expected


def test_rotation_by_packets_and_every_file_read_back(tmp_path):
    table = synthetic_records(200, seed=9)
    exporter = EXPORTER("p", CONFIG(directory=str(tmp_path), rotate_packets=300,
                                    rotate_seconds=None))
    for chunk in np.array_split(np.arange(len(table)), 4):
        exporter.submit(table.iloc[chunk])
    exporter.close()
    files = exporter.completed
    assert files == sorted(tmp_path.iterdir()) and not list(tmp_path.glob("*.part"))
    counts = [len(tshark_fields(f, ["frame.number"])) for f in files]
    assert all(c == 300 for c in counts[:-1]) and 0 < counts[-1] <= 300
    assert sum(counts) == exporter.stats.packets


def test_write_failure_names_the_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    exporter = EXPORTER("p", CONFIG(directory=str(blocker)))
    with pytest.raises(ExporterError, match=rf"cannot create {blocker}/flows-.*\.pcap\.part"):
        exporter.submit(synthetic_records(3, seed=1))


# ---------------------------------------------------------------- live sending in a netns
@pytest.fixture
def veth_namespace():
    require_tool("ip")
    require_tool("tshark")
    ns = f"fdx{uuid.uuid4().hex[:8]}"
    res = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"network namespaces not permitted here: {res.stderr.strip()}")
    try:
        for cmd in (["ip", "-n", ns, "link", "add", "vsend", "type", "veth", "peer", "name", "vcap"],
                    ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
                    ["ip", "-n", ns, "link", "set", "vsend", "up"],
                    ["ip", "-n", ns, "link", "set", "vcap", "up"]):
            subprocess.run(cmd, check=True, capture_output=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_live_send_on_a_veth_pair(tmp_path, veth_namespace):
    ns = veth_namespace
    table = synthetic_records(40, seed=4)
    table.to_parquet(tmp_path / "records.parquet")
    sent_dir, captured = tmp_path / "sent", tmp_path / "captured.pcap"
    script = textwrap.dedent(f"""
        import pandas as pd
        from flowdiff.exporters.packets import CONFIG, EXPORTER
        e = EXPORTER("live", CONFIG(directory={str(sent_dir)!r}, interface="vsend",
                                    rotate_packets=None))
        e.submit(pd.read_parquet({str(tmp_path / "records.parquet")!r}))
        e.close()
        print(e.sent)
    """)
    expected = PacketBuilder(mac_bytes("02:00:00:00:00:01"), mac_bytes("02:00:00:00:00:02"))
    n_packets = len(expected.build(table))
    capture = subprocess.Popen(["ip", "netns", "exec", ns, "tshark", "-i", "vcap", "-f", "ip",
                                "-c", str(n_packets), "-a", "duration:30", "-w", str(captured)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = ""
    deadline = time.monotonic() + 20
    while "Capturing on" not in line and time.monotonic() < deadline:
        line = capture.stderr.readline()
    time.sleep(0.3)
    sender = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script],
                            capture_output=True, text=True, timeout=60)
    assert sender.returncode == 0, sender.stderr
    assert int(sender.stdout.strip()) == n_packets
    capture.wait(timeout=40)
    got = [bytes(p) for p in scapy_all.rdpcap(str(captured))]
    written = [bytes(p) for p in scapy_all.rdpcap(str(next(sent_dir.iterdir())))]
    assert got == written and len(got) == n_packets


def test_live_send_to_a_missing_interface_fails_clearly(tmp_path):
    exporter = EXPORTER("p", CONFIG(directory=None, interface="fdnosuchif0"))
    with pytest.raises(ExporterError, match="cannot send on interface 'fdnosuchif0'"):
        exporter.submit(synthetic_records(2, seed=1))
    assert not exporter.healthy


def test_disk_full_retry_writes_every_packet_once(tiny_fs, tmp_path):
    """The fan-out retries a failed batch (same object) after space is freed: the completed
    pcaps hold exactly the packets of an undisturbed run, none lost, none twice."""
    from conftest import fill_fs

    def run(directory: Path, filler: Path | None) -> list[bytes]:
        exporter = EXPORTER("p", CONFIG(directory=str(directory), rotate_packets=150,
                                        rotate_seconds=None, fsync=False))
        failures = 0
        for i in range(8):  # about 150 KB of pcap: fits the 256 KiB tmpfs once space is freed
            batch = synthetic_records(8, seed=i, start_seq=i * 3)
            while True:
                try:
                    exporter.submit(batch)
                    break
                except ExporterError as exc:
                    assert "No space left" in str(exc)
                    failures += 1
                    assert failures < 5, "freeing space did not help"
                    filler.unlink(missing_ok=True)
        exporter.close()
        assert not list(directory.glob("*.part"))
        assert filler is None or failures >= 1, "the disk never filled: nothing tested"
        return [bytes(p) for f in sorted(directory.iterdir())
                for p in scapy_all.rdpcap(str(f))]

    full = run(tiny_fs / "out", fill_fs(tiny_fs, leave=40_000))
    assert full == run(tmp_path / "reference", None)
