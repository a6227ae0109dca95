"""``flowdiff codec fit|encode|decode|check`` end to end on a real UGR'16 slice, in a
subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flowdiff.ingest import read_flows

REPO = Path(__file__).resolve().parents[1]


def flowdiff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowdiff", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def trace(ugr16_sample, tmp_path) -> Path:
    """The first 3,000 records of the UGR'16 sample (keeps the three processes quick)."""
    lines = ugr16_sample.read_text().splitlines(keepends=True)[:3001]
    path = tmp_path / "ugr16_3k.csv"
    path.write_text("".join(lines))
    return path


@pytest.mark.slow
def test_fit_encode_decode_round_trip(trace, tmp_path):
    codec_dir, x_path, out = tmp_path / "codec", tmp_path / "x.npy", tmp_path / "flows.csv"
    fit = flowdiff("codec", "fit", "--data", str(trace), "--config",
                   "configs/codec-default.yaml", "--out", str(codec_dir))
    assert fit.returncode == 0, fit.stderr
    assert "codec fitted on 3000 records" in fit.stdout and "srcport  word2vec" in fit.stdout

    encode = flowdiff("codec", "encode", "--codec", str(codec_dir), "--data", str(trace),
                      "--out", str(x_path))
    assert encode.returncode == 0, encode.stderr
    x = np.load(x_path)
    state = json.loads((codec_dir / "codec.json").read_text())
    assert x.dtype == np.float32 and x.shape == (3000, sum(f["width"] for f in state["fields"]))

    table, _ = read_flows(trace)
    start = f"{table['ts'].iloc[0]:.3f}"
    decode = flowdiff("codec", "decode", "--codec", str(codec_dir), "--input", str(x_path),
                      "--start-ts", start, "--out", str(out))
    assert decode.returncode == 0, decode.stderr
    assert "repairs: 0" in decode.stdout
    back, _ = read_flows(out)
    for name in ("srcip", "dstip", "srcport", "dstport", "proto", "pkt", "flags", "tos",
                 "label"):
        np.testing.assert_array_equal(back[name].to_numpy(), table[name].to_numpy(), name)
    np.testing.assert_allclose(back["ts"], table["ts"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(back["byt"], table["byt"])  # quantile: exact


@pytest.mark.slow
def test_check_prints_the_table_and_writes_json(trace, tmp_path):
    codec_dir, report = tmp_path / "codec", tmp_path / "check.json"
    assert flowdiff("codec", "fit", "--data", str(trace), "--out", str(codec_dir)).returncode == 0
    check = flowdiff("codec", "check", "--codec", str(codec_dir), "--data", str(trace),
                     "--noise", "0,0.05", "--records", "2000", "--json", str(report))
    assert check.returncode == 0, check.stderr
    assert "| metric | real | noise 0 | noise 0.05 | blend 50/50 |" in check.stdout
    rows = json.loads(report.read_text())
    assert [r["noise"] for r in rows] == ["real", 0.0, 0.05, "blend"]
    assert rows[1]["jsd_srcport"] == 0.0 and rows[1]["repeat_dstip"] == rows[0]["repeat_dstip"]
    assert rows[2]["emd_sf_byt"] > 0.0                 # the noise does reach the decoder
    bad = flowdiff("codec", "check", "--codec", str(codec_dir), "--data", str(trace),
                   "--noise", "0,-1")
    assert bad.returncode == 2 and "--noise: expected numbers >= 0" in bad.stderr


def test_bad_config_is_reported_with_the_file_and_field(trace, tmp_path):
    config = tmp_path / "codec.yaml"
    config.write_text("codec:\n  fields:\n    srcport: onehot\n")
    result = flowdiff("codec", "fit", "--data", str(trace), "--config", str(config),
                      "--out", str(tmp_path / "c"))
    assert result.returncode == 2
    assert str(config) in result.stderr
    assert "fields.srcport: transform 'onehot' not allowed" in result.stderr


def test_codec_of_another_version_exits_with_a_clear_message(tmp_path):
    (tmp_path / "codec.json").write_text(json.dumps({"format": "flowdiff-codec", "version": 7}))
    np.save(tmp_path / "x.npy", np.zeros((2, 3), dtype=np.float32))
    result = flowdiff("codec", "decode", "--codec", str(tmp_path), "--input",
                      str(tmp_path / "x.npy"), "--start-ts", "0", "--out",
                      str(tmp_path / "f.csv"))
    assert result.returncode == 3
    assert "codec format version 7" in result.stderr and "reads versions [1, 2]" in result.stderr
    assert "refit the codec" in result.stderr
