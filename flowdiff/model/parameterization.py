"""How the network's output becomes x0_hat: directly (``x0``) or EDM-preconditioned (``edm``).

``x0`` (the Diffusion-TS reference): x0_hat = F(x_t, t).

``edm`` (Karras et al. 2022, "Elucidating the design space", table 1) written for this VP
schedule. In the scaled variable x~ = x_t / sqrt(abar_t) = x0 + sigma_t eps, with
sigma_t = sqrt(1 - abar_t) / sqrt(abar_t) and sd = sigma_data:

    x0_hat = c_skip x~ + c_out F(c_in x~, t)
    c_skip = sd^2 / (sigma^2 + sd^2)
    c_out  = sigma sd / sqrt(sigma^2 + sd^2)
    c_in   = 1 / sqrt(sigma^2 + sd^2)

so at low noise (sigma -> 0) x0_hat -> x~ whatever F outputs: the identity is free and F only
has to model the residual, scaled to unit variance. c_noise stays the network's integer
timestep (t is a monotone function of sigma), so the network itself is unchanged.

The loss weighting ``edm`` makes the loss unit-weighted on F's own scale:
x0_hat - x0 = c_out (F - F_target), so |x0_hat - x0|^p / c_out^p = |F - F_target|^p.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from flowdiff.model.diffusion import cosine_beta_schedule

Network = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]   # (x (B,L,F), t (B,)) -> (B,L,F)


def edm_coefficients(abar: torch.Tensor, sigma_data: float) -> dict[str, torch.Tensor]:
    """sigma, c_skip, c_out, c_in (each like abar, (T,)) for the VP schedule ``abar``."""
    sigma = ((1.0 - abar) / abar).sqrt()
    total = sigma ** 2 + sigma_data ** 2
    return {"sigma": sigma,
            "c_skip": sigma_data ** 2 / total,
            "c_out": sigma * sigma_data / total.sqrt(),
            "c_in": 1.0 / total.sqrt()}


def _at(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """values (T,) gathered at t (B,) -> (B, 1, 1)."""
    return values.gather(0, t)[:, None, None]


class Preconditioning(nn.Module):
    """x0_hat from the network's output. Buffers (T,) are float32, derived from the schedule
    (not saved in checkpoints): ``skip`` = c_skip / sqrt(abar) and ``in_scale`` = c_in /
    sqrt(abar) act on x_t directly; ``c_out``."""

    def __init__(self, kind: str, timesteps: int, cosine_s: float, sigma_data: float):
        super().__init__()
        if kind not in ("x0", "edm"):
            raise ValueError(f"parameterization: expected x0 or edm, got {kind!r}")
        self.kind = kind
        self.sigma_data = sigma_data
        abar = torch.cumprod(1.0 - cosine_beta_schedule(timesteps, cosine_s), dim=0)  # (T,) f64
        if kind == "edm":
            coef = edm_coefficients(abar, sigma_data)
            skip, c_out, in_scale = coef["c_skip"] / abar.sqrt(), coef["c_out"], coef["c_in"] / abar.sqrt()
        else:
            skip, c_out, in_scale = torch.zeros_like(abar), torch.ones_like(abar), torch.ones_like(abar)
        for name, value in (("skip", skip), ("c_out", c_out), ("in_scale", in_scale)):
            self.register_buffer(name, value.float(), persistent=False)

    def forward(self, network: Network, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t (B, L, F) model space, t (B,) long -> x0_hat (B, L, F), unclipped."""
        if self.kind == "x0":
            return network(x_t, t)
        out = network(_at(self.in_scale, t) * x_t, t)                            # F(c_in x~, t)
        return _at(self.skip, t) * x_t + _at(self.c_out, t) * out               # (B, L, F)

    def loss_weight(self, t: torch.Tensor, power: int) -> torch.Tensor:
        """EDM weighting 1 / c_out(t)^power, (B,); uniform (ones) for ``x0``."""
        return self.c_out.gather(0, t) ** -power
