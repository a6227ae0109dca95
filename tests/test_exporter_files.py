"""File exporter: every format written, rotated, read back; write failures on a real tiny
filesystem leave completed files intact."""

from __future__ import annotations

import gzip
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flowdiff.exporters.base import ExporterError
from flowdiff.exporters.files import CONFIG, EXPORTER
from flowdiff.ingest import read_flows
from conftest import fill_fs
from realtools import synthetic_records, ugr16_records


def write_batches(exporter, batches) -> int:
    n = sum(exporter.submit(b) for b in batches)
    exporter.close()
    return n


def read_jsonl(path: Path) -> pd.DataFrame:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as f:
        return pd.DataFrame([json.loads(line) for line in f])


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="rotate_records: expected a value > 0"):
        CONFIG(rotate_records=0)
    with pytest.raises(ValueError, match="gzip_level: expected 1..9"):
        CONFIG(gzip_level=11)
    assert CONFIG().check() == []


@pytest.mark.parametrize("fmt,gz", [("csv", False), ("csv", True), ("parquet", False),
                                    ("parquet", True)])
def test_canonical_formats_rotate_by_records_and_read_back_exactly(tmp_path, fmt, gz):
    batches = [synthetic_records(300, seed=i, start_seq=i * 100) for i in range(4)]
    exporter = EXPORTER("f", CONFIG(directory=str(tmp_path), format=fmt, gzip=gz,
                                    rotate_records=250, rotate_seconds=None))
    assert write_batches(exporter, batches) == 1200
    files = sorted(tmp_path.iterdir())
    assert files == exporter.completed and len(files) == 5        # 250 * 4 + 200
    assert not list(tmp_path.glob("*.part"))
    suffix = {"csv": ".csv", "parquet": ".parquet"}[fmt] + (".gz" if gz and fmt == "csv" else "")
    assert all(f.name.endswith(suffix) for f in files)
    tables = [read_flows(f)[0] for f in files]
    assert [len(t) for t in tables] == [250, 250, 250, 250, 200]
    expected = pd.concat(batches, ignore_index=True)
    got = pd.concat(tables, ignore_index=True)
    # read_flows sorts each file by ts; compare as sets of records keyed by (stream_id, seq)
    got = got.sort_values(["stream_id", "seq"], kind="stable").reset_index(drop=True)
    expected = expected.sort_values(["stream_id", "seq"], kind="stable").reset_index(drop=True)
    for column in ("srcip", "dstip", "srcport", "dstport", "proto", "pkt", "byt", "flags", "label"):
        assert (got[column].to_numpy() == expected[column].to_numpy()).all(), column
    np.testing.assert_allclose(got["ts"], expected["ts"], rtol=0, atol=1e-6)


def test_jsonl_rotates_by_size_and_reads_back(tmp_path):
    batches = [synthetic_records(200, seed=i, start_seq=i * 67) for i in range(5)]
    exporter = EXPORTER("f", CONFIG(directory=str(tmp_path), format="jsonl", gzip=True,
                                    rotate_records=None, rotate_bytes=20_000, rotate_seconds=None))
    assert write_batches(exporter, batches) == 1000
    files = sorted(tmp_path.iterdir())
    assert len(files) >= 2 and all(f.name.endswith(".jsonl.gz") for f in files)
    back = pd.concat([read_jsonl(f) for f in files], ignore_index=True)
    assert len(back) == 1000
    assert back["srcip"].iloc[0] == "10.0.0.0"
    assert set(zip(back["stream_id"], back["seq"])) == set(
        zip(pd.concat(batches)["stream_id"], pd.concat(batches)["seq"]))


def test_ugr16_layout_is_read_by_the_ugr16_reader(tmp_path, ugr16_sample):
    source = ugr16_records(ugr16_sample, 2000)
    for header in (True, False):
        out = tmp_path / f"header-{header}"
        exporter = EXPORTER("f", CONFIG(directory=str(out), format="ugr16", header=header,
                                        rotate_records=700, rotate_seconds=None))
        assert write_batches(exporter, [source.iloc[:1000], source.iloc[1000:]]) == 2000
        files = sorted(out.iterdir())
        assert len(files) == 3
        first = files[0].read_text().splitlines()[0]
        assert (first == "te,td,sa,da,sp,dp,pr,flg,fwd,stos,pkt,byt,label") == header
        back = pd.concat([read_flows(f)[0] for f in files], ignore_index=True)
        assert len(back) == 2000
        key = ["srcip", "dstip", "srcport", "dstport", "proto", "pkt", "byt", "flags", "tos"]
        left = back[key].sort_values(key).reset_index(drop=True)
        right = source[key].sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(left, right, check_dtype=False)
        # te is whole seconds (as in UGR'16 itself): start times agree within 1 s
        assert abs(np.sort(back["ts"] + back["td"]) - np.sort(source["ts"] + source["td"])).max() < 1.0


