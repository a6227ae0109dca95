"""Per-field transforms: one column <-> an (n, k) float32 block with every value in [0, 1].

Each transform has ``width`` (k), ``fit(column)``, ``encode(column)``, ``unknown(column)``
(how many values ``encode`` cannot represent exactly: unseen categories, values outside the
fitted range), ``decode(block) -> (column, repairs)`` and ``state()`` / ``from_state()``
with a JSON-able state. ``decode`` accepts any finite float (model output may leave
[0, 1]) and clamps; ``repairs`` counts the values it had to clamp.

The word2vec transform for ports/protocol lives in ``flowdiff.codec.word2vec``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Bits used by the ``bits`` transform per field (IPv4 32, ports 16, protocol/flags/ToS 8).
FIELD_BITS = {"srcip": 32, "dstip": 32, "srcport": 16, "dstport": 16,
              "proto": 8, "flags": 8, "tos": 8}
MAX_DECIMALS = 6


class BitsTransform:
    """Unsigned integer -> its bits, most significant first (NetShare's IP encoding).
    Decoding thresholds each bit at 0.5, so any float input gives a valid integer."""

    name = "bits"

    def __init__(self, n_bits: int):
        if n_bits not in (8, 16, 32):
            raise ValueError(f"bits transform supports 8, 16 or 32 bits, not {n_bits}")
        self.n_bits = n_bits
        self.width = n_bits

    def fit(self, column: np.ndarray) -> "BitsTransform":
        self._check_range(column)
        return self

    def _check_range(self, column: np.ndarray) -> None:
        values = np.asarray(column)
        bad = (values < 0) | (values >= 2 ** self.n_bits)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"row {i}: value {values[i]} does not fit in {self.n_bits} "
                             f"unsigned bits (expected 0..{2 ** self.n_bits - 1})")

    def encode(self, column: np.ndarray) -> np.ndarray:
        self._check_range(column)
        n_bytes = self.n_bits // 8
        big_endian = np.asarray(column).astype(f">u{n_bytes}")              # (n,)
        as_bytes = big_endian.view(np.uint8).reshape(-1, n_bytes)           # (n, n_bytes)
        return np.unpackbits(as_bytes, axis=1).astype(np.float32)           # (n, n_bits)

    def unknown(self, column: np.ndarray) -> int:
        return 0

    def decode(self, block: np.ndarray) -> tuple[np.ndarray, int]:
        bits = (np.asarray(block) > 0.5).astype(np.uint8)                  # (n, n_bits)
        packed = np.ascontiguousarray(np.packbits(bits, axis=1))           # (n, n_bytes)
        values = packed.view(f">u{self.n_bits // 8}").reshape(-1)           # (n,)
        return values.astype(np.int64), 0

    def state(self) -> dict:
        return {"n_bits": self.n_bits}

    @classmethod
    def from_state(cls, state: dict) -> "BitsTransform":
        return cls(int(state["n_bits"]))


class MinMaxTransform:
    """Number -> [0, 1] by min-max over the training range, optionally after ``log1p``.

    Decoding clamps to the training range, inverts, and rounds to the resolution found in
    the training data (integers for integer columns, e.g. 3 decimals for UGR'16 durations),
    so training values come back exactly while float32 keeps the error below half that
    resolution (see docs/codec.md for the bound on large byte counts)."""

    def __init__(self, log: bool, low: float = 0.0, high: float = 1.0,
                 decimals: int | None = None):
        self.log = log
        self.low, self.high = float(low), float(high)
        self.decimals = decimals
        self.width = 1

    @property
    def name(self) -> str:
        return "log_minmax" if self.log else "minmax"

    def _forward(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        bad = ~np.isfinite(values) | (values < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"row {i}: value {values[i]} is not a finite number >= 0")
        return np.log1p(values) if self.log else values

    def fit(self, column: np.ndarray) -> "MinMaxTransform":
        scaled = self._forward(column)
        if scaled.size == 0:
            raise ValueError("cannot fit a min-max transform on an empty column")
        self.low, self.high = float(scaled.min()), float(scaled.max())
        if self.high <= self.low:  # constant column: any span works, keep it 1
            self.high = self.low + 1.0
        self.decimals = resolution(column)
        return self

    def encode(self, column: np.ndarray) -> np.ndarray:
        unit = (self._forward(column) - self.low) / (self.high - self.low)
        return np.clip(unit, 0.0, 1.0).astype(np.float32)[:, None]         # (n, 1)

    def unknown(self, column: np.ndarray) -> int:
        scaled = self._forward(column)
        return int(((scaled < self.low) | (scaled > self.high)).sum())

    def decode(self, block: np.ndarray) -> tuple[np.ndarray, int]:
        unit = np.asarray(block, dtype=np.float64)[:, 0]                   # (n,)
        outside = int(((unit < 0.0) | (unit > 1.0)).sum())
        scaled = np.clip(unit, 0.0, 1.0) * (self.high - self.low) + self.low
        values = np.expm1(scaled) if self.log else scaled
        if self.decimals is not None:
            values = np.round(values, self.decimals)
        return np.maximum(values, 0.0), outside

    def scale_error(self) -> float:
        """Worst error float32 storage adds on the (log) scale: half an ulp of a value in
        [0.5, 1] (2**-24) times the span."""
        return (self.high - self.low) * 2.0 ** -24

    def exact_integer_bound(self) -> float:
        """Integers up to this value decode exactly (error after float32 < 0.5). Log form:
        the error is about (1 + x) * scale_error, so x < 0.5 / scale_error - 1."""
        delta = self.scale_error()
        if self.log:
            return 0.5 / delta - 1.0
        return float("inf") if delta < 0.5 else 0.0

    def max_relative_error(self) -> float:
        """Log form: bound on |decoded - x| / x for integers x >= 1 inside the fitted
        range (float32 error (1 + 1/x) * scale_error, plus at most 0.5 from rounding,
        which only matters above ``exact_integer_bound``)."""
        if not self.log:
            raise ValueError("a relative error bound holds for the log_minmax form only")
        return 3.0 * self.scale_error()

    def state(self) -> dict:
        return {"log": self.log, "low": self.low, "high": self.high, "decimals": self.decimals}

    @classmethod
    def from_state(cls, state: dict) -> "MinMaxTransform":
        decimals = state["decimals"]
        return cls(bool(state["log"]), float(state["low"]), float(state["high"]),
                   None if decimals is None else int(decimals))


def nearest_rows(ordered: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index into the sorted array ``ordered`` of the element nearest each of ``values``
    (ties: the lower one). Used to map a value not seen in training to a seen one."""
    right = np.clip(np.searchsorted(ordered, values), 0, len(ordered) - 1)
    left = np.clip(right - 1, 0, len(ordered) - 1)
    take_left = (values - ordered[left]) <= (ordered[right] - values)
    return np.where(take_left, left, right)


def resolution(values: np.ndarray) -> int | None:
    """Fewest decimals (0..MAX_DECIMALS) that represent every value up to float64 noise
    (a few ulps of the largest magnitude), or None. UGR'16 durations give 3; timestamps in
    epoch seconds with millisecond resolution give 3, with microseconds 6."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return None
    tolerance = 4.0 * float(np.spacing(np.abs(values).max()))
    for decimals in range(MAX_DECIMALS + 1):
        if np.all(np.abs(np.round(values, decimals) - values) <= tolerance):
            return decimals
    return None


class OneHotTransform:
    """Category -> one-hot over the categories seen in training (most frequent first).
    An unseen category encodes as the most frequent one (counted by ``unknown``);
    decoding takes the arg-max."""

    name = "onehot"

    def __init__(self, categories: list | None = None):
        self.categories = list(categories or [])
        self.width = len(self.categories)

    def fit(self, column: np.ndarray) -> "OneHotTransform":
        counts = pd.Series(np.asarray(column)).value_counts(sort=False)
        # most frequent first; ties broken by value so the order is reproducible
        order = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
        self.categories = [_plain(value) for value, _ in order]
        if not self.categories:
            raise ValueError("cannot fit a one-hot transform on an empty column")
        self.width = len(self.categories)
        return self

    def _codes(self, column: np.ndarray) -> np.ndarray:
        return pd.Index(self.categories).get_indexer(np.asarray(column)).astype(np.int64)

    def encode(self, column: np.ndarray) -> np.ndarray:
        codes = self._codes(column)                                         # (n,)
        codes[codes < 0] = 0  # unseen -> most frequent category
        out = np.zeros((codes.size, self.width), dtype=np.float32)          # (n, k)
        out[np.arange(codes.size), codes] = 1.0
        return out

    def unknown(self, column: np.ndarray) -> int:
        return int((self._codes(column) < 0).sum())

    def decode(self, block: np.ndarray) -> tuple[np.ndarray, int]:
        index = np.argmax(np.asarray(block), axis=1)                        # (n,)
        numeric = all(isinstance(c, int) for c in self.categories)
        lookup = np.asarray(self.categories, dtype=np.int64 if numeric else object)
        return lookup[index], 0

    def state(self) -> dict:
        return {"categories": self.categories}

    @classmethod
    def from_state(cls, state: dict) -> "OneHotTransform":
        return cls(list(state["categories"]))


def _plain(value):
    """numpy scalar -> plain Python value (JSON-able)."""
    return value.item() if isinstance(value, np.generic) else value
