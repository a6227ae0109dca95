"""Horizon regimes: starting noise correlated over the horizon's steps.

Real traffic comes in regimes: a window of 50 consecutive records is a scan burst, a run of
one host's connections, a UDP-heavy minute. So the composition of consecutive windows
(protocol shares, mean bytes, host repeats) varies from window to window far more than
independent records would make it vary. A model sampled from independent starting noise
x_T ~ N(0, I) gives every horizon step its own noise, and the deterministic sampler turns
them into records whose windows look alike: on the held-out range the standard deviation
of window features across 50-record windows was about half the real one (docs/model.md).

``correlated_start`` keeps each step's noise standard normal but shares part of it across
the horizon, per feature f:

    x_T[b, l, f] = sqrt(1 - rho_f) eps[b, l, f] + sqrt(rho_f) shared[b, f]   (l in horizon)

so two horizon steps' noises correlate by rho_f and the model maps a shared draw to a shared
regime. ``fit_regime_correlation`` picks rho per codec part so that the variance of
half-horizon block means of the model's predicted horizons matches that of real training
horizons (linear in rho over a small grid; the outputs are the model's, not the decoder's).
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import torch

from flowdiff.model.rng import Generators, randn_like_rows, seeded_generators

log = logging.getLogger(__name__)

MAX_CORRELATION = 0.9          # fitted rho is clipped to [0, MAX_CORRELATION]
FIT_GRID = (0.0, 0.1, 0.3)     # rho values the fit predicts with (variance ~ linear in rho)
FIT_BATCH = 25                 # windows per predict call while fitting


def check_correlation(correlation: torch.Tensor, features: int) -> torch.Tensor:
    """correlation as a float (F,) tensor with values in [0, 1), or a clear ValueError."""
    rho = torch.as_tensor(correlation, dtype=torch.float32)
    if rho.shape != (features,):
        raise ValueError(f"noise correlation: expected shape ({features},), got {tuple(rho.shape)}")
    if not bool(((rho >= 0.0) & (rho < 1.0)).all()):
        raise ValueError("noise correlation: every value must be in [0, 1)")
    return rho


def correlated_start(shape: tuple[int, int, int], generators: Generators,
                     device: torch.device | str, horizon: int,
                     correlation: torch.Tensor) -> torch.Tensor:
    """x_T (B, L, F): standard normal from ``generators`` (the same draws as the plain
    sampler's x_T), then, over the last ``horizon`` steps, feature f mixed with one shared
    draw per row: sqrt(1 - rho_f) eps + sqrt(rho_f) shared. The shared draws come after
    x_T's from each row's generator."""
    batch, length, features = shape
    if not 1 <= horizon <= length:
        raise ValueError(f"correlated_start: horizon must be in [1, {length}], got {horizon}")
    rho = check_correlation(correlation, features).to(device)
    x = randn_like_rows(shape, generators, device)                        # (B, L, F)
    shared = randn_like_rows((batch, 1, features), generators, device)    # (B, 1, F)
    x[:, -horizon:] = (1.0 - rho).sqrt() * x[:, -horizon:] + rho.sqrt() * shared
    return x


def block_variance(horizons: np.ndarray, parts: Mapping[str, slice]) -> dict[str, float]:
    """horizons (N, H, F) -> per part: the variance across blocks of H // 2 consecutive
    steps of the block mean, summed over the part's features."""
    n, h, f = horizons.shape
    block = max(1, h // 2)
    blocks = h // block
    means = horizons[:, :blocks * block].reshape(n * blocks, block, f).mean(axis=1)  # (N*b, F)
    variance = means.var(axis=0)                                                     # (F,)
    return {name: float(variance[part].sum()) for name, part in parts.items()}


def fit_regime_correlation(model, windows: np.ndarray, horizon: int,
                           parts: Mapping[str, slice], sampler, seed: int = 0,
                           grid: Sequence[float] = FIT_GRID) -> tuple[dict[str, float], dict]:
    """Per part rho such that the model's predicted horizons vary from block to block as
    the real ones do. windows (N, L, F) in [0, 1]: real training windows (context + horizon).
    Returns ({part: rho}, report {part: {"real": v, "model": [v at each grid rho]}})."""
    windows = np.asarray(windows, dtype=np.float32)
    n, length, features = windows.shape
    if n < 2:
        raise ValueError(f"regime fit: needs at least 2 windows, got {n}")
    if grid[0] != 0.0 or len(grid) < 2:
        raise ValueError(f"regime fit: the grid must start at 0 and have 2+ values, got {grid}")
    context = length - horizon
    real = block_variance(windows[:, context:], parts)
    predicted = {}
    for rho in grid:
        vector = torch.full((features,), float(rho))
        outputs = []
        with torch.no_grad():
            for start in range(0, n, FIT_BATCH):
                rows = range(seed + start, seed + min(n, start + FIT_BATCH))
                outputs.append(model.predict(
                    torch.as_tensor(windows[start:start + FIT_BATCH, :context]), horizon,
                    sampler, seeded_generators(rows), noise_correlation=vector).cpu().numpy())
        predicted[rho] = block_variance(np.concatenate(outputs), parts)
        log.info("regime fit: predicted %d horizons at rho %.2f", n, rho)
    fitted, report = {}, {}
    for name in parts:
        values = np.array([predicted[rho][name] for rho in grid])
        slope = float(np.polyfit(np.asarray(grid, dtype=np.float64), values, 1)[0])
        rho = (real[name] - values[0]) / slope if slope > 0 else 0.0
        fitted[name] = round(float(np.clip(rho, 0.0, MAX_CORRELATION)), 4)
        report[name] = {"real": real[name], "model": values.tolist()}
    return fitted, report


def correlation_vector(fitted: Mapping[str, float], parts: Mapping[str, slice],
                       features: int) -> torch.Tensor:
    """{part: rho} -> (F,) tensor (features of parts not named get 0)."""
    vector = torch.zeros(features)
    for name, rho in fitted.items():
        if name not in parts:
            raise ValueError(f"noise correlation: unknown codec part {name!r} "
                             f"(parts: {', '.join(parts)})")
        vector[parts[name]] = float(rho)
    return check_correlation(vector, features)
