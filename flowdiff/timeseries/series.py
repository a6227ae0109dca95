"""Generic numeric time series (benchmarks Stocks, ETTh): load a CSV, split, scale, window.

- Non-numeric columns (e.g. ``date``) are dropped; missing values are an error naming the
  CSV line and column.
- The split is chronological: the first ``train_fraction`` of rows trains, the rest validates.
- A MinMax scaler is fitted on the training rows only and stored as JSON (in the artifact
  directory and inside the checkpoint). Validation rows outside the training range are
  clipped to [0, 1] (the count is logged).
- Windows are stride-1, shape (N, L, F), float32 in [0, 1].
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from flowdiff.atomic import write_text_atomic
from flowdiff.model.config import ModelConfig, TrainConfig

log = logging.getLogger(__name__)

SCALER_NAME = "scaler.json"


class TimeSeriesError(ValueError):
    """A time-series CSV cannot be used (message names the file, line/column, expectation)."""


@dataclass
class MinMaxScaler:
    columns: list[str]
    minimum: np.ndarray     # (F,)
    maximum: np.ndarray     # (F,)

    @classmethod
    def fit(cls, values: np.ndarray, columns: list[str]) -> "MinMaxScaler":
        return cls(list(columns), values.min(axis=0).astype(np.float64),
                   values.max(axis=0).astype(np.float64))

    @property
    def span(self) -> np.ndarray:
        span = self.maximum - self.minimum
        return np.where(span > 0, span, 1.0)   # constant column -> 0 after scaling

    def transform(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.minimum) / self.span).astype(np.float32)

    def inverse(self, scaled: np.ndarray) -> np.ndarray:
        return scaled * self.span + self.minimum

    def to_dict(self) -> dict:
        return {"columns": self.columns, "min": self.minimum.tolist(), "max": self.maximum.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> "MinMaxScaler":
        for key in ("columns", "min", "max"):
            if key not in data:
                raise TimeSeriesError(f"scaler: missing key '{key}' (expected columns, min, max)")
        if not len(data["columns"]) == len(data["min"]) == len(data["max"]):
            raise TimeSeriesError("scaler: columns, min and max must have the same length")
        return cls(list(data["columns"]), np.asarray(data["min"], dtype=np.float64),
                   np.asarray(data["max"], dtype=np.float64))


def load_numeric_csv(path: str | os.PathLike) -> pd.DataFrame:
    """The numeric columns of a CSV, in file order; non-numeric columns are dropped."""
    path = Path(path)
    if not path.is_file():
        raise TimeSeriesError(f"{path}: file not found")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise TimeSeriesError(f"{path}: cannot parse as CSV: {exc}") from exc
    numeric = frame.select_dtypes(include="number")
    dropped = [c for c in frame.columns if c not in numeric.columns]
    if dropped:
        log.info("%s: dropped non-numeric columns %s", path, dropped)
    if numeric.shape[1] == 0:
        raise TimeSeriesError(f"{path}: no numeric columns (columns: {list(frame.columns)})")
    missing = numeric.isna().to_numpy()
    if missing.any():
        row, col = np.argwhere(missing)[0]
        raise TimeSeriesError(f"{path}: line {row + 2}, column '{numeric.columns[col]}': missing "
                              "or non-numeric value (expected a number)")
    return numeric.astype(np.float64)


def sliding_windows(values: np.ndarray, seq_len: int) -> np.ndarray:
    """(T, F) -> (T - L + 1, L, F) stride-1 windows (a copy, float32)."""
    if values.shape[0] < seq_len:
        raise TimeSeriesError(f"series of {values.shape[0]} rows is shorter than the window {seq_len}")
    view = np.lib.stride_tricks.sliding_window_view(values, seq_len, axis=0)  # (N, F, L)
    return np.ascontiguousarray(view.transpose(0, 2, 1), dtype=np.float32)   # (N, L, F)


@dataclass
class PreparedSeries:
    scaler: MinMaxScaler
    train_windows: np.ndarray           # (N_train, L, F) in [0, 1]
    val_windows: np.ndarray | None      # (N_val, L, F) in [0, 1] or None


def prepare_series(path: str | os.PathLike, seq_len: int, train_fraction: float = 0.9
                   ) -> PreparedSeries:
    """Load, split chronologically, fit the scaler on the train rows, window both parts."""
    if not 0.0 < train_fraction <= 1.0:
        raise TimeSeriesError(f"train_fraction: expected a number in (0, 1], got {train_fraction}")
    frame = load_numeric_csv(path)
    values = frame.to_numpy()
    n_train = int(round(len(values) * train_fraction))
    if n_train < seq_len:
        raise TimeSeriesError(f"{path}: {n_train} training rows (of {len(values)}) are fewer than "
                              f"the window length {seq_len}")
    scaler = MinMaxScaler.fit(values[:n_train], list(frame.columns))
    train_windows = sliding_windows(scaler.transform(values[:n_train]), seq_len)
    val_windows = None
    if len(values) - n_train >= seq_len:
        val_scaled = scaler.transform(values[n_train:])
        outside = int(((val_scaled < 0) | (val_scaled > 1)).sum())
        if outside:
            log.info("%s: %d validation values outside the training range clipped to [0, 1]",
                     path, outside)
        val_windows = sliding_windows(np.clip(val_scaled, 0.0, 1.0), seq_len)
    return PreparedSeries(scaler, train_windows, val_windows)


def write_json_atomic(data: dict, path: Path) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))


def train_on_csv(csv: str | os.PathLike, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 out_dir: str | os.PathLike, train_fraction: float = 0.9, resume: bool = False):
    """Train Diffusion-TS on a numeric CSV; writes checkpoint.pt (with the scaler inside),
    scaler.json, train_log.jsonl and loss_curve.png into out_dir. Returns the TrainResult."""
    from flowdiff.model.diffusion_ts import DiffusionTS
    from flowdiff.model.trainer import train

    prepared = prepare_series(csv, model_cfg.seq_len, train_fraction)
    n_feat = prepared.train_windows.shape[2]
    if n_feat != model_cfg.feature_size:
        raise TimeSeriesError(f"{csv}: {n_feat} numeric columns {prepared.scaler.columns}, but "
                              f"model.feature_size is {model_cfg.feature_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 writes
        write_json_atomic(prepared.scaler.to_dict(), out_dir / SCALER_NAME)
    model = DiffusionTS(model_cfg)
    if model_cfg.parameterization == "edm-prior":   # the marginal of each training column
        from flowdiff.model.prior import MarginalPrior

        windows = prepared.train_windows
        model.set_prior(MarginalPrior.fit(np.concatenate([windows[:, 0], windows[-1, 1:]])))
    extra = {"scaler": prepared.scaler.to_dict(), "source": str(csv), "train_fraction": train_fraction}
    return train(model, prepared.train_windows, prepared.val_windows, train_cfg, out_dir,
                 resume=resume, extra=extra)
