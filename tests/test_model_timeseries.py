"""Time-series data path: CSV loading, chronological split, train-only scaler, windows,
run configs (every shipped YAML loads) and train_on_csv on the real Stocks file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flowdiff.model import ConfigError, ModelConfig, TrainConfig, load_checkpoint
from flowdiff.timeseries.run_config import load_run_config
from flowdiff.timeseries.series import (MinMaxScaler, TimeSeriesError, load_numeric_csv,
                                       prepare_series, sliding_windows, train_on_csv)

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_etth_drops_date_and_scaler_is_fit_on_train_rows_only(etth_csv):
    frame = load_numeric_csv(etth_csv)
    assert list(frame.columns) == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    prepared = prepare_series(etth_csv, 24, train_fraction=0.5)
    n_train = int(round(len(frame) * 0.5))
    train_rows = frame.to_numpy()[:n_train]
    np.testing.assert_allclose(prepared.scaler.minimum, train_rows.min(axis=0))
    np.testing.assert_allclose(prepared.scaler.maximum, train_rows.max(axis=0))
    assert prepared.train_windows.shape == (n_train - 23, 24, 7)
    assert prepared.val_windows.shape == (len(frame) - n_train - 23, 24, 7)
    assert prepared.train_windows.min() == 0.0 and prepared.train_windows.max() == 1.0
    assert prepared.val_windows.min() >= 0.0 and prepared.val_windows.max() <= 1.0


def test_windows_are_stride_one(stock_csv):
    values = load_numeric_csv(stock_csv).to_numpy()
    windows = sliding_windows(values, 24)
    assert windows.shape == (len(values) - 23, 24, 6)
    np.testing.assert_allclose(windows[5, 3], values[8], rtol=1e-6)
    np.testing.assert_allclose(windows[6, 0], values[6], rtol=1e-6)


def test_scaler_round_trip_and_json():
    values = np.array([[1.0, 5.0], [3.0, 5.0], [2.0, 5.0]])
    scaler = MinMaxScaler.fit(values, ["a", "b"])
    scaled = scaler.transform(values)
    assert scaled[:, 1].tolist() == [0.0, 0.0, 0.0]   # constant column does not divide by 0
    restored = MinMaxScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    np.testing.assert_allclose(restored.inverse(scaled), values)


def test_csv_errors_name_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("date,a,b\n2020-01-01,1,2\n2020-01-02,,3\n")
    with pytest.raises(TimeSeriesError, match=r"bad.csv: line 3, column 'a'"):
        load_numeric_csv(bad)
    text = tmp_path / "text.csv"
    text.write_text("x,y\na,b\n")
    with pytest.raises(TimeSeriesError, match="no numeric columns"):
        load_numeric_csv(text)
    with pytest.raises(TimeSeriesError, match="not found"):
        load_numeric_csv(tmp_path / "missing.csv")


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("dts-*.yaml")))
def test_every_shipped_dts_config_loads(name):
    run = load_run_config(REPO / "configs" / name)
    assert run.model.seq_len == 24 and run.train.steps > 0


def test_run_config_reports_all_problems(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {csv: 3}\nmodel: {d_model: 7}\ntrain: {steps: -1}\nextra: 1\n")
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    msg = str(err.value)
    for needle in ("extra: unknown section", "data.csv", "model.d_model", "train.steps"):
        assert needle in msg


def test_train_on_csv_stores_scaler_with_model(stock_csv, tmp_path):
    model_cfg = ModelConfig(seq_len=12, feature_size=6, n_layer_enc=1, n_layer_dec=1, d_model=16,
                            n_heads=2, timesteps=20)
    train_cfg = TrainConfig(steps=10, batch_size=16, grad_accum=1, warmup=2, checkpoint_every=10,
                            val_every=10, log_every=5, device="cpu")
    result = train_on_csv(stock_csv, model_cfg, train_cfg, tmp_path, train_fraction=0.8)
    assert result.steps == 10
    scaler = json.loads((tmp_path / "scaler.json").read_text())
    _, extra = load_checkpoint(tmp_path / "checkpoint.pt")
    assert extra["scaler"] == scaler
    assert scaler["columns"] == ["Open", "High", "Low", "Close", "Adj_Close", "Volume"]
    with pytest.raises(TimeSeriesError, match="6 numeric columns"):
        train_on_csv(stock_csv, ModelConfig(seq_len=12, feature_size=5, d_model=16, timesteps=20),
                     train_cfg, tmp_path / "x")