def test_ugr16_layout_without_labels_writes_twelve_columns_that_read_back(tmp_path, ugr16_sample):
    source = ugr16_records(ugr16_sample, 300).drop(columns="label")
    for header in (True, False):
        out = tmp_path / f"header-{header}"
        exporter = EXPORTER("f", CONFIG(directory=str(out), format="ugr16", header=header))
        assert write_batches(exporter, [source]) == 300
        (path,) = sorted(out.iterdir())
        first = path.read_text().splitlines()[0]
        assert first.count(",") == 11
        assert (first == "te,td,sa,da,sp,dp,pr,flg,fwd,stos,pkt,byt") == header
        back = read_flows(path)[0]
        assert len(back) == 300
        assert "label" not in back or back["label"].isna().all()
        np.testing.assert_array_equal(back["byt"].to_numpy(), source["byt"].to_numpy())


def test_rotation_by_time(tmp_path):
    exporter = EXPORTER("f", CONFIG(directory=str(tmp_path), format="csv", rotate_records=None,
                                    rotate_seconds=0.3))
    exporter.submit(synthetic_records(10, seed=1))
    time.sleep(0.35)
    exporter.flush()  # an idle file is completed once it is old enough
    assert len(exporter.completed) == 1
    exporter.submit(synthetic_records(10, seed=2, start_seq=4))
    time.sleep(0.35)
    exporter.submit(synthetic_records(10, seed=3, start_seq=8))  # rotates before writing
    exporter.close()
    files = sorted(tmp_path.iterdir())
    assert [len(read_flows(f)[0]) for f in files] == [10, 10, 10]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_disk_full_fails_loudly_and_completed_files_stay_intact(tiny_fs, fmt):
    exporter = EXPORTER("f", CONFIG(directory=str(tiny_fs), format=fmt, rotate_records=500,
                                    rotate_seconds=None))
    with pytest.raises(ExporterError) as caught:
        for i in range(200):
            exporter.submit(synthetic_records(250, seed=i, start_seq=i * 84))
    message = str(caught.value)
    assert not exporter.healthy
    assert message.startswith("file exporter f: cannot ")
    assert str(tiny_fs) in message and ".part" in message and "No space left" in message
    completed = exporter.completed
    assert completed, "some files should have completed before the disk filled"
    for path in completed:
        table, _ = read_flows(path)   # each completed file is whole and readable
        assert len(table) == 500


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_disk_full_retry_after_space_is_freed_loses_and_repeats_nothing(tiny_fs, fmt):
    """The fan-out retries a failed batch (same object) under ``block``: after space is
    freed, every record is in a completed file exactly once and no .part is left."""
    filler = fill_fs(tiny_fs, leave=24_000)
    out = tiny_fs / "out"
    exporter = EXPORTER("f", CONFIG(directory=str(out), format=fmt, rotate_records=120,
                                    rotate_seconds=None))
    batches = [synthetic_records(50, seed=i, start_seq=i * 17) for i in range(12)]
    failures = 0
    for i, batch in enumerate(batches):
        while True:
            try:
                exporter.submit(batch)
                break
            except ExporterError as exc:
                failures += 1
                assert "No space left" in str(exc)
                assert not exporter.healthy
                assert not [p for p in out.glob("*.part") if p.stat().st_size == 0]
                filler.unlink(missing_ok=True)  # the operator frees space; the retry follows
    exporter.close()
    assert failures >= 1, "the disk never filled: the test did not test anything"
    assert exporter.healthy
    assert not list(out.glob("*.part"))
    files = sorted(out.iterdir())
    got = pd.concat([read_flows(f)[0] for f in files], ignore_index=True)
    want = pd.concat(batches, ignore_index=True)
    key = ["stream_id", "seq"]
    assert len(got) == len(want) and not got.duplicated(key).any()
    pd.testing.assert_frame_equal(got.sort_values(key, ignore_index=True)[key + ["srcip"]],
                                  want.sort_values(key, ignore_index=True)[key + ["srcip"]],
                                  check_dtype=False)


