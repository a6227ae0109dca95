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

``edm-prior``: as ``edm``, with the skip c_skip x~ (the posterior mean under a Gaussian
prior N(0, sd^2)) replaced by the posterior mean under the training data's own marginal
(``flowdiff.model.prior``): x0_hat = E_prior[x0 | x~] + c_out F(c_in x~, t).

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
    sqrt(abar) act on x_t directly; ``c_out``; ``sigma`` and ``inv_sqrt_abar`` (x~ = x_t /
    sqrt(abar)) for ``edm-prior``, whose ``prior`` (a ``MarginalPrior``) is set from data."""

    def __init__(self, kind: str, timesteps: int, cosine_s: float, sigma_data: float):
        super().__init__()
        if kind not in ("x0", "edm", "edm-prior"):
            raise ValueError(f"parameterization: expected x0, edm or edm-prior, got {kind!r}")
        self.kind = kind
        self.sigma_data = sigma_data
        self.prior = None   # edm-prior: flowdiff.model.prior.MarginalPrior (plain tensors)
        abar = torch.cumprod(1.0 - cosine_beta_schedule(timesteps, cosine_s), dim=0)  # (T,) f64
        coef = edm_coefficients(abar, sigma_data)
        if kind == "x0":
            skip, c_out, in_scale = torch.zeros_like(abar), torch.ones_like(abar), torch.ones_like(abar)
        else:
            skip, c_out, in_scale = coef["c_skip"] / abar.sqrt(), coef["c_out"], coef["c_in"] / abar.sqrt()
        for name, value in (("skip", skip), ("c_out", c_out), ("in_scale", in_scale),
                            ("sigma", coef["sigma"]), ("inv_sqrt_abar", 1.0 / abar.sqrt())):
            self.register_buffer(name, value.float(), persistent=False)

    def forward(self, network: Network, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t (B, L, F) model space, t (B,) long -> x0_hat (B, L, F), unclipped."""
        if self.kind == "x0":
            return network(x_t, t)
        out = network(_at(self.in_scale, t) * x_t, t)                            # F(c_in x~, t)
        if self.kind == "edm-prior":
            if self.prior is None:
                raise RuntimeError("parameterization edm-prior: the model has no marginal prior; "
                                   "fit one on the training rows (model.set_prior("
                                   "MarginalPrior.fit(rows, groups))) before training or sampling")
            skip = self.prior(_at(self.inv_sqrt_abar, t) * x_t, self.sigma.gather(0, t))
            return skip + _at(self.c_out, t) * out
        return _at(self.skip, t) * x_t + _at(self.c_out, t) * out               # (B, L, F)

    def loss_weight(self, t: torch.Tensor, power: int) -> torch.Tensor:
        """EDM weighting 1 / c_out(t)^power, (B,); uniform (ones) for ``x0``."""
        return self.c_out.gather(0, t) ** -power
