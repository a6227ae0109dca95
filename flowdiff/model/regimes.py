"""Horizon regimes: starting noise correlated over the horizon's steps.

Real traffic comes in regimes. Consecutive records resemble each other (the same service,
similar sizes: the lag-1 correlation of log bytes between consecutive held-out records is
0.46), and the composition of consecutive 50-record windows (protocol shares, mean bytes,
host repeats) varies from window to window far more than independent records would make
it vary. A model sampled from independent starting noise x_T ~ N(0, I) gives every
horizon step its own noise, and the deterministic sampler turns them into records that
resemble their neighbours too little (lag-1 correlation 0.17-0.26) and windows that look
alike (the standard deviation of window features across windows about half the real one;
docs/model.md).

``correlated_start`` keeps each step's noise standard normal but gives it the two kinds of
dependence over the horizon's steps l, per feature f:

    e[l] = phi_f e[l - 1] + sqrt(1 - phi_f^2) eps[l]          (persistence: AR(1), e[0] = eps[0])
    x_T[l] = sqrt(1 - rho_f) e[l] + sqrt(rho_f) shared        (correlation: one shared draw)

so consecutive steps' noises correlate by about phi_f (+ rho_f) and any two horizon steps
by at least rho_f; the model maps shared or similar noise to shared or similar records.
``fit_horizon_noise`` picks phi, then rho, per codec part, so that the model's predicted
horizons match real training horizons in the lag-1 correlation of consecutive steps
(deviations from their horizon's mean, which a shared draw does not change) and then in
the variance of half-horizon block means (each over a small grid, on the model's encoded
outputs, before any decoding).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from flowdiff.model.rng import Generators, randn_like_rows, seeded_generators

log = logging.getLogger(__name__)

MAX_CORRELATION = 0.9            # fitted rho is clipped to [0, MAX_CORRELATION]
CORRELATION_GRID = (0.0, 0.1, 0.3)          # rho values the fit predicts with
PERSISTENCE_GRID = (0.0, 0.5, 0.8, 0.95)    # phi values the fit predicts with (the largest: the cap)
FIT_BATCH = 25                   # windows per predict call while fitting


def _check(values, features: int, name: str) -> torch.Tensor:
    """values as a float (F,) tensor in [0, 1), or a clear ValueError."""
    tensor = torch.as_tensor(values, dtype=torch.float32)
    if tensor.shape != (features,):
        raise ValueError(f"noise {name}: expected shape ({features},), got {tuple(tensor.shape)}")
    if not bool(((tensor >= 0.0) & (tensor < 1.0)).all()):
        raise ValueError(f"noise {name}: every value must be in [0, 1)")
    return tensor


@dataclass(frozen=True)
class HorizonNoise:
    """Per feature (F,): ``correlation`` rho (the shared draw's share of the variance) and
    ``persistence`` phi (the AR(1) coefficient of consecutive steps)."""
    correlation: torch.Tensor
    persistence: torch.Tensor

    @classmethod
    def of(cls, features: int, correlation=None, persistence=None) -> "HorizonNoise":
        zeros = torch.zeros(features)
        return cls(_check(zeros if correlation is None else correlation, features, "correlation"),
                   _check(zeros if persistence is None else persistence, features, "persistence"))

    @classmethod
    def from_parts(cls, fitted: Mapping[str, Mapping[str, float]], parts: Mapping[str, slice],
                   features: int) -> "HorizonNoise":
        """{"correlation": {part: rho}, "persistence": {part: phi}} (parts not named: 0)."""
        vectors = {}
        for kind in ("correlation", "persistence"):
            vector = torch.zeros(features)
            for name, value in (fitted.get(kind) or {}).items():
                if name not in parts:
                    raise ValueError(f"noise {kind}: unknown codec part {name!r} "
                                     f"(parts: {', '.join(parts)})")
                vector[parts[name]] = float(value)
            vectors[kind] = vector
        return cls.of(features, vectors["correlation"], vectors["persistence"])


def correlated_start(shape: tuple[int, int, int], generators: Generators,
                     device: torch.device | str, horizon: int,
                     noise: HorizonNoise) -> torch.Tensor:
    """x_T (B, L, F): standard normal from ``generators`` (the same draws as the plain
    sampler's x_T), then over the last ``horizon`` steps the AR(1) filter with ``noise``'s
    persistence and the mix with one shared draw per row (drawn after x_T, from each row's
    generator) with its correlation. Every step stays N(0, 1)."""
    batch, length, features = shape
    if not 1 <= horizon <= length:
        raise ValueError(f"correlated_start: horizon must be in [1, {length}], got {horizon}")
    rho = _check(noise.correlation, features, "correlation").to(device)
    phi = _check(noise.persistence, features, "persistence").to(device)
    x = randn_like_rows(shape, generators, device)                        # (B, L, F)
    shared = randn_like_rows((batch, 1, features), generators, device)    # (B, 1, F)
    steps = x[:, -horizon:].clone()                                       # (B, H, F)
    innovation = (1.0 - phi ** 2).sqrt()
    for step in range(1, horizon):
        steps[:, step] = phi * steps[:, step - 1] + innovation * steps[:, step]
    x[:, -horizon:] = (1.0 - rho).sqrt() * steps + rho.sqrt() * shared
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


def step_correlation(horizons: np.ndarray, parts: Mapping[str, slice]) -> dict[str, float]:
    """horizons (N, H, F) -> per part: the lag-1 correlation of consecutive steps' deviations
    from their own horizon's mean, pooled over the part's features (sum of lag-1
    covariances / sum of variances; 0 for a part that never varies). Taking each horizon's
    mean out removes what a shared draw adds, so this measures persistence alone."""
    centred = horizons - horizons.mean(axis=1, keepdims=True)
    lagged = (centred[:, 1:] * centred[:, :-1]).mean(axis=(0, 1))                    # (F,)
    variance = (centred ** 2).mean(axis=(0, 1))                                      # (F,)
    out = {}
    for name, part in parts.items():
        total = float(variance[part].sum())
        out[name] = float(lagged[part].sum()) / total if total > 0 else 0.0
    return out


def _predict_all(model, windows: np.ndarray, horizon: int, sampler, seed: int,
                 noise: HorizonNoise) -> np.ndarray:
    """The model's horizons (N, H, F) for every window's context, FIT_BATCH at a time, row
    i seeded with seed + i (the same draws for every noise setting)."""
    n, length, _ = windows.shape
    outputs = []
    with torch.no_grad():
        for start in range(0, n, FIT_BATCH):
            rows = range(seed + start, seed + min(n, start + FIT_BATCH))
            outputs.append(model.predict(
                torch.as_tensor(windows[start:start + FIT_BATCH, :length - horizon]), horizon,
                sampler, seeded_generators(rows), noise=noise).cpu().numpy())
    return np.concatenate(outputs)


def _solve(target: float, grid: Sequence[float], values: Sequence[float], cap: float) -> float:
    """The grid value where the (made monotone) curve ``values`` reaches ``target``,
    linearly interpolated, extrapolated past the last point along the last segment."""
    curve = np.maximum.accumulate(np.asarray(values, dtype=np.float64))
    grid = np.asarray(grid, dtype=np.float64)
    if target <= curve[0]:
        return 0.0
    if target >= curve[-1]:
        rise = curve[-1] - curve[-2]
        value = grid[-1] + (target - curve[-1]) * (grid[-1] - grid[-2]) / rise if rise > 0 else grid[-1]
        return float(min(value, cap))
    index = int(np.searchsorted(curve, target, side="right"))
    low, high = curve[index - 1], curve[index]
    share = (target - low) / (high - low) if high > low else 0.0
    return float(min(grid[index - 1] + share * (grid[index] - grid[index - 1]), cap))


def fit_horizon_noise(model, windows: np.ndarray, horizon: int, parts: Mapping[str, slice],
                      sampler, seed: int = 0,
                      persistence_grid: Sequence[float] = PERSISTENCE_GRID,
                      correlation_grid: Sequence[float] = CORRELATION_GRID
                      ) -> tuple[dict, dict]:
    """Per codec part, phi (persistence) so that the model's horizons have the real lag-1
    correlation of consecutive steps (``step_correlation``), then rho (correlation) with that phi so that their
    half-horizon block means vary as the real ones do. windows (N, L, F) in [0, 1]: real
    training windows (context + horizon). Returns ({"correlation": {part: rho},
    "persistence": {part: phi}}, report {part: real and model figures on each grid})."""
    windows = np.asarray(windows, dtype=np.float32)
    n, length, features = windows.shape
    if n < 2:
        raise ValueError(f"regime fit: needs at least 2 windows, got {n}")
    for name, grid in (("persistence", persistence_grid), ("correlation", correlation_grid)):
        if grid[0] != 0.0 or len(grid) < 2 or list(grid) != sorted(grid) or grid[-1] >= 1.0:
            raise ValueError(f"regime fit: the {name} grid must rise from 0 to below 1 in 2+ "
                             f"values, got {grid}")
    real = windows[:, length - horizon:]
    real_lag, real_var = step_correlation(real, parts), block_variance(real, parts)
    lags = []
    for phi in persistence_grid:
        noise = HorizonNoise.of(features, persistence=torch.full((features,), float(phi)))
        lags.append(step_correlation(_predict_all(model, windows, horizon, sampler, seed, noise), parts))
        log.info("regime fit: %d horizons at persistence %.2f", n, phi)
    persistence = {name: round(_solve(real_lag[name], persistence_grid,
                                      [lag[name] for lag in lags], persistence_grid[-1]), 4)
                   for name in parts}
    phi_vector = HorizonNoise.from_parts({"persistence": persistence}, parts, features).persistence
    variances = []
    for rho in correlation_grid:
        noise = HorizonNoise.of(features, torch.full((features,), float(rho)), phi_vector)
        variances.append(block_variance(_predict_all(model, windows, horizon, sampler, seed, noise),
                                        parts))
        log.info("regime fit: %d horizons at correlation %.2f", n, rho)
    correlation = {name: round(_solve(real_var[name], correlation_grid,
                                      [v[name] for v in variances], MAX_CORRELATION), 4)
                   for name in parts}
    report = {name: {"real_lag1": real_lag[name], "model_lag1": [lag[name] for lag in lags],
                     "real_block_variance": real_var[name],
                     "model_block_variance": [v[name] for v in variances]} for name in parts}
    return {"correlation": correlation, "persistence": persistence}, report
