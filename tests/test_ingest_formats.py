"""Ingest of every supported format from real data (../shared/data), checked against
independent readers: Python's csv/datetime/ipaddress row by row, tshark, nfdump."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import ipaddress
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flowdiff import schema
from flowdiff.ingest import detect, iter_flow_chunks, read_flows, write_flows

REPO = Path(__file__).resolve().parents[1]
KEY = ["srcip", "dstip", "srcport", "dstport", "proto"]


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt package needed for this check)")
    return path


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def ugr16_reference(path: Path) -> pd.DataFrame:
    """UGR'16 rows parsed one at a time with the standard library (slow, independent)."""
    rows = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for te, td, sa, da, sp, dp, pr, flg, _fwd, stos, pkt, byt, label in reader:
            end = dt.datetime.strptime(te, "%Y-%m-%d %H:%M:%S").replace(
                tzinfo=dt.timezone.utc).timestamp()
            bits = sum(schema.FLAG_BITS[c] for c in flg if c != ".")
            rows.append((end - float(td), float(td), ip(sa), ip(da), int(sp), int(dp),
                         schema.PROTO_NUMBERS[pr.upper()], int(pkt), int(byt), bits,
                         int(stos), label))
    table = pd.DataFrame(rows, columns=list(schema.COLUMNS))
    return schema.conform(table)


def test_ugr16_sample_equals_row_by_row_reference(ugr16_sample):
    table, summary = read_flows(ugr16_sample)
    reference = ugr16_reference(ugr16_sample)
    reference = reference.iloc[np.argsort(reference["ts"].to_numpy(), kind="stable")]
    pd.testing.assert_frame_equal(table, reference.reset_index(drop=True))
    assert summary.format == "ugr16"
    assert (summary.rows_read, summary.rows_kept, summary.rows_skipped) == (20000, 20000, 0)
    assert summary.ignored_columns == ["fwd"]
    assert summary.ts_min == table["ts"].iloc[0] and summary.ts_max == table["ts"].max()
    assert (np.diff(table["ts"].to_numpy()) >= 0).all()


def test_ugr16_headerless_gzip_and_without_label(ugr16_sample, tmp_path):
    lines = ugr16_sample.read_text().splitlines(keepends=True)
    headerless = tmp_path / "ugr.csv.gz"
    with gzip.open(headerless, "wt") as f:
        f.writelines(lines[1:])
    no_label = tmp_path / "nolabel.csv"
    no_label.write_text("".join(line.rsplit(",", 1)[0] + "\n" for line in lines[1:]))
    full, _ = read_flows(ugr16_sample)
    assert detect(headerless, has_mapping=False) == "ugr16"
    pd.testing.assert_frame_equal(read_flows(headerless)[0], full)
    pd.testing.assert_frame_equal(read_flows(no_label)[0], full.drop(columns="label"))


def test_netshare_small_equals_reference(netshare_small):
    table, summary = read_flows(netshare_small)
    assert summary.format == "netshare"
    raw = list(csv.DictReader(open(netshare_small, newline="")))
    reference = pd.DataFrame({
        "ts": [float(r["ts"]) / 1e6 for r in raw], "td": [float(r["td"]) for r in raw],
        "srcip": [int(r["srcip"]) for r in raw], "dstip": [int(r["dstip"]) for r in raw],
        "srcport": [int(r["srcport"]) for r in raw],
        "dstport": [int(r["dstport"]) for r in raw],
        "proto": [schema.PROTO_NUMBERS[r["proto"].upper()] for r in raw],
        "pkt": [int(r["pkt"]) for r in raw], "byt": [int(r["byt"]) for r in raw],
        "label": [r["type"] for r in raw]})
    reference = schema.conform(reference)
    reference = reference.iloc[np.argsort(reference["ts"].to_numpy(), kind="stable")]
    pd.testing.assert_frame_equal(table, reference.reset_index(drop=True))


