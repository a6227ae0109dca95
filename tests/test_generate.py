"""``flowdiff generate`` with the packaged default model: every output extension is written
in full and reads back through ``read_flows`` (count, contiguous seq per stream, and the same
records whatever the format)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from flowdiff import schema
from flowdiff.cli import main
from flowdiff.ingest import iter_flow_chunks, read_flows

RECORDS = 300
STREAMS = 2
START_TS = 1_460_390_400.0
EXTENSIONS = (".jsonl", ".csv", ".csv.gz", ".parquet")


def generate(out, *extra: str) -> int:
    return main(["generate", "--records", str(RECORDS), "--streams", str(STREAMS),
                 "--seed", "3", "--steps", "4", "--start-ts", str(START_TS),
                 "--out", str(out), *extra])


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("generate")
    paths = {ext: directory / f"flows{ext}" for ext in EXTENSIONS}
    errors = ErrorLog()
    logging.getLogger("flowdiff").addHandler(errors)
    try:
        codes = {ext: generate(path) for ext, path in paths.items()}
    finally:
        logging.getLogger("flowdiff").removeHandler(errors)
    assert errors.messages == []  # e.g. "exporter out: 64 records lost: ..."
    return paths, codes


class ErrorLog(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("ext", EXTENSIONS)
def test_generate_writes_every_record(outputs, ext, capsys):
    paths, codes = outputs
    assert codes[ext] == 0
    table, summary = read_flows(paths[ext])
    assert summary.format == ("jsonl" if ext == ".jsonl" else "canonical")
    assert len(table) == RECORDS and summary.rows_skipped == 0
    assert set(schema.REQUIRED + schema.OUTPUT_COLUMNS) <= set(table.columns)
    for stream, group in table.groupby("stream_id"):
        seq = np.sort(group["seq"].to_numpy())
        assert seq.tolist() == list(range(len(seq))), f"stream {stream}: seq not contiguous"
    assert sorted(table["stream_id"].unique().tolist()) == list(range(STREAMS))


def test_every_format_holds_the_same_records(outputs):
    paths, _codes = outputs
    key = ["stream_id", "seq"]
    tables = {ext: read_flows(path)[0].sort_values(key).reset_index(drop=True)
              for ext, path in paths.items()}
    reference = tables[".parquet"]
    assert reference["ts"].min() >= START_TS
    for ext, table in tables.items():
        pd.testing.assert_frame_equal(table, reference, obj=ext)


def test_stream_order_is_kept_in_the_file(outputs):
    """The file lists each stream's records in seq order (chunks come in file order)."""
    paths, _codes = outputs
    for ext in (".jsonl", ".csv"):
        table = pd.concat(list(iter_flow_chunks(paths[ext])), ignore_index=True)
        for _stream, group in table.groupby("stream_id", sort=False):
            assert group["seq"].is_monotonic_increasing


def test_bad_output_name_is_refused(tmp_path, capsys):
    assert generate(tmp_path / "flows.txt") == 2
    assert "expected a name ending in .jsonl" in capsys.readouterr().err
    assert not (tmp_path / "flows.txt").exists()


def test_bad_option_values_are_named_by_the_config_engine(tmp_path, capsys):
    out = tmp_path / "flows.jsonl"
    assert main(["generate", "--records", "0", "--streams", "0", "--steps", "0", "--seed", "-1",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    for message in ("command line --records: serve.max_records: expected a value >= 1, got 0",
                    "command line --streams: serve.streams: expected a value >= 1",
                    "command line --steps: serve.sampler.steps: expected a value >= 1, got 0",
                    "command line --seed: serve.seed: expected a value >= 0, got -1"):
        assert message in err, err
    assert not out.exists()
