"""The data's own marginal prior as the denoiser's skip (parameterization ``edm-prior``).

EDM's skip, c_skip x~ = sd^2 / (sigma^2 + sd^2) x~, is E[x0 | x~] when x0 ~ N(0, sd^2)
(x~ = x_t / sqrt(abar_t) = x0 + sigma eps). ``edm-prior`` replaces that Gaussian by the
training data's marginal, group by group of features, and keeps EDM's c_in and c_out:

    x0_hat = E_prior[x0 | x~] + c_out F(c_in x~, t)

with, per group (fitted on training rows in model space [-1, 1]):

- a group whose training rows take at most ``MAX_ATOMS`` distinct values (a one-hot code,
  a flag mask, a token's word2vec vector): the posterior over those atoms, softmax of
  log frequency + (x~ . a - |a|^2 / 2) / sigma^2, and its mean;
- in a larger group, each binary feature (every training value -1 or +1, e.g. an address
  bit) on its own: E = tanh(x~ / sigma^2 + logit / 2), logit = log(p / (1 - p)) of +1; the
  other features together as atoms as above if they take at most ``MAX_ATOMS`` values;
- any other feature (a number): the posterior over a ``HISTOGRAM_BINS``-bin histogram of
  its training values (bin centres, log counts).

Groups come from the caller (``FlowCodec.feature_parts``: fields, with an address split
into its reuse code and its bits and a port into its token vector and its bits).

So at low noise the skip alone returns each bit and token exactly and pulls numbers towards
where training values lie: x0_hat beats its noisy input without the network having to
resolve noise of 1 % of the range. The network models what the marginal cannot know: the
dependence across features and time. At high noise the skip tends to the marginal mean.
The prior is fitted once from the training rows (``MarginalPrior.fit``) and saved in the
checkpoint (``to_state`` / ``from_state``), so an artifact stays self-contained.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

MAX_ATOMS = 1024        # a group with at most this many distinct training rows is exact
HISTOGRAM_BINS = 400    # bins over [-1, 1] for the other features (width 0.005)
_EMPTY_BIN_LOG = -30.0  # log weight of a histogram bin no training value fell into
TABLE_POINTS = 2049     # grid of the tabulated histogram posterior mean, per noise level


def _as_slice(cols: torch.Tensor) -> slice | torch.Tensor:
    """A contiguous ascending index as a slice (views instead of gather copies)."""
    first, count = int(cols[0]), len(cols)
    if cols.tolist() == list(range(first, first + count)):
        return slice(first, first + count)
    return cols


def _atoms(x: np.ndarray, cols: np.ndarray) -> tuple | None:
    """(cols, distinct rows (A, d), log frequencies (A,)) of x's columns ``cols``, or None
    when they take more than MAX_ATOMS distinct values."""
    atoms, counts = np.unique(x[:, cols], axis=0, return_counts=True)
    if len(atoms) > MAX_ATOMS:
        return None
    return (torch.as_tensor(cols), torch.as_tensor(atoms),
            torch.as_tensor(np.log(counts / counts.sum())))


class MarginalPrior:
    """E[x0 | x~] under the training marginal; see the module docstring. Plain tensors, not
    an nn.Module: the model's state_dict (and its shape) does not depend on the data."""

    def __init__(self, width: int, binary_cols: torch.Tensor, binary_logit: torch.Tensor,
                 joint: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                 hist_cols: torch.Tensor, hist_centers: torch.Tensor, hist_logw: torch.Tensor):
        self.width = width
        self.binary_cols, self.binary_logit = binary_cols.long(), binary_logit.float()
        self.joint = [(cols.long(), atoms.float(), logw.float()) for cols, atoms, logw in joint]
        self.hist_cols = hist_cols.long()
        self.hist_centers, self.hist_logw = hist_centers.float(), hist_logw.float()
        self._tables: dict = {}   # (sigma, device, dtype) -> histogram posterior-mean table
        self._joint_parts = [_as_slice(cols) for cols, _a, _w in self.joint]   # codec parts: views
        self._half_norms = [(atoms ** 2).sum(-1) / 2.0 for _c, atoms, _w in self.joint]  # |a|^2 / 2
        covered = torch.cat([self.binary_cols, self.hist_cols, *[c for c, _a, _w in self.joint]])
        if sorted(covered.tolist()) != list(range(width)):
            raise ValueError(f"MarginalPrior: the groups must cover each of the {width} "
                             "features exactly once")

    @classmethod
    def fit(cls, rows: np.ndarray, groups: Mapping[str, slice] | None = None) -> "MarginalPrior":
        """From training rows (N, F) in [0, 1] (data space, as the trainer's windows) and
        feature groups (name -> slice, e.g. a codec's ``feature_parts``; default: one group
        per feature)."""
        x = np.asarray(rows, dtype=np.float64) * 2.0 - 1.0                    # model space
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"MarginalPrior.fit: expected rows (N, F) with N > 0, got {x.shape}")
        width = x.shape[1]
        groups = groups or {str(i): slice(i, i + 1) for i in range(width)}
        binary_cols, binary_logit, joint, hist_cols = [], [], [], []
        for part in groups.values():
            cols = np.arange(width)[part]
            whole = _atoms(x, cols)
            if whole is not None:   # the whole group jointly (a one-hot code, a flag mask)
                joint.append(whole)
                continue
            binary = np.all((x[:, cols] == -1.0) | (x[:, cols] == 1.0), axis=0)
            for col in cols[binary]:
                p = float(np.clip((x[:, col] > 0).mean(), 1e-6, 1 - 1e-6))
                binary_cols.append(int(col))
                binary_logit.append(np.log(p / (1.0 - p)))
            rest = cols[~binary]
            others = _atoms(x, rest) if len(rest) else None
            if others is not None:
                joint.append(others)
            else:
                hist_cols.extend(int(c) for c in rest)
        centers, logw = [], []
        edges = np.linspace(-1.0, 1.0, HISTOGRAM_BINS + 1)
        for col in hist_cols:
            counts, _ = np.histogram(np.clip(x[:, col], -1.0, 1.0), bins=edges)
            with np.errstate(divide="ignore"):
                logw.append(np.where(counts > 0, np.log(counts / counts.sum()), _EMPTY_BIN_LOG))
            centers.append((edges[:-1] + edges[1:]) / 2.0)
        shape = (len(hist_cols), HISTOGRAM_BINS)
        return cls(width, torch.as_tensor(binary_cols, dtype=torch.long),
                   torch.as_tensor(binary_logit), joint,
                   torch.as_tensor(hist_cols, dtype=torch.long),
                   torch.as_tensor(np.array(centers)).reshape(shape),
                   torch.as_tensor(np.array(logw)).reshape(shape))

    def __call__(self, x_tilde: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x_tilde (B, L, F) = x_t / sqrt(abar_t), sigma (B,) -> E[x0 | x~] (B, L, F)."""
        if x_tilde.shape[-1] != self.width:
            raise ValueError(f"MarginalPrior: fitted on {self.width} features, got "
                             f"{x_tilde.shape[-1]}")
        dev, dtype = x_tilde.device, x_tilde.dtype
        inv_var = (1.0 / sigma.to(dev, dtype) ** 2)[:, None, None]                 # (B, 1, 1)
        out = torch.empty_like(x_tilde)
        cols = self.binary_cols.to(dev)
        out[..., cols] = torch.tanh(x_tilde[..., cols] * inv_var
                                    + self.binary_logit.to(dev, dtype) / 2.0)
        for part, half_norm, (_cols, atoms, logw) in zip(self._joint_parts, self._half_norms,
                                                         self.joint):
            atoms = atoms.to(dev, dtype)
            scores = (x_tilde[..., part] @ atoms.T - half_norm.to(dev, dtype)) * inv_var
            out[..., part] = torch.softmax(logw.to(dev, dtype) + scores, dim=-1) @ atoms
        if len(self.hist_cols):
            cols = self.hist_cols.to(dev)
            out[..., cols] = self._histogram_means(x_tilde[..., cols], sigma)
        return out

    def _histogram_means(self, values: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Posterior means of the histogram features, values (B, L, H): per distinct sigma of
        the batch, linear interpolation in a table of the exact posterior mean on a grid of
        TABLE_POINTS over [-1 - 6 sigma, 1 + 6 sigma] (grid step <= 0.12 sigma; beyond it
        the mean is flat at the edge's), computed once per sigma and kept."""
        out = torch.empty_like(values)
        n_hist = values.shape[-1]
        offsets = torch.arange(n_hist, device=values.device) * TABLE_POINTS          # (H,)
        for level in torch.unique(sigma):
            rows = sigma.to(values.device) == level
            table, low, step = self._table(float(level), values.device, values.dtype)  # (H, G)
            position = ((values[rows] - low) / step).clamp(0.0, TABLE_POINTS - 1.0)
            left = position.floor().clamp(max=TABLE_POINTS - 2)
            frac = position - left
            index = left.long() + offsets                                            # (b, L, H)
            flat = table.reshape(-1)
            out[rows] = flat[index] * (1.0 - frac) + flat[index + 1] * frac
        return out

    def _table(self, sigma: float, device, dtype) -> tuple[torch.Tensor, float, float]:
        key = (round(sigma, 12), str(device), dtype)
        if key not in self._tables:
            low, high = -1.0 - 6.0 * sigma, 1.0 + 6.0 * sigma
            grid = torch.linspace(low, high, TABLE_POINTS, dtype=torch.float64)      # (G,)
            centers, logw = self.hist_centers.double(), self.hist_logw.double()      # (H, K)
            scores = (grid[None, :, None] * centers[:, None, :]
                      - centers[:, None, :] ** 2 / 2.0) / sigma ** 2                 # (H, G, K)
            weights = torch.softmax(logw[:, None, :] + scores, dim=-1)
            table = (weights * centers[:, None, :]).sum(-1)                          # (H, G)
            self._tables[key] = (table.to(device, dtype), low, (high - low) / (TABLE_POINTS - 1))
        return self._tables[key]

    def to_state(self) -> dict:
        """Tensors and plain values only (checkpoints load with weights_only=True)."""
        return {"width": self.width, "binary_cols": self.binary_cols,
                "binary_logit": self.binary_logit,
                "joint": [{"cols": c, "atoms": a, "logw": w} for c, a, w in self.joint],
                "hist_cols": self.hist_cols, "hist_centers": self.hist_centers,
                "hist_logw": self.hist_logw}

    @classmethod
    def from_state(cls, state: dict) -> "MarginalPrior":
        return cls(int(state["width"]), state["binary_cols"], state["binary_logit"],
                   [(g["cols"], g["atoms"], g["logw"]) for g in state["joint"]],
                   state["hist_cols"], state["hist_centers"], state["hist_logw"])

    def summary(self) -> str:
        return (f"{len(self.binary_cols)} binary features, {len(self.joint)} groups of "
                f"{sum(len(a) for _c, a, _w in self.joint)} atoms, {len(self.hist_cols)} "
                f"features on {HISTOGRAM_BINS}-bin histograms")
