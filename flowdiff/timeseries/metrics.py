"""Benchmark scores for generated windows (Diffusion-TS / TimeGAN protocol). Lower is better.

All take real and synthetic windows (N, L, F) in [0, 1] and a seed; one call is one
repeat (the benchmark runs 5 and reports mean +- 95 % CI).

- discriminative_score: post-hoc GRU classifier real vs synthetic, |test accuracy - 0.5|.
- predictive_score: train-on-synthetic, test-on-real (TSTR) next-step MAE of the last feature.
- correlational_score: lag-0 cross-correlation matrices (z-scored features), L1 difference / 10,
  on random subsets of N/5 windows drawn with replacement.
- context_fid: FID between TS2Vec-style embeddings (encoder trained on the real windows).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from flowdiff.model.rng import scoped_torch_seed

DISCRIMINATIVE_ITERATIONS = 2000
PREDICTIVE_ITERATIONS = 5000
METRIC_BATCH = 128


class MetricError(ValueError):
    """Inputs to a metric are unusable (message says which and what was expected)."""


def _windows(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != 3 or arr.shape[0] < 2:
        raise MetricError(f"{name}: expected windows (N >= 2, L, F), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise MetricError(f"{name}: contains NaN or Inf")
    return arr.astype(np.float32)


def _check_pair(real, fake) -> tuple[np.ndarray, np.ndarray]:
    real, fake = _windows(real, "real"), _windows(fake, "fake")
    if real.shape[1:] != fake.shape[1:]:
        raise MetricError(f"real windows {real.shape[1:]} and fake windows {fake.shape[1:]} "
                          "differ in (L, F)")
    return real, fake


class _GRUHead(nn.Module):
    """1-layer GRU with hidden int(F/2) (at least 1) and a linear head."""

    def __init__(self, n_in: int, hidden: int, per_step: bool):
        super().__init__()
        self.gru = nn.GRU(n_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)
        self.per_step = per_step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs, last = self.gru(x)                    # (B, L, h), (1, B, h)
        if self.per_step:
            return self.head(outputs)                  # (B, L, 1)
        return self.head(last[0])[:, 0]                # (B,) logits


def _split(n: int, rng: np.random.Generator, fraction: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(n)
    cut = int(n * fraction)
    return order[:cut], order[cut:]


def discriminative_score(real, fake, seed: int, iterations: int = DISCRIMINATIVE_ITERATIONS) -> float:
    """|accuracy - 0.5| of a GRU classifier trained on 80 % of each set, tested on the rest."""
    real, fake = _check_pair(real, fake)
    rng = np.random.default_rng(seed)
    with scoped_torch_seed(seed):  # model init and dropout: not the global RNG
        n_feat = real.shape[2]
        model = _GRUHead(n_feat, max(n_feat // 2, 1), per_step=False)
        optimizer = torch.optim.Adam(model.parameters())
        real_train, real_test = _split(len(real), rng)
        fake_train, fake_test = _split(len(fake), rng)
        real_t, fake_t = torch.from_numpy(real), torch.from_numpy(fake)
        loss_fn = nn.BCEWithLogitsLoss()
        for _ in range(iterations):
            xr = real_t[rng.choice(real_train, min(METRIC_BATCH, len(real_train)), replace=False)]
            xf = fake_t[rng.choice(fake_train, min(METRIC_BATCH, len(fake_train)), replace=False)]
            logits = model(torch.cat([xr, xf]))                                   # (2B,)
            labels = torch.cat([torch.ones(len(xr)), torch.zeros(len(xf))])
            optimizer.zero_grad()
            loss_fn(logits, labels).backward()
            optimizer.step()
        with torch.no_grad():
            correct_real = (model(real_t[real_test]) > 0).float().sum()
            correct_fake = (model(fake_t[fake_test]) <= 0).float().sum()
        accuracy = float(correct_real + correct_fake) / (len(real_test) + len(fake_test))
        return abs(accuracy - 0.5)


def predictive_score(real, fake, seed: int, iterations: int = PREDICTIVE_ITERATIONS) -> float:
    """TSTR: a GRU trained on ``fake`` predicts feature F-1 at steps 1..L-1 from features
    0..F-2 at steps 0..L-2; returns the MAE on all ``real`` windows."""
    real, fake = _check_pair(real, fake)
    n_feat = real.shape[2]
    if n_feat < 2:
        raise MetricError("predictive_score needs at least 2 features")
    rng = np.random.default_rng(seed)
    with scoped_torch_seed(seed):  # model init and dropout: not the global RNG
        model = _GRUHead(n_feat - 1, max(n_feat // 2, 1), per_step=True)
        optimizer = torch.optim.Adam(model.parameters())
        fake_x = torch.from_numpy(fake[:, :-1, :-1])                              # (N, L-1, F-1)
        fake_y = torch.from_numpy(fake[:, 1:, -1:])                               # (N, L-1, 1)
        for _ in range(iterations):
            idx = rng.choice(len(fake), min(METRIC_BATCH, len(fake)), replace=False)
            prediction = torch.sigmoid(model(fake_x[idx]))
            loss = (prediction - fake_y[idx]).abs().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            prediction = torch.sigmoid(model(torch.from_numpy(real[:, :-1, :-1])))  # (N, L-1, 1)
        per_window = (prediction - torch.from_numpy(real[:, 1:, -1:])).abs().mean(dim=(1, 2))
        return float(per_window.mean())


def _cross_correlation(x: torch.Tensor) -> torch.Tensor:
    """Lag-0 cross-correlation of z-scored features for pairs i >= j, averaged -> (P,)."""
    x = (x - x.mean(dim=(0, 1), keepdim=True)) / x.std(dim=(0, 1), keepdim=True)
    rows, cols = torch.tril_indices(x.shape[2], x.shape[2])
    return (x[..., rows] * x[..., cols]).mean(dim=1).mean(dim=0)             # (N, L, P) -> (P,)


def correlational_score(real, fake, seed: int) -> float:
    """sum |C_fake - C_real| / 10 on random subsets of N/5 windows (with replacement)."""
    real, fake = _check_pair(real, fake)
    rng = np.random.default_rng(seed)
    size = max(len(real) // 5, 2)
    real_idx = rng.integers(0, len(real), size)
    fake_idx = rng.integers(0, len(fake), size)
    c_real = _cross_correlation(torch.from_numpy(real[real_idx]).double())
    c_fake = _cross_correlation(torch.from_numpy(fake[fake_idx]).double())
    return float((c_fake - c_real).abs().sum() / 10.0)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two sets of embeddings (N, D)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2.0 * covmean))


def context_fid(real, fake, seed: int, iterations: int | None = None) -> float:
    """FID between TS2Vec-style embeddings of real and fake windows (encoder fit on real;
    iterations None = the TS2Vec default, 200 or 600 by data size)."""
    from flowdiff.timeseries.ts2vec import fit_ts2vec

    real, fake = _check_pair(real, fake)
    encoder = fit_ts2vec(real, seed=seed, iterations=iterations)
    real_emb = encoder.embed(real)
    fake_emb = encoder.embed(fake)
    n = min(len(real_emb), len(fake_emb))
    return frechet_distance(real_emb[:n], fake_emb[:n])


__all__ = ["MetricError", "context_fid", "correlational_score", "discriminative_score",
           "frechet_distance", "predictive_score"]
