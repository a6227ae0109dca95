"""JSON lines ingest, and every output format flowdiff writes reading back through
``read_flows`` with format auto-detection (real UGR'16 records, the real file exporter)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flowdiff import schema
from flowdiff.exporters.files import CONFIG, EXPORTER
from flowdiff.exporters.stdout import write_json_lines
from flowdiff.ingest import IngestError, iter_flow_chunks, read_flows

N = 600
GOOD = {"ts": 1460332800.25, "srcip": "42.219.153.7", "dstip": "10.0.0.1", "proto": 6}


@pytest.fixture
def records(ugr16_sample) -> pd.DataFrame:
    """N real UGR'16 records as generated output: with ``stream_id`` and ``seq``."""
    table, _ = read_flows(ugr16_sample)
    table = table.iloc[:N].reset_index(drop=True)
    return schema.conform(table.assign(stream_id=np.arange(N, dtype=np.int32) % 3,
                                       seq=np.arange(N) // 3))


def write_lines(path: Path, lines: list[str]) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path


def export(records: pd.DataFrame, directory: Path, fmt: str, gzip_output: bool) -> Path:
    """Write ``records`` with the real file exporter in 3 batches; the one completed file."""
    exporter = EXPORTER("files", CONFIG(directory=str(directory), format=fmt, gzip=gzip_output,
                                        rotate_records=None, rotate_seconds=None,
                                        fsync=False))
    for batch in np.array_split(np.arange(len(records)), 3):
        exporter.submit(records.iloc[batch])
    exporter.close()
    (path,) = exporter.completed
    return path


def test_generate_style_jsonl_reads_back_exactly(records, tmp_path):
    path = tmp_path / "stream.jsonl"
    with open(path, "w") as out:
        write_json_lines(records, out)
    table, summary = read_flows(path)
    assert summary.format == "jsonl"
    assert summary.rows_read == summary.rows_kept == N
    pd.testing.assert_frame_equal(table, records.sort_values("ts", kind="stable")
                                  .reset_index(drop=True))
    assert list(table.columns) == list(schema.COLUMNS + schema.OUTPUT_COLUMNS)


def test_jsonl_detected_by_content_and_gzip(records, tmp_path):
    text = tmp_path / "stdout-capture.txt"  # no telling extension: the first line decides
    with open(text, "w") as out:
        write_json_lines(records, out)
    zipped = tmp_path / "stream.jsonl.gz"
    zipped.write_bytes(gzip.compress(text.read_bytes()))
    for path in (text, zipped):
        table, summary = read_flows(path)
        assert summary.format == "jsonl" and len(table) == N
        assert table["seq"].to_numpy().tolist() == records.sort_values(
            "ts", kind="stable")["seq"].tolist()


def test_jsonl_chunks_keep_file_order_and_extra_keys_are_ignored(tmp_path):
    lines = [json.dumps({**GOOD, "ts": 100.0 - i, "stream_id": 0, "seq": i,
                         "generator_version": "0.1.0"}) for i in range(7)]
    path = write_lines(tmp_path / "a.jsonl", lines)
    chunks = list(iter_flow_chunks(path, chunk_rows=3))
    assert [len(c) for c in chunks] == [3, 3, 1]
    assert pd.concat(chunks)["seq"].tolist() == list(range(7))
    table, summary = read_flows(path)
    assert table["seq"].tolist() == list(range(7))[::-1]  # sorted by ts
    assert summary.ignored_columns == ["generator_version"]


def test_jsonl_lenient_forms_and_missing_optional_fields(tmp_path):
    path = write_lines(tmp_path / "b.jsonl", [
        json.dumps({"ts": 5, "srcip": 16909060, "dstip": "5.6.7.8", "proto": "UDP",
                    "flags": 27}),
        json.dumps({"ts": 6.5, "srcip": "1.2.3.4", "dstip": 84281096, "proto": 17,
                    "flags": ".AP.SF"})])
    table, _ = read_flows(path)
    assert list(table.columns) == ["ts", "srcip", "dstip", "proto", "flags"]
    assert table["srcip"].tolist() == [16909060] * 2
    assert table["dstip"].tolist() == [84281096] * 2
    assert table["proto"].tolist() == [17, 17] and table["flags"].tolist() == [27, 27]


@pytest.mark.parametrize("name, lines, message", [
    ("bad_ip.jsonl", [GOOD, {**GOOD, "srcip": "1.2.3.999"}],
     r"bad_ip.jsonl line 2, field 'srcip': '1.2.3.999' is not an IPv4 address"),
    ("bad_port.jsonl", [{**GOOD, "srcport": 1}, {**GOOD, "srcport": 1}, {**GOOD, "srcport": 70000}],
     r"bad_port.jsonl line 3, field 'srcport': port 70000 out of range 0..65535"),
    ("type_change.jsonl", [GOOD, {**GOOD, "ts": "yesterday"}],
     r"type_change.jsonl line 2, field 'ts': 'yesterday' is not a number"),
    ("not_json.jsonl", [GOOD, '{"ts": 1, "srcip": '],
     r"not_json.jsonl line 2: not valid JSON \(.*\): expected a JSON object"),
    ("list.jsonl", [GOOD, [1, 2]], r"list.jsonl line 2: a JSON list, not an object"),
    ("blank.jsonl", [GOOD, "", GOOD], r"blank.jsonl line 2: empty line: expected a flow record"),
    ("no_proto.jsonl", [{k: v for k, v in GOOD.items() if k != "proto"}],
     r"no_proto.jsonl line 1, field 'proto': missing field 'proto'"),
    ("lost_field.jsonl", [GOOD, {k: v for k, v in GOOD.items() if k != "dstip"}],
     r"lost_field.jsonl line 2, field 'dstip': missing value"),
    ("bad_proto.jsonl.gz", [GOOD, GOOD, {**GOOD, "proto": "TPC"}],
     r"bad_proto.jsonl.gz line 3, field 'proto': unknown protocol 'TPC'"),
    ("empty.jsonl", ["", ""], r"empty.jsonl line 1: file is empty"),
])
def test_jsonl_errors_name_file_line_and_field(tmp_path, name, lines, message):
    path = write_lines(tmp_path / name, [line if isinstance(line, str) else json.dumps(line)
                                         for line in lines])
    with pytest.raises(IngestError, match=message):
        read_flows(path)


def test_jsonl_skip_bad_counts_each_reason(tmp_path):
    path = write_lines(tmp_path / "mixed.jsonl", [
        json.dumps(GOOD), "{broken", "", json.dumps({**GOOD, "dstip": "300.1.1.1"}),
        json.dumps({**GOOD, "ts": 7.0})])
    table, summary = read_flows(path, skip_bad=True)
    assert table["ts"].tolist() == [7.0, GOOD["ts"]]
    assert summary.rows_read == 5 and summary.rows_kept == 2
    assert dict(summary.skipped) == {"not a JSON object": 1, "empty line": 1,
                                     "dstip: is not an IPv4 address": 1}
    assert any("mixed.jsonl line 4, field 'dstip'" in e for e in summary.examples)


def test_truncated_gzip_jsonl_names_the_line(records, tmp_path):
    text = "".join(json.dumps(r) + "\n" for r in schema.to_json_records(records))
    whole = gzip.compress(text.encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(IngestError, match=r"cut.jsonl.gz line \d+: truncated gzip stream"):
        read_flows(path)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
@pytest.mark.parametrize("gzip_output", [False, True])
def test_file_exporter_output_reads_back(records, tmp_path, fmt, gzip_output):
    path = export(records, tmp_path, fmt, gzip_output)
    table, summary = read_flows(path)
    assert summary.format == ("jsonl" if fmt == "jsonl" else "canonical")
    expected = records.sort_values("ts", kind="stable").reset_index(drop=True)
    if fmt == "jsonl":  # JSON lines carry times with microsecond precision
        np.testing.assert_allclose(table["ts"], expected["ts"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(table["td"], expected["td"], rtol=0, atol=1e-6)
        table = table.drop(columns=["ts", "td"])
        expected = expected.drop(columns=["ts", "td"])
    pd.testing.assert_frame_equal(table, expected)


@pytest.mark.parametrize("gzip_output", [False, True])
@pytest.mark.parametrize("header", [True, False])
def test_file_exporter_ugr16_layout_reads_back(records, tmp_path, gzip_output, header):
    exporter = EXPORTER("files", CONFIG(directory=str(tmp_path), format="ugr16", header=header,
                                        gzip=gzip_output, rotate_records=None,
                                        rotate_seconds=None, fsync=False))
    exporter.submit(records)
    exporter.close()
    (path,) = exporter.completed
    table, summary = read_flows(path)
    assert summary.format == "ugr16" and len(table) == N
    by_tuple = ["srcip", "dstip", "srcport", "dstport", "proto", "pkt", "byt", "flags", "tos",
                "label"]
    got = table.sort_values(by_tuple + ["ts"], kind="stable").reset_index(drop=True)
    want = records.sort_values(by_tuple + ["ts"], kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(got[by_tuple + ["td"]], want[by_tuple + ["td"]])
    # the layout keeps the END time in whole seconds: start = te - td, within a second
    end_got = got["ts"] + got["td"]
    end_want = want["ts"] + want["td"]
    assert ((end_want - end_got) >= -1e-6).all() and ((end_want - end_got) < 1).all()
