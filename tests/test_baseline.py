"""Reference generators: iid marginals and CTGAN, trained on real UGR'16 records."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest

from flowdiff.baselines import BaselineError
from flowdiff.baselines.iid import sample_iid
from flowdiff.commands import baseline as baseline_command
from flowdiff.eval import read_table
from flowdiff.eval import marginals, temporal


def run_baseline(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    baseline_command.register(parser.add_subparsers())
    args = parser.parse_args(["baseline", *argv])
    return args.func(args)


@pytest.fixture
def train(ugr16_sample):
    return read_table(ugr16_sample)


def test_iid_keeps_marginals_and_loses_dependence(train):
    out = sample_iid(train, 20_000, seed=1)
    assert list(out.columns) == list(train.columns)
    assert (out.dtypes == train.dtypes).all()
    assert (np.diff(out["ts"].to_numpy()) >= 0).all()
    assert marginals.jsd_categorical(train["proto"], out["proto"]) < 0.005
    # many ports are seen once: resampling them scatters a little mass (real halves: ~0.3)
    assert marginals.jsd_categorical(train["dstport"], out["dstport"]) < 0.1
    assert marginals.emd_scale_free(train["byt"], out["byt"]) < 0.02
    gaps = np.diff(train["ts"].to_numpy())
    assert set(np.round(np.diff(out["ts"].to_numpy()), 6)) <= set(np.round(gaps, 6))
    real_rate = temporal.dependence_rates(train, 10)["dstip"]["lag1"]
    iid_rate = temporal.dependence_rates(out, 10)["dstip"]["lag1"]
    assert real_rate > 0.1 and iid_rate < real_rate / 2


def test_iid_is_seeded(train):
    pd.testing.assert_frame_equal(sample_iid(train, 500, seed=3), sample_iid(train, 500, seed=3))
    assert not sample_iid(train, 500, seed=3).equals(sample_iid(train, 500, seed=4))
    with pytest.raises(BaselineError, match="at least 2 training records"):
        sample_iid(train.iloc[:1], 10, seed=0)


def test_cli_iid_writes_a_file_eval_reads(ugr16_sample, tmp_path, capsys):
    out = tmp_path / "iid.csv.gz"
    assert run_baseline(["--kind", "iid", "--data", str(ugr16_sample), "--records", "3000",
                         "--seed", "7", "--out", str(out)]) == 0
    table = read_table(out)
    assert len(table) == 3000
    assert "wrote 3000 iid records" in capsys.readouterr().out
    assert run_baseline(["--kind", "iid", "--data", str(ugr16_sample), "--records", "3000",
                         "--seed", "7", "--out", str(tmp_path / "iid.parquet")]) == 0
    pd.testing.assert_frame_equal(read_table(tmp_path / "iid.parquet"), table)
    assert run_baseline(["--kind", "iid", "--data", str(ugr16_sample), "--records", "3",
                         "--out", str(tmp_path / "iid.json")]) == 2


@pytest.mark.slow
def test_ctgan_tiny_run_is_valid_and_seeded(train, one_torch_thread):
    pytest.importorskip("ctgan", reason="ctgan is not installed")
    from flowdiff.baselines.ctgan import CtganConfig, sample_ctgan

    config = CtganConfig(epochs=1, batch_size=100, train_records=300, seed=5)
    first = sample_ctgan(train, 200, config)
    second = sample_ctgan(train, 200, config)
    pd.testing.assert_frame_equal(first, second)
    assert len(first) == 200 and list(first.columns) == list(train.columns)
    assert (first["pkt"] >= 1).all() and (first["td"] >= 0).all()
    assert first["srcport"].between(0, 65535).all()
    assert set(first["proto"]) <= set(train["proto"])
    assert (np.diff(first["ts"].to_numpy()) >= 0).all()


def test_ctgan_cli_and_config_errors(ugr16_sample, tmp_path, one_torch_thread):
    pytest.importorskip("ctgan", reason="ctgan is not installed")
    from flowdiff.baselines.ctgan import CtganConfig

    out = tmp_path / "ctgan.csv"
    assert run_baseline(["--kind", "ctgan", "--data", str(ugr16_sample), "--records", "300",
                         "--epochs", "1", "--batch-size", "100", "--train-records", "300",
                         "--out", str(out)]) == 0
    assert len(read_table(out)) == 300
    with pytest.raises(BaselineError, match="multiple of 10"):
        CtganConfig(batch_size=55)
    with pytest.raises(BaselineError, match="epochs must be >= 1"):
        CtganConfig(epochs=0)
    assert run_baseline(["--kind", "ctgan", "--data", str(ugr16_sample), "--records", "10",
                         "--batch-size", "55", "--out", str(out)]) == 2


def test_ctgan_missing_package_is_a_clear_error(ugr16_sample, tmp_path):
    """Without the ctgan package (import blocked in a fresh interpreter), --kind ctgan exits
    with status 2 and says how to install it."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['ctgan'] = None\n"
            "from flowdiff.cli import main\n"
            f"sys.exit(main(['baseline', '--kind', 'ctgan', '--data', {str(ugr16_sample)!r}, "
            f"'--records', '10', '--out', {str(tmp_path / 'c.csv')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert "needs the 'ctgan' package" in done.stderr
    assert "pip install --no-deps ctgan rdt Faker" in done.stderr
    assert not (tmp_path / "c.csv").exists()
