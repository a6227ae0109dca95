"""Numbers through their empirical CDF: value -> uniform [0, 1], with dequantised ties.

The tabular diffusion models (TabDDPM, TabSyn, CDTD) feed numbers to the network through a
quantile transform; CDTD also *dequantises* integer columns. Here each distinct training
value ``v_j`` (after rounding to the column's resolution) owns the interval
``[lo_j, hi_j)`` of [0, 1] whose width is its share of the training records, in value
order. Encoding puts a value at a seeded uniform position inside its own interval (so the
many ``pkt = 1`` or ``td = 0`` records become a flat stretch, not a spike the model cannot
place); decoding looks the position up, so every training value comes back exactly and any
position in [0, 1] decodes to a training value — a model output that is slightly off moves
a record to a neighbouring quantile, never off the scale. Heavy tails keep their share of
[0, 1]: the top 1% of byte counts own the top 1% of the range, where log + min-max gives
them a sliver.

A value not seen at fit time encodes into the interval of the nearest training value (below
the minimum or above the maximum: the first or last interval) and is counted by
``unknown``.

Float32 bound: an interval is at least ``1 / n_train`` wide, and a position is drawn in its
middle half, so every training value survives float32 storage while ``n_train`` is below
about 4 million records (an interval of 4 float32 steps near 1.0); with more records the
encoder moves a position that float32 would push out of its interval back to the
interval's centre, and ``narrow_intervals`` counts intervals too narrow even for that.
"""

from __future__ import annotations

import logging

import numpy as np

from flowdiff.codec.transforms import nearest_rows, resolution

log = logging.getLogger(__name__)

JITTER_LOW, JITTER_HIGH = 0.25, 0.75     # position drawn in the middle half of the interval


class QuantileTransform:
    """Number -> its dequantised empirical CDF position in [0, 1] (width 1)."""

    name = "quantile"
    width = 1

    def __init__(self, values=None, counts=None, decimals: int | None = None, seed: int = 0):
        self.values = np.asarray([] if values is None else values, dtype=np.float64)  # (V,)
        self.counts = np.asarray([] if counts is None else counts, dtype=np.int64)    # (V,)
        self.decimals = decimals
        self.seed = int(seed)
        self._edges()

    def _edges(self) -> None:
        total = max(int(self.counts.sum()), 1)
        self.hi = np.cumsum(self.counts) / total                              # (V,)
        if len(self.hi):
            self.hi[-1] = 1.0
        self.lo = np.concatenate([[0.0], self.hi[:-1]])                       # (V,)

    def _rounded(self, column: np.ndarray) -> np.ndarray:
        values = np.asarray(column, dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"row {i}: value {values[i]} is not a finite number")
        return values if self.decimals is None else np.round(values, self.decimals)

    def fit(self, column: np.ndarray, decimals: int | None | str = "auto"
            ) -> "QuantileTransform":
        """``decimals``: the column's resolution, found from the values by default."""
        self.decimals = resolution(column) if decimals == "auto" else decimals
        values = self._rounded(column)
        if values.size == 0:
            raise ValueError("cannot fit a quantile transform on an empty column")
        self.values, self.counts = np.unique(values, return_counts=True)
        self._edges()
        narrow = self.narrow_intervals()
        if narrow:
            log.warning("quantile transform: %d of %d values own an interval narrower than "
                        "two float32 steps and may not round-trip exactly", narrow,
                        len(self.values))
        return self

    def narrow_intervals(self) -> int:
        width = (self.hi - self.lo).astype(np.float32)
        return int((width < 2 * np.spacing(np.float32(1.0))).sum())

    def encode(self, column: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """(n,) values -> (n, 1) float32 positions. Jitter from ``rng``, or a generator
        seeded with the transform's seed (same column -> same positions)."""
        rows = nearest_rows(self.values, self._rounded(column))               # (n,)
        rng = np.random.default_rng(self.seed) if rng is None else rng
        jitter = rng.uniform(JITTER_LOW, JITTER_HIGH, size=rows.size)         # (n,)
        lo, hi = self.lo[rows], self.hi[rows]
        position = (lo + jitter * (hi - lo)).astype(np.float32)               # (n,)
        outside = (position < lo) | (position >= hi)   # float32 rounding left the interval
        if outside.any():
            position[outside] = ((lo + hi) / 2)[outside].astype(np.float32)
        return position[:, None]

    def unknown(self, column: np.ndarray) -> int:
        values = self._rounded(column)
        rows = np.minimum(np.searchsorted(self.values, values), len(self.values) - 1)
        return int((self.values[rows] != values).sum())

    def decode(self, block: np.ndarray) -> tuple[np.ndarray, int]:
        position = np.asarray(block, dtype=np.float64)[:, 0]                  # (n,)
        outside = int(((position < 0.0) | (position > 1.0)).sum())
        rows = np.searchsorted(self.hi, np.clip(position, 0.0, 1.0), side="right")
        return self.values[np.minimum(rows, len(self.values) - 1)], outside

    def state(self) -> dict:
        return {"values": self.values.tolist(), "counts": self.counts.tolist(),
                "decimals": self.decimals, "seed": self.seed}

    @classmethod
    def from_state(cls, state: dict) -> "QuantileTransform":
        decimals = state["decimals"]
        return cls(state["values"], state["counts"],
                   None if decimals is None else int(decimals), int(state["seed"]))