@pytest.mark.parametrize("name", ["flows.csv", "flows.csv.gz", "flows.parquet"])
def test_canonical_round_trip_is_exact(ugr16_sample, tmp_path, name):
    table, _ = read_flows(ugr16_sample)
    table["stream_id"] = np.arange(len(table)) % 7
    table["seq"] = np.arange(len(table)) * 3
    table = schema.conform(table)
    out = write_flows(table, tmp_path / name)
    assert detect(out, has_mapping=False) == "canonical"
    back, summary = read_flows(out)
    pd.testing.assert_frame_equal(back, table)
    assert summary.rows_kept == len(table)
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file


@pytest.mark.parametrize("name", ["labels.csv", "labels.parquet"])
def test_canonical_labels_with_commas_and_quotes_round_trip(tmp_path, name):
    table = schema.conform(pd.DataFrame({
        "ts": [1.5, 2.25, 3.0], "srcip": [1, 2, 3], "dstip": [4, 5, 6], "proto": [6, 17, 1],
        "label": ['scan, slow', 'say "hi"', "plain"]}))
    back, _ = read_flows(write_flows(table, tmp_path / name))
    pd.testing.assert_frame_equal(back, table)


def test_progress_reports_reach_the_file_size(ugr16_sample):
    seen = []
    read_flows(ugr16_sample, chunk_rows=5000, progress=lambda done, total: seen.append(
        (done, total)))
    size = ugr16_sample.stat().st_size
    assert len(seen) == 4 and seen[-1] == (size, size)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_canonical_csv_is_readable_text(ugr16_sample, tmp_path):
    table, _ = read_flows(ugr16_sample)
    out = write_flows(table.head(3), tmp_path / "three.csv")
    header, first = out.read_text().splitlines()[:2]
    assert header == ",".join(schema.COLUMNS)
    values = dict(zip(header.split(","), first.split(",")))
    assert values["srcip"] == str(ipaddress.IPv4Address(int(table["srcip"].iloc[0])))
    assert set(values["flags"]) <= set(".UAPRSF") and len(values["flags"]) == 6


def test_generic_parquet_with_units_equals_ugr16(ugr16_sample, tmp_path):
    table, _ = read_flows(ugr16_sample)
    other = pd.DataFrame({
        "start_ms": np.round(table["ts"].to_numpy() * 1000).astype(np.int64),
        "dur_ms": np.round(table["td"].to_numpy() * 1000).astype(np.int64),
        "src": table["srcip"].astype(np.int64), "dst": schema.int_to_ip(table["dstip"]),
        "sport": table["srcport"], "dport": table["dstport"],
        "protocol": [schema.proto_name(p) for p in table["proto"]],
        "packets": table["pkt"], "bytes": table["byt"], "tag": table["label"],
        "unused": 1})
    path = tmp_path / "other.parquet"
    other.to_parquet(path)
    mapping = {"columns": {"ts": "start_ms", "td": "dur_ms", "srcip": "src", "dstip": "dst",
                           "srcport": "sport", "dstport": "dport", "proto": "protocol",
                           "pkt": "packets", "byt": "bytes", "label": "tag"},
               "time_unit": "ms", "duration_unit": "ms"}
    back, summary = read_flows(path, mapping=mapping)
    assert summary.format == "generic" and summary.ignored_columns == ["unused"]
    expected = table.drop(columns=["flags", "tos"])
    np.testing.assert_allclose(back["ts"], expected["ts"], rtol=0, atol=1e-3)
    np.testing.assert_allclose(back["td"], expected["td"], rtol=0, atol=1e-3)
    pd.testing.assert_frame_equal(back.drop(columns=["ts", "td"]),
                                  expected.drop(columns=["ts", "td"]))


