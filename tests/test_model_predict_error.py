"""benchmarks/predict_error.py: predict-mode error of a checkpoint on time-series windows."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from flowdiff.model import DiffusionTS, ModelConfig, save_checkpoint

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_predict_error_benchmark_runs_every_predict_sampler(tmp_path, monkeypatch, capsys):
    """benchmarks/predict_error.py: MAE, spread of seeded draws, reproducible for a seed."""
    cfg = ModelConfig(seq_len=12, feature_size=2, n_layer_enc=1, n_layer_dec=1, d_model=16,
                      n_heads=2, timesteps=20)
    save_checkpoint(tmp_path / "checkpoint.pt", DiffusionTS(cfg).eval())
    walk = np.cumsum(np.random.default_rng(1).normal(size=(80, 2)), axis=0)
    np.savetxt(tmp_path / "series.csv", walk, delimiter=",", header="a,b", comments="")
    results = tmp_path / "predict.jsonl"
    for sampler in ("conditional", "replacement", "ddpm", "conditional"):
        monkeypatch.setattr(sys, "argv", [
            "predict_error.py", "--checkpoint", str(tmp_path / "checkpoint.pt"), "--csv",
            str(tmp_path / "series.csv"), "--train-fraction", "0.7", "--horizon", "3",
            "--sampler", sampler, "--steps", "5", "--draws", "2", "--max-windows", "6",
            "--json", str(results)])
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(REPO / "benchmarks" / "predict_error.py"), run_name="__main__")
        assert done.value.code == 0
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["sampler"] for r in rows] == ["conditional", "replacement", "ddpm", "conditional"]
    assert all(r["windows"] == 6 and r["mae"] > 0 and r["spread"] > 0 for r in rows)
    assert rows[0]["mae"] == rows[3]["mae"] and rows[0]["spread"] == rows[3]["spread"]
    assert "MAE" in capsys.readouterr().out
