"""The Gaussian diffusion process of Diffusion-TS, separate from the network.

Cosine beta schedule (Nichol & Dhariwal, s = 0.008, betas clipped at 0.999), forward
noising q_sample, the posterior used by ancestral sampling, and the training loss:
L1 + w_ff * Fourier L1 (or both squared: L2), per-sample mean, reweighted by
w_t = sqrt(alpha_t) * sqrt(1 - abar_t) / beta_t / 100 (or weights given by the caller).
All tensors here live in [-1, 1].
"""

from __future__ import annotations

import math

import torch
from torch import nn


def cosine_beta_schedule(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """betas (T,) float64: abar(t) = cos^2(((t/T) + s) / (1 + s) * pi/2) / abar(0)."""
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)       # (T+1,)
    abar = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    abar = abar / abar[0]
    betas = 1 - (abar[1:] / abar[:-1])
    return betas.clamp(0, 0.999)


def _at(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """values (T,) gathered at t (B,) -> (B, 1, 1) for broadcasting over (B, L, F)."""
    return values.gather(0, t)[:, None, None]


class DiffusionProcess(nn.Module):
    """Precomputed schedule buffers (float32, not saved in checkpoints: derived from T, s)."""

    def __init__(self, timesteps: int, s: float = 0.008):
        super().__init__()
        self.timesteps = timesteps
        betas = cosine_beta_schedule(timesteps, s)                               # (T,)
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        buffers = {
            "betas": betas,
            "alphas_cumprod": abar,
            "alphas_cumprod_prev": abar_prev,
            "sqrt_alphas_cumprod": abar.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - abar).sqrt(),
            "sqrt_recip_alphas_cumprod": (1.0 / abar).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / abar - 1).sqrt(),
            "posterior_variance": post_var,
            "posterior_log_variance_clipped": post_var.clamp(min=1e-20).log(),
            "posterior_mean_coef1": betas * abar_prev.sqrt() / (1.0 - abar),
            "posterior_mean_coef2": (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
            "loss_weight": alphas.sqrt() * (1.0 - abar).sqrt() / betas / 100.0,
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float(), persistent=False)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps; x0, noise (B, L, F), t (B,)."""
        return _at(self.sqrt_alphas_cumprod, t) * x0 + _at(self.sqrt_one_minus_alphas_cumprod, t) * noise

    def noise_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """eps implied by x_t and a predicted x0 (B, L, F)."""
        return (_at(self.sqrt_recip_alphas_cumprod, t) * x_t - x0) / _at(self.sqrt_recipm1_alphas_cumprod, t)

    def posterior_mean(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Mean of q(x_{t-1} | x_t, x0), (B, L, F)."""
        return _at(self.posterior_mean_coef1, t) * x0 + _at(self.posterior_mean_coef2, t) * x_t

    def loss(self, x0_hat: torch.Tensor, x0: torch.Tensor, t: torch.Tensor,
             fourier_weight: float, norm: str = "l1",
             weight: torch.Tensor | None = None) -> torch.Tensor:
        """Reweighted distance + Fourier loss, a scalar. x0_hat, x0 (B, L, F); t (B,).

        norm: ``l1`` (the reference) or ``l2`` (squared differences, Fourier term too).
        weight: per-sample weights (B,); default w_t of Diffusion-TS (``loss_weight[t]``).
        """
        distance = _DISTANCES[norm]
        per_element = distance(x0_hat - x0)                                      # (B, L, F)
        if fourier_weight > 0:
            fft_hat = torch.fft.fft(x0_hat, dim=1, norm="forward")               # (B, L, F) complex
            fft_true = torch.fft.fft(x0, dim=1, norm="forward")
            per_element = per_element + fourier_weight * (
                distance(fft_hat.real - fft_true.real) + distance(fft_hat.imag - fft_true.imag))
        per_sample = per_element.flatten(1).mean(dim=1)                          # (B,)
        if weight is None:
            weight = self.loss_weight.gather(0, t)
        return (per_sample * weight).mean()


_DISTANCES = {"l1": torch.abs, "l2": torch.square}