def tshark_packets(pcap: Path) -> pd.DataFrame:
    out = subprocess.run(
        [need_tool("tshark"), "-r", str(pcap), "-o", "ip.defragment:FALSE", "-T", "fields",
         "-E", "separator=,", "-e", "ip.src", "-e", "ip.dst", "-e", "ip.proto",
         "-e", "tcp.srcport", "-e", "udp.srcport", "-e", "tcp.dstport", "-e", "udp.dstport",
         "-e", "ip.len"], check=True, capture_output=True, text=True, timeout=60).stdout
    rows = [line.split(",") for line in out.splitlines()]
    return pd.DataFrame({
        "srcip": [ip(r[0]) for r in rows], "dstip": [ip(r[1]) for r in rows],
        "proto": [int(r[2]) for r in rows],
        "srcport": [int(r[3] or r[4] or 0) for r in rows],
        "dstport": [int(r[5] or r[6] or 0) for r in rows],
        "byt": [int(r[7]) for r in rows]}).astype({c: schema.DTYPES[c] for c in KEY})


def test_pcap_caida_flows_agree_with_tshark(caida_pcap):
    flows, summary = read_flows(caida_pcap)
    assert summary.format == "pcap" and summary.rows_read == 10000
    packets = tshark_packets(caida_pcap)
    assert len(packets) == 10000
    ours = flows.groupby(KEY)[["pkt", "byt"]].sum().sort_index()
    theirs = packets.assign(pkt=1).groupby(KEY)[["pkt", "byt"]].sum().sort_index()
    assert len(theirs) == 3149                  # five-tuples, as the data README says
    pd.testing.assert_frame_equal(ours, theirs, check_dtype=False)
    assert len(flows) >= 3149                   # FIN/RST may cut a five-tuple in two
    assert (flows["td"] >= 0).all() and "label" not in flows
    assert set(flows.columns) == set(schema.COLUMNS) - {"label"}


def test_pcap_legacy_format_equals_pcapng(caida_pcap, tmp_path):
    legacy = tmp_path / "caida-legacy.pcap"
    subprocess.run([need_tool("editcap"), "-F", "pcap", str(caida_pcap), str(legacy)],
                   check=True, capture_output=True, timeout=60)
    pd.testing.assert_frame_equal(read_flows(legacy)[0], read_flows(caida_pcap)[0])


def test_generic_nfdump_export_agrees_with_pcap_ingest(caida_pcap, tmp_path):
    """nfpcapd builds NetFlow records from the same capture; nfdump exports them as CSV;
    the example mapping reads that CSV."""
    legacy = tmp_path / "caida.pcap"
    subprocess.run([need_tool("editcap"), "-F", "pcap", str(caida_pcap), str(legacy)],
                   check=True, capture_output=True, timeout=60)
    flowdir = tmp_path / "nf"
    flowdir.mkdir()
    subprocess.run([need_tool("nfpcapd"), "-r", str(legacy), "-w", str(flowdir),
                    "-e", "120,15"], check=True, capture_output=True, timeout=60)
    nfcapd = sorted(flowdir.glob("nfcapd.*"))
    export = tmp_path / "nfdump.csv"
    with open(export, "w") as out:
        subprocess.run([need_tool("nfdump"), "-r", str(nfcapd[0]), "-o", "csv", "-q"],
                       check=True, stdout=out, timeout=60)
    table, summary = read_flows(export, mapping=REPO / "configs" / "mapping-example.yaml")
    rows = list(csv.reader(open(export, newline="")))
    assert summary.format == "generic" and len(table) == len(rows) > 3000
    assert table["pkt"].sum() == sum(int(r[11]) for r in rows)
    assert table["byt"].sum() == sum(int(r[12]) for r in rows)
    assert sorted(table["srcip"]) == sorted(ip(r[3]) for r in rows)
    # nfpcapd drops the few packets with too short a capture; every other 5-tuple agrees
    ours = read_flows(caida_pcap)[0].groupby(KEY)["pkt"].sum()
    theirs = table.groupby(KEY)["pkt"].sum()
    common = ours.index.intersection(theirs.index)
    assert len(common) >= 0.99 * len(theirs)
    assert (ours[common] == theirs[common]).mean() > 0.99


