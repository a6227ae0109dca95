"""Windows over an encoded record series for the model: stride-s windows of L steps.

    data = codec.encode(table)                        # (n, F) float32, in time order
    train, val = WindowDataset(data, length=64, stride=8).split(val_fraction=0.1)
    train[0]                                          # torch.float32 (L, F)
    train.windows()                                   # numpy (N, L, F), a read-only view

The split is by time: the first ``1 - val_fraction`` of the steps go to training, the rest
to validation, and no window crosses the boundary (nothing is shuffled across it).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


class WindowDataset(Dataset):
    """Windows ``data[i * stride : i * stride + length]`` for i in 0..len-1 (a partial
    window at the end is dropped)."""

    def __init__(self, data: np.ndarray, length: int, stride: int = 1):
        data = np.asarray(data)
        if data.ndim != 2:
            raise ValueError(f"expected an encoded array of shape (n, F), got shape {data.shape}")
        for name, value in (("length", length), ("stride", stride)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"window {name} must be a positive integer, got {value!r}")
        self.data = np.ascontiguousarray(data, dtype=np.float32)           # (n, F)
        self.length = int(length)
        self.stride = int(stride)

    @property
    def n_steps(self) -> int:
        return int(self.data.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.data.shape[1])

    def __len__(self) -> int:
        if self.n_steps < self.length:
            return 0
        return (self.n_steps - self.length) // self.stride + 1

    def _start(self, index: int) -> int:
        count = len(self)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"window index must be an integer, got {type(index).__name__}")
        if not -count <= index < count:
            raise IndexError(f"window {index} out of range for {count} windows")
        return (int(index) % count) * self.stride

    def __getitem__(self, index: int) -> torch.Tensor:
        start = self._start(index)
        window = self.data[start:start + self.length]                      # (L, F)
        return torch.from_numpy(window.copy())

    def windows(self) -> np.ndarray:
        """All windows as one read-only array view (N, L, F), no copy."""
        if len(self) == 0:
            return np.zeros((0, self.length, self.n_features), dtype=np.float32)
        view = np.lib.stride_tricks.sliding_window_view(self.data, self.length, axis=0)
        return view[::self.stride].transpose(0, 2, 1)                      # (N, L, F)

    def split(self, val_fraction: float) -> tuple["WindowDataset", "WindowDataset"]:
        """(train, val) by time: steps [0, cut) and [cut, n), cut = round(n * (1 - f)).
        Both parts must hold at least one window."""
        if not 0.0 < float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be strictly between 0 and 1, got "
                             f"{val_fraction!r}")
        cut = int(round(self.n_steps * (1.0 - float(val_fraction))))
        train = WindowDataset(self.data[:cut], self.length, self.stride)
        val = WindowDataset(self.data[cut:], self.length, self.stride)
        for name, part in (("training", train), ("validation", val)):
            if len(part) == 0:
                raise ValueError(f"the {name} part has {part.n_steps} steps, fewer than one "
                                 f"window of {self.length}: use more data, a shorter window "
                                 f"or another val_fraction (got {val_fraction})")
        return train, val
