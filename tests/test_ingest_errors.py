"""Malformed inputs: each gives an IngestError naming file, line (or packet/row) and field;
with skip_bad the bad rows are dropped and counted by reason instead."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flowdiff.ingest import IngestError, load_mapping, read_flows
from flowdiff.schema import COLUMNS, SchemaError

HEADER = "te,td,sa,da,sp,dp,pr,flg,fwd,stos,pkt,byt,label"


@pytest.fixture
def ugr_lines(ugr16_sample) -> list[str]:
    """Header and the first 40 real UGR'16 rows."""
    return ugr16_sample.read_text().splitlines()[:41]


def with_line(tmp_path: Path, lines: list[str], line_no: int, field: str, value: str,
              name: str = "data.csv") -> Path:
    """A copy of ``lines`` with field ``field`` of physical line ``line_no`` replaced."""
    lines = list(lines)
    cells = lines[line_no - 1].split(",")
    cells[HEADER.split(",").index(field)] = value
    lines[line_no - 1] = ",".join(cells)
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def error_of(path: Path, **options) -> IngestError:
    with pytest.raises(IngestError) as caught:
        read_flows(path, **options)
    return caught.value


@pytest.mark.parametrize("field, value, message", [
    ("sa", "42.219.300.1", "'42.219.300.1' is not an IPv4 address: expected a dotted-quad"),
    ("da", "10.0.0", "'10.0.0' is not an IPv4 address"),
    ("sp", "70000", "port 70000 out of range 0..65535"),
    ("dp", "-1", "port -1 out of range 0..65535"),
    ("byt", "12kB", "'12kB' is not an integer: expected an integer byte count"),
    ("pkt", "0", "packet count 0 out of range 1.."),
    ("td", "-3.5", "duration -3.5 out of range >= 0.0"),
    ("te", "2016-04-31 00:00:00", "'2016-04-31 00:00:00' is not a time"),
    ("pr", "TPC", "unknown protocol 'TPC'"),
    ("flg", ".A.Q..", "invalid TCP flags '.A.Q..'"),
    ("stos", "300", "ToS 300 out of range 0..255"),
    ("label", "", "missing value (empty)"),
])
def test_bad_value_names_file_line_and_field(tmp_path, ugr_lines, field, value, message):
    path = with_line(tmp_path, ugr_lines, 17, field, value)
    error = error_of(path)
    assert (error.path, error.line, error.field) == (path, 17, field)
    assert str(error).startswith(f"{path} line 17, field '{field}': ")
    assert message in str(error)
    assert isinstance(error, SchemaError) and isinstance(error, ValueError)


def test_first_bad_line_is_reported_across_chunks(tmp_path, ugr_lines):
    path = with_line(tmp_path, ugr_lines, 33, "sp", "70000")
    error = error_of(path, chunk_rows=7)   # line 33 is in the fifth chunk
    assert (error.line, error.field) == (33, "sp")
    assert str(error) == f"{path} line 33, field 'sp': port 70000 out of range 0..65535"


def test_missing_column(tmp_path, ugr_lines):
    path = tmp_path / "data.csv"
    path.write_text("\n".join([HEADER.replace(",sp,", ",spt,")] + ugr_lines[1:]) + "\n")
    error = error_of(path)
    assert (error.line, error.field) == (1, "sp")
    assert "missing column 'sp'" in str(error) and "'spt'" in str(error)


def test_wrong_field_count_and_empty_line(tmp_path, ugr_lines):
    lines = list(ugr_lines)
    lines[9] += ",extra"                # line 10
    path = tmp_path / "extra.csv"
    path.write_text("\n".join(lines) + "\n")
    error = error_of(path)
    assert error.line == 10 and "expected 13 fields, found 14" in str(error)
    lines = list(ugr_lines)
    lines[4] = ""                       # line 5
    path = tmp_path / "blank.csv"
    path.write_text("\n".join(lines) + "\n")
    error = error_of(path)
    assert error.line == 5 and "empty line" in str(error)