def test_disk_full_leaves_no_empty_part_file(tiny_fs):
    fill_fs(tiny_fs, leave=0)
    exporter = EXPORTER("f", CONFIG(directory=str(tiny_fs), format="parquet"))
    for attempt in range(5):
        with pytest.raises(ExporterError, match="No space left"):
            exporter.submit(synthetic_records(200, seed=attempt))
    assert not list(tiny_fs.glob("*.part"))


@pytest.mark.slow
def test_serve_on_a_full_disk_under_block_waits_and_loses_nothing(tiny_fs, tiny_model):
    """The real daemon writing CSV files to a full tmpfs: /readyz says why, generation waits,
    and once space is freed every record of every stream is in a completed file, once."""
    import re
    import signal
    import sys

    from realtools import free_port, http_get

    repo = Path(__file__).resolve().parents[1]
    filler = fill_fs(tiny_fs, leave=20_000)
    out, port = tiny_fs / "out", free_port()
    config = tiny_fs.parent / "serve.yaml"
    config.write_text(f"""
serve: {{model: {tiny_model}, streams: 2, seed: 1, pace: fast, threads: 1,
         sampler: {{kind: replacement, steps: 2}}, shutdown_timeout: 20}}
metrics: {{listen: '127.0.0.1:{port}'}}
exporters:
  - {{kind: file, directory: {out}, format: csv, rotate_records: 64, rotate_seconds: null,
     policy: block, queue: 2}}
""")
    base = f"http://127.0.0.1:{port}"

    def turns() -> float:
        text = http_get(base + "/metrics")[1]
        return float(re.search(r"^flowdiff_turns_total (\S+)$", text, re.M).group(1))

    def wait(predicate, what: str, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")

    proc = subprocess.Popen([sys.executable, "-m", "flowdiff", "serve", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=repo)
    try:
        wait(lambda: "No space left" in http_get(base + "/readyz")[1],
             "/readyz to report the full disk")
        status, reason = http_get(base + "/readyz")
        assert status == 503 and "retrying" in reason, reason
        time.sleep(1.0)  # the turns already under way fill the queue (2 batches), then stop
        stalled = turns()
        time.sleep(1.5)
        assert turns() == stalled, "generation must wait while the sink cannot write"
        assert proc.poll() is None
        filler.unlink()
        wait(lambda: http_get(base + "/readyz")[0] == 200, "/readyz to recover")
        wait(lambda: turns() >= stalled + 5, "generation to go on")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    generated = int(re.search(r"stopped after \d+ turns, (\d+) records", stderr).group(1))
    assert not list(out.glob("*.part")), stderr[-2000:]
    got = pd.concat([read_flows(f)[0] for f in sorted(out.iterdir())], ignore_index=True)
    assert len(got) == generated
    for stream, part in got.groupby("stream_id"):
        np.testing.assert_array_equal(np.sort(part["seq"].to_numpy()), np.arange(len(part)))


def test_unwritable_directory_names_the_path(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output directory should be")
    exporter = EXPORTER("f", CONFIG(directory=str(blocker / "sub"), format="csv"))
    with pytest.raises(ExporterError, match=rf"cannot create {blocker}/sub"):
        exporter.submit(synthetic_records(5, seed=1))


def test_text_columns_agree_with_schema_to_text():
    from flowdiff.exporters.files import text_columns
    from flowdiff.schema import conform, to_text

    batch = synthetic_records(300, seed=4)
    expected = to_text(conform(batch))
    got = text_columns(batch)
    assert list(got) == list(expected.columns)
    for name, values in got.items():
        assert list(values) == list(expected[name].to_numpy()), name


def test_labels_needing_quotes_round_trip(tmp_path):
    batch = synthetic_records(20, seed=6)
    batch["label"] = ['spam, "bulk"'] * 10 + ["background"] * 10
    exporter = EXPORTER("f", CONFIG(directory=str(tmp_path), format="csv", rotate_seconds=None))
    write_batches(exporter, [batch])
    back = read_flows(exporter.completed[0])[0]
    assert sorted(back["label"]) == sorted(batch["label"])