def test_iter_flow_chunks_keeps_file_order_and_bounds(ugr16_sample):
    chunks = list(iter_flow_chunks(ugr16_sample, chunk_rows=3000))
    assert [len(c) for c in chunks] == [3000] * 6 + [2000]
    whole = pd.concat(chunks, ignore_index=True)
    reference = ugr16_reference(ugr16_sample)
    pd.testing.assert_frame_equal(whole, reference)  # file order, not sorted


def test_detect_formats(ugr16_sample, netshare_small, caida_pcap, tmp_path):
    assert detect(ugr16_sample, has_mapping=False) == "ugr16"
    assert detect(netshare_small, has_mapping=False) == "netshare"
    assert detect(caida_pcap, has_mapping=False) == "pcap"     # pcapng inside a .pcap name
    assert detect(netshare_small, has_mapping=True) == "generic"
    no_type = tmp_path / "netshare-no-type.csv"
    no_type.write_text("".join(line.rsplit(",", 1)[0] + "\n"
                               for line in open(netshare_small).readlines()[:5]))
    assert detect(no_type, has_mapping=False) == "netshare"   # integer IPs give it away


def test_mixed_column_in_a_big_chunk_is_still_checked(tmp_path):
    """pandas gives a column with numbers and one bad text value as object dtype (possibly
    with a DtypeWarning); the bad value is still found and named."""
    rows = [f"{i}.5,10.0.0.1,10.0.0.2,6,{i % 60000}" for i in range(150_000)]
    rows[120_000] = "120000.5,10.0.0.1,10.0.0.2,6,http"
    path = tmp_path / "mixed.csv"
    path.write_text("ts,srcip,dstip,proto,srcport\n" + "\n".join(rows) + "\n")
    from flowdiff.ingest import IngestError
    with pytest.raises(IngestError) as caught:
        read_flows(path)
    assert (caught.value.line, caught.value.field) == (120_002, "srcport")
    table, summary = read_flows(path, skip_bad=True)
    assert len(table) == 149_999 and summary.skipped == {"srcport: is not an integer": 1}


def test_summary_is_filled_while_streaming_and_bad_out_suffix(ugr16_sample, tmp_path):
    from flowdiff.ingest import IngestSummary
    summary = IngestSummary(ugr16_sample, "auto")
    rows = sum(len(c) for c in iter_flow_chunks(ugr16_sample, summary=summary))
    assert rows == summary.rows_kept == 20000 and summary.format == "ugr16"
    with pytest.raises(ValueError, match="expected a name ending in .csv"):
        write_flows(read_flows(ugr16_sample)[0], tmp_path / "flows.json")


def test_generic_end_time_strftime_and_ms_durations(tmp_path):
    path = tmp_path / "ends.csv"
    path.write_text("end;dur_ms;a;b;p\n"
                    "11/04/2016 00:01:38;6004;165.133.210.175;42.219.155.19;udp\n"
                    "11/04/2016 00:01:40;0;42.219.155.19;165.133.210.175;1\n")
    mapping = {"columns": {"ts": "end", "td": "dur_ms", "srcip": "a", "dstip": "b",
                           "proto": "p"},
               "time_format": "%d/%m/%Y %H:%M:%S", "time_is_end": True,
               "duration_unit": "ms", "delimiter": ";"}
    table, _ = read_flows(path, mapping=mapping)
    end = dt.datetime(2016, 4, 11, 0, 1, 38, tzinfo=dt.timezone.utc).timestamp()
    assert table["ts"].tolist() == [end - 6.004, end + 2.0]
    assert table["td"].tolist() == [6.004, 0.0] and table["proto"].tolist() == [17, 1]


def test_multi_member_gzip_is_read_whole(ugr16_sample, tmp_path):
    lines = ugr16_sample.read_text().splitlines(keepends=True)
    path = tmp_path / "two-members.csv.gz"
    path.write_bytes(gzip.compress("".join(lines[:1001]).encode())
                     + gzip.compress("".join(lines[1001:2001]).encode()))
    table, summary = read_flows(path)
    assert summary.rows_read == 2000 == len(table)
