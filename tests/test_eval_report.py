"""The eval command end to end on real UGR'16 records: report files, side-by-side columns,
and clear errors on unusable inputs."""

from __future__ import annotations

import argparse
import gzip
import json
import logging

import numpy as np
import pandas as pd
import pytest

from flowdiff import schema
from flowdiff.commands import eval as eval_command
from flowdiff.eval import EvalConfig, EvalInputError, evaluate, read_table, write_report
from flowdiff.eval.discriminative import DiscriminativeConfig
from flowdiff.ingest import write_flows

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_eval(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    eval_command.register(parser.add_subparsers())
    args = parser.parse_args(["eval", *argv])
    return args.func(args)


@pytest.fixture
def halves(ugr16_sample, tmp_path):
    """The 20k UGR'16 sample split into an earlier and a later half, as CSV files in UGR'16's
    own format, plus a shuffled copy of the later half as a canonical CSV: records in random
    order, start times left in place (readers sort by start time, so shuffling the rows of
    the file alone would be undone)."""
    raw = pd.read_csv(ugr16_sample, dtype=str, keep_default_na=False)
    paths = {"earlier": tmp_path / "earlier.csv", "later_ugr16": tmp_path / "later_ugr.csv",
             "later": tmp_path / "later.csv", "shuffled": tmp_path / "shuffled.csv"}
    raw.iloc[:10_000].to_csv(paths["earlier"], index=False)
    raw.iloc[10_000:].to_csv(paths["later_ugr16"], index=False)
    later = read_table(paths["later_ugr16"])
    shuffled = later.sample(frac=1.0, random_state=0).reset_index(drop=True)
    shuffled["ts"] = later["ts"].to_numpy()
    write_flows(later, paths["later"])
    write_flows(shuffled, paths["shuffled"])
    return paths


def test_read_table_parses_ugr16(ugr16_sample):
    table = read_table(ugr16_sample)
    assert len(table) == 20_000
    assert (np.diff(table["ts"].to_numpy()) >= 0).all()
    assert table["srcip"].dtype == np.uint32 and table["proto"].dtype == np.uint8
    first = pd.read_csv(ugr16_sample, nrows=1)
    assert first["pr"].iloc[0] in schema.PROTO_NUMBERS


@pytest.mark.slow
def test_cli_writes_report_with_one_column_per_synthetic(halves, tmp_path, capsys):
    out = tmp_path / "report"
    rc = run_eval(["--real", str(halves["later"]),
                   "--synthetic", f"earlier={halves['earlier']}",
                   "--synthetic", f"shuffled={halves['shuffled']}",
                   "--out", str(out), "--segment-records", "5000", "--window", "25"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["synthetics"]) == {"earlier", "shuffled"}
    earlier, shuf = (metrics["synthetics"][n]["headline"] for n in ("earlier", "shuffled"))
    # a shuffled copy of the real trace has its marginals exactly, not its time structure
    assert shuf["jsd_mean"] == pytest.approx(0.0, abs=1e-12)
    assert shuf["emd_sf_td"] == pytest.approx(0.0, abs=1e-12)
    assert shuf["dependence_error"] > 3 * earlier["dependence_error"]
    assert len(metrics["synthetics"]["earlier"]["drift"]["segments"]) == 2
    summary = (out / "summary.md").read_text()
    assert "| metric | earlier | shuffled |" in summary
    assert "| dependence_error |" in summary
    assert "<th>shuffled</th>" in (out / "summary.html").read_text()
    for name in ("cdf_td.png", "cdf_pkt.png", "cdf_byt.png", "cdf_iat.png", "top_dstport.png",
                 "top_proto.png", "ip_rank_frequency.png", "flows_per_second.png", "drift.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
        assert f"]({name})" in summary
    assert "| jsd_mean |" in capsys.readouterr().out


def test_evaluate_identical_traces_scores_zero(ugr16_sample, tmp_path):
    real = read_table(ugr16_sample).iloc[:6000].reset_index(drop=True)
    config = EvalConfig(segment_records=3000, discriminative=DiscriminativeConfig(window=20))
    result = evaluate(real, {"copy": real.copy()}, config)
    row = result["synthetics"]["copy"]["headline"]
    for key in ("jsd_mean", "emd_ts", "emd_sf_max", "correlation_diff", "dependence_error",
                "host_pair_error", "fps_acf_diff", "discriminative"):
        assert row[key] == pytest.approx(0.0, abs=1e-12), key
    assert row["violation_fraction"] == result["real"]["validity"]["violation_fraction"]
    files = write_report(result, real, {"copy": real}, tmp_path / "r", plots=False)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == \
        ["metrics.json", "summary.html", "summary.md"]
    assert set(files) == {"json", "markdown", "html"}


def test_error_on_empty_trace(halves, tmp_path, caplog):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with caplog.at_level(logging.ERROR):
        rc = run_eval(["--real", str(halves["later"]), "--synthetic", str(empty),
                       "--out", str(tmp_path / "r")])
    assert rc == 2
    assert "empty.csv" in caplog.text
    header_only = tmp_path / "header.csv"
    header_only.write_text("ts,srcip,dstip,proto\n")
    with pytest.raises(ValueError, match=r"header\.csv.*(no records|empty)"):
        read_table(header_only)
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_error_names_file_line_and_field(halves, tmp_path):
    lines = halves["later_ugr16"].read_text().splitlines()
    fields = lines[3].split(",")
    fields[2] = "300.1.2.3"
    lines[3] = ",".join(fields)
    bad = tmp_path / "bad_ip.csv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"bad_ip\.csv.*line 4.*'sa'.*300\.1\.2\.3"):
        read_table(bad)


def test_error_on_mismatched_fields(ugr16_sample, tmp_path):
    real = read_table(ugr16_sample).iloc[:2000].reset_index(drop=True)
    no_sizes = real.drop(columns=["pkt", "byt"])
    with pytest.raises(EvalInputError, match=r"'thin' lacks field\(s\) \['pkt', 'byt'\]"):
        evaluate(real, {"thin": no_sizes})
    with pytest.raises(EvalInputError, match="no synthetic trace"):
        evaluate(real, {})
    with pytest.raises(EvalInputError, match="'none'.*no records"):
        evaluate(real, {"none": real.iloc[:0]})
    other = tmp_path / "other.csv"
    other.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match=r"other\.csv"):
        read_table(other)
    with pytest.raises(EvalInputError, match=r"missing\.csv: no such file"):
        read_table(tmp_path / "missing.csv")


def test_cli_rejects_repeated_names(halves, tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        rc = run_eval(["--real", str(halves["later"]), "--synthetic", f"a={halves['earlier']}",
                       "--synthetic", f"a={halves['shuffled']}", "--out", str(tmp_path)])
    assert rc == 2 and "repeated: ['a']" in caplog.text


def test_reads_gzip_ugr16_and_canonical_csv(ugr16_sample, tmp_path):
    gz = tmp_path / "sample.csv.gz"
    with gzip.open(gz, "wt") as handle:
        handle.write("".join(open(ugr16_sample).readlines()[:501]))
    table = read_table(gz)
    assert len(table) == 500
    canonical = tmp_path / "canonical.csv"
    write_flows(table, canonical)
    pd.testing.assert_frame_equal(read_table(canonical), table)