def test_empty_file_and_header_only(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    error = error_of(empty)
    assert error.line == 1 and "file is empty" in str(error)
    for fmt in ("ugr16", "netshare", "canonical", "pcap"):
        assert "empty" in str(error_of(empty, format=fmt))
    header_only = tmp_path / "header.csv"
    header_only.write_text(HEADER + "\n")
    table, summary = read_flows(header_only)
    assert len(table) == 0 and summary.rows_read == 0
    assert list(table.columns) == list(COLUMNS) and table["srcip"].dtype == "uint32"


def test_truncated_gzip_names_the_cut_line(tmp_path, ugr16_sample):
    whole = gzip.compress(ugr16_sample.read_bytes())
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(whole[:len(whole) // 2])
    complete_lines = 0
    with gzip.open(cut, "rb") as f:      # count what the standard library can recover
        try:
            for _ in iter(lambda: f.read(1), b""):
                complete_lines += _ == b"\n"
        except EOFError:
            pass
    assert complete_lines > 1000
    for options in ({}, {"skip_bad": True}):   # a cut file is never silently accepted
        error = error_of(cut, **options)
        assert error.line == complete_lines + 1
        assert "truncated gzip stream" in str(error) and str(cut) in str(error)


def test_truncated_pcap_names_the_packet(tmp_path, caida_pcap):
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(caida_pcap.read_bytes()[:400_000])
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed (needed to count the intact packets)")
    intact = len(subprocess.run([tshark, "-r", str(cut)], capture_output=True, text=True,
                                timeout=60).stdout.splitlines())
    error = error_of(cut)
    assert (error.line, error.where) == (intact + 1, "packet")
    assert f"{cut} packet {intact + 1}: truncated capture" in str(error)
    table, summary = read_flows(cut, skip_bad=True)
    assert summary.rows_read == intact + 1 and summary.rows_kept == len(table) > 0
    assert summary.skipped == {"truncated packet record (capture cut short)": 1}
    assert table["pkt"].sum() == intact


def test_not_a_capture_and_unsupported_link_type(tmp_path):
    bogus = tmp_path / "x.pcap"
    bogus.write_bytes(b"hello world, not a capture")
    assert "not a capture file" in str(error_of(bogus, format="pcap"))
    header = (0xA1B2C3D4).to_bytes(4, "little") + bytes(12) + (65535).to_bytes(4, "little")
    record = bytes(8) + (20).to_bytes(4, "little") * 2 + bytes(20)
    odd = tmp_path / "odd.pcap"
    odd.write_bytes(header + (147).to_bytes(4, "little") + record)
    error = error_of(odd)
    assert error.line == 1 and "unsupported link type 147" in str(error)


def test_truncated_ip_header_in_pcap(tmp_path):
    header = (0xA1B2C3D4).to_bytes(4, "little") + bytes(12) + (65535).to_bytes(4, "little")
    packet = bytes([0x45, 0, 0, 40]) + bytes(6)            # 10 bytes of an IPv4 header
    record = bytes(8) + len(packet).to_bytes(4, "little") * 2 + packet
    path = tmp_path / "short.pcap"
    path.write_bytes(header + (101).to_bytes(4, "little") + record)
    error = error_of(path)
    assert (error.line, error.field) == (1, "ip") and "truncated IP header" in str(error)
    table, summary = read_flows(path, skip_bad=True)
    assert len(table) == 0 and summary.skipped == {"ip: truncated IP header": 1}


def test_skip_bad_drops_and_counts_by_reason(tmp_path, ugr_lines):
    lines = list(ugr_lines)
    bad = {5: ("sp", "70000"), 9: ("sa", "1.2.3"), 12: ("byt", "x"), 20: ("sp", "65536"),
           30: ("pr", "TPC")}
    header = HEADER.split(",")
    for line_no, (field, value) in bad.items():
        cells = lines[line_no - 1].split(",")
        cells[header.index(field)] = value
        lines[line_no - 1] = ",".join(cells)
    lines[24] += ",extra"               # line 25: one field too many
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    table, summary = read_flows(path, skip_bad=True, chunk_rows=8)
    assert summary.rows_read == 40 and summary.rows_kept == 34 == len(table)
    assert summary.skipped == {"sp: out of range": 2, "sa: is not an IPv4 address": 1,
                               "byt: is not an integer": 1, "pr: invalid value": 1,
                               "wrong number of fields": 1}
    assert any("line 5, field 'sp'" in e for e in summary.examples)
    clean = tmp_path / "clean.csv"
    keep = [0] + [i for i in range(1, 41) if i + 1 not in bad and i + 1 != 25]
    clean.write_text("\n".join(ugr_lines[i] for i in keep) + "\n")
    pd.testing.assert_frame_equal(table, read_flows(clean)[0])
    text = "\n".join(summary.lines())
    assert "rows skipped: 6" in text and "sp: out of range" in text


def test_skip_bad_line_numbers_stay_physical_after_dropped_lines(tmp_path, ugr_lines):
    lines = list(ugr_lines)
    lines[2] += ",extra"                                    # line 3 dropped by the parser
    cells = lines[6].split(",")
    cells[4] = "99999"                                       # line 7, field sp
    lines[6] = ",".join(cells)
    path = tmp_path / "shifted.csv"
    path.write_text("\n".join(lines) + "\n")
    _, summary = read_flows(path, skip_bad=True)
    assert any(e.startswith("shifted.csv line 7, field 'sp'") for e in summary.examples)


def test_netshare_bad_integer_ip_and_time_unit(tmp_path, netshare_small):
    lines = netshare_small.read_text().splitlines()[:6]
    cells = lines[3].split(",")
    cells[0] = "4294967296"
    path = tmp_path / "ns.csv"
    path.write_text("\n".join(lines[:3] + [",".join(cells)] + lines[4:]) + "\n")
    error = error_of(path)
    assert (error.line, error.field) == (4, "srcip") and "'4294967296'" in str(error)
    cells = lines[2].split(",")
    cells[5] = "1458298072364000000"                         # nanoseconds, not microseconds
    path.write_text("\n".join(lines[:2] + [",".join(cells)] + lines[3:]) + "\n")
    error = error_of(path)
    assert (error.line, error.field) == (3, "ts") and "out of range" in str(error)


def test_parquet_rows_are_named(tmp_path):
    frame = pd.DataFrame({"ts": [1.0, 2.0, 3.0], "srcip": ["1.2.3.4", "5.6.7.8", "1.2.3"],
                          "dstip": ["1.1.1.1"] * 3, "proto": [6, 17, 6]})
    path = tmp_path / "flows.parquet"
    frame.to_parquet(path)
    error = error_of(path)
    assert (error.line, error.field, error.where) == (3, "srcip", "row")
    assert str(error).startswith(f"{path} row 3, field 'srcip'")
    path.write_bytes(path.read_bytes()[:40])
    assert "Parquet" in str(error_of(path, format="canonical"))


def test_unknown_header_and_unknown_format(tmp_path):
    path = tmp_path / "odd.csv"
    path.write_text("a,b,c\n1,2,3\n")
    error = error_of(path)
    assert error.line == 1 and "--mapping" in str(error)
    assert "unknown format 'csv'" in str(error_of(path, format="csv"))
    assert "no such file" in str(error_of(tmp_path / "absent.csv"))


def test_mapping_problems_are_all_listed(tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text("columns: {ts: t, srcip: s, colour: c}\ntime_unit: hours\nheader: 'no'\n"
                    "extra: 1\n")
    with pytest.raises(IngestError) as caught:
        load_mapping(path)
    text = str(caught.value)
    for expected in ("unknown key 'extra'", "columns.colour: not a canonical field",
                     "columns.dstip: required field is not mapped",
                     "columns.proto: required field is not mapped",
                     "time_unit: 'hours' is not a unit", "header: expected true or false"):
        assert expected in text
    path.write_text("columns: [unclosed\n")
    assert "not valid YAML" in str(pytest.raises(IngestError, load_mapping, path).value)


def test_generic_without_mapping_is_refused(tmp_path, ugr_lines):
    path = tmp_path / "data.csv"
    path.write_text("\n".join(ugr_lines) + "\n")
    assert "needs a column mapping" in str(error_of(path, format="generic"))


def test_headerless_generic_line_numbers(tmp_path):
    path = tmp_path / "flows.tsv"
    path.write_text("1.5\t1.2.3.4\t5.6.7.8\tUDP\n2.5\t1.2.3.4\t5.6.7.8\tXTP\n")
    mapping = {"columns": {"ts": "t", "srcip": "s", "dstip": "d", "proto": "p"},
               "header": False, "names": ["t", "s", "d", "p"], "delimiter": "\t"}
    error = error_of(path, mapping=mapping)
    assert (error.line, error.field) == (2, "p")
    table, _ = read_flows(path, mapping=mapping, skip_bad=True)
    assert table["proto"].tolist() == [17] and np.isclose(table["ts"].iloc[0], 1.5)
