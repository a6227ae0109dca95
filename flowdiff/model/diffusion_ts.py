"""DiffusionTS: the network plus the diffusion process, with the public sampling API.

Data outside the model is in [0, 1]; the model works in [-1, 1] (x -> 2x - 1) and maps
back on output. Observed entries of infill/predict results are copied from the input
exactly (in [0, 1] space, so no rounding through the scaling).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from flowdiff.model.config import ModelConfig
from flowdiff.model.diffusion import DiffusionProcess
from flowdiff.model.network import DiffusionTSNetwork
from flowdiff.model.parameterization import Preconditioning
from flowdiff.model.rng import Generators, check_generators, randint_rows, randn_like_rows
from flowdiff.model.regimes import HorizonNoise, correlated_start
from flowdiff.model.samplers import Sampler, run_sampler


def to_model_space(x: torch.Tensor) -> torch.Tensor:
    return x * 2.0 - 1.0


def to_data_space(x: torch.Tensor) -> torch.Tensor:
    return (x + 1.0) * 0.5


class DiffusionTS(nn.Module):
    """Diffusion-TS model. ``cfg`` (a ModelConfig) fully determines the architecture."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"DiffusionTS: expected a ModelConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.network = DiffusionTSNetwork(cfg)
        self.process = DiffusionProcess(cfg.timesteps, cfg.cosine_s)
        self.precondition = Preconditioning(cfg.parameterization, cfg.timesteps, cfg.cosine_s,
                                            cfg.sigma_data)
        self.blocks = None   # block_length > 0: flowdiff.model.blocks.BlockConditioning

    @property
    def device(self) -> torch.device:
        return self.network.pos_enc.device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def prior(self):
        """The marginal prior of an ``edm-prior`` model (None until set)."""
        return self.precondition.prior

    def set_prior(self, prior) -> None:
        """Set the ``MarginalPrior`` (fitted on training rows) an ``edm-prior`` model
        denoises with; saved in its checkpoints."""
        if self.cfg.parameterization != "edm-prior":
            raise ValueError(f"set_prior: the model's parameterization is "
                             f"{self.cfg.parameterization!r}, not edm-prior")
        if prior.width != self.cfg.feature_size:
            raise ValueError(f"set_prior: prior fitted on {prior.width} features, the model has "
                             f"{self.cfg.feature_size}")
        self.precondition.prior = prior

    def set_blocks(self, blocks) -> None:
        """Set the ``BlockConditioning`` (fitted on training rows) of a model with
        ``block_length`` > 0; saved in its checkpoints."""
        if not self.cfg.block_length:
            raise ValueError("set_blocks: the model has block_length 0 (no block conditioning)")
        if (blocks.length, blocks.dims, blocks.width) != (self.cfg.block_length, self.cfg.block_dims,
                                                          self.cfg.feature_size):
            raise ValueError(f"set_blocks: fitted for blocks of {blocks.length} steps, {blocks.dims} "
                             f"dimensions, {blocks.width} features; the model has "
                             f"{self.cfg.block_length}, {self.cfg.block_dims}, {self.cfg.feature_size}")
        self.blocks = blocks

    def block_summaries(self, x: torch.Tensor) -> torch.Tensor | None:
        """Per-step block summaries (B, L, K) of windows x (B, L, F) in [0, 1]; None for a
        model without block conditioning."""
        if not self.cfg.block_length:
            return None
        if self.blocks is None:
            raise RuntimeError("block conditioning: the model has no fitted BlockConditioning; "
                               "set one (model.set_blocks(BlockConditioning.fit(rows, length, "
                               "dims))) before training or sampling")
        return self.blocks.summarise(x)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor,
                blocks: torch.Tensor | None = None) -> torch.Tensor:
        """Model space: x_t (B, L, F), t (B,) long -> x0_hat (B, L, F), unclipped
        (the network's output, preconditioned when cfg.parameterization is ``edm`` or
        ``edm-prior``). blocks: per-step block summaries (B, L, K), block-conditioned
        models only (None: unconditional)."""
        network = self.network if blocks is None else functools.partial(self.network, blocks=blocks)
        return self.precondition(network, x_t, t)

    def _denoiser(self, blocks: torch.Tensor | None):
        return self.denoise if blocks is None else functools.partial(
            self.denoise, blocks=blocks.to(self.device, torch.float32))

    def _check_windows(self, x: torch.Tensor, name: str, length: int | None = None) -> None:
        length = self.cfg.seq_len if length is None else length
        expected = (length, self.cfg.feature_size)
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or tuple(x.shape[1:]) != expected:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name}: expected a tensor of shape (B, {expected[0]}, {expected[1]}), "
                             f"got {got}")

    def loss(self, x0: torch.Tensor, generator: Generators | None = None,
             horizon: int | None = None, *, t: torch.Tensor | None = None,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        """Training loss on clean windows x0 (B, L, F) in [0, 1]; t and noise from ``generator``,
        or given as ``t`` (B,) and ``noise`` (B, L, F) (data-parallel ranks draw them for the
        global batch and pass their rows).

        horizon H (predict-mode training): the first L - H steps stay clean (observed), only
        the last H are noised, and the loss covers those H steps only.
        """
        self._check_windows(x0, "loss: x0")
        if horizon is not None and not 1 <= horizon < self.cfg.seq_len:
            raise ValueError(f"loss: horizon must be in [1, {self.cfg.seq_len - 1}], got {horizon!r}")
        blocks = self.block_summaries(x0)                                        # (B, L, K) | None
        x0 = to_model_space(x0)
        batch = x0.shape[0]
        if t is not None and noise is not None:
            t, noise = t.to(x0.device), noise.to(x0.device, x0.dtype)
        elif generator is None:
            t = torch.randint(0, self.cfg.timesteps, (batch,), device=x0.device)
            noise = torch.randn_like(x0)
        else:
            t = randint_rows(batch, self.cfg.timesteps, generator, x0.device)
            noise = randn_like_rows(x0.shape, generator, x0.device, x0.dtype)
        x_t = self.process.q_sample(x0, t, noise)                                 # (B, L, F)
        start = 0
        if horizon is not None:
            start = self.cfg.seq_len - horizon
            x_t = torch.cat([x0[:, :start], x_t[:, start:]], dim=1)              # clean context
        if blocks is not None and self.cfg.block_dropout > 0:
            # drop the summaries of a block_dropout share of the rows (learns the
            # unconditional case); decided by the row's own noise draw, so data-parallel
            # ranks and seeded runs agree without another random stream
            threshold = math.sqrt(2.0) * torch.erfinv(torch.tensor(1.0 - 2.0 * self.cfg.block_dropout))
            keep = (noise[:, 0, 0] <= threshold.to(noise.device)).to(blocks.dtype)   # (B,)
            blocks = blocks * keep[:, None, None]
        x0_hat = self.denoise(x_t, t, blocks)
        fourier_weight = self.cfg.fourier_weight_value if self.cfg.fourier_loss else 0.0
        weight = None
        if self.cfg.loss_weighting == "edm":
            weight = self.precondition.loss_weight(t, power=1 if self.cfg.loss == "l1" else 2)
        return self.process.loss(x0_hat[:, start:], x0[:, start:], t, fourier_weight,
                                 self.cfg.loss, weight)

    @torch.no_grad()
    def sample(self, n: int, sampler: Sampler, generator: Generators,
               blocks: torch.Tensor | None = None) -> torch.Tensor:
        """n unconditional windows (n, L, F) in [0, 1] (blocks: per-step block summaries
        (n, L, K) to condition on, block-conditioned models only)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"sample: n must be an integer >= 1, got {n!r}")
        check_generators(generator, n)
        shape = (n, self.cfg.seq_len, self.cfg.feature_size)
        x = run_sampler(self._denoiser(blocks), self.process, sampler, shape, generator, self.device)
        return to_data_space(x)

    @torch.no_grad()
    def infill(self, observed: torch.Tensor, mask: torch.Tensor, sampler: Sampler,
               generator: Generators, x_start: torch.Tensor | None = None,
               blocks: torch.Tensor | None = None) -> torch.Tensor:
        """Fill the unobserved entries. observed (B, L, F) in [0, 1], mask (B, L, F) bool
        True = observed -> (B, L, F); result[mask] == observed[mask] exactly. x_start: the
        sampler's starting noise x_T (default: drawn from ``generator``); blocks: per-step
        block summaries (B, L, K) to condition on."""
        self._check_windows(observed, "infill: observed")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != observed.shape:
            raise ValueError(f"infill: mask must be a bool tensor of shape {tuple(observed.shape)}, got "
                             f"{getattr(mask, 'dtype', type(mask).__name__)} "
                             f"{tuple(getattr(mask, 'shape', ()))}")
        observed_values = observed[mask]
        if observed_values.numel() and not torch.isfinite(observed_values).all():
            raise ValueError("infill: observed entries contain NaN or Inf")
        check_generators(generator, observed.shape[0])
        observed = observed.to(self.device, torch.float32)
        mask = mask.to(self.device)
        target = to_model_space(observed).masked_fill(~mask, 0.0)                # (B, L, F)
        x = run_sampler(self._denoiser(blocks), self.process, sampler, tuple(observed.shape), generator,
                        self.device, target=target, mask=mask, x_start=x_start)
        return torch.where(mask, observed, to_data_space(x))

    def predict(self, context: torch.Tensor, horizon: int, sampler: Sampler,
                generator: Generators, noise: HorizonNoise | None = None,
                horizon_blocks: torch.Tensor | None = None) -> torch.Tensor:
        """Continue context (B, C, F) in [0, 1] by ``horizon`` steps -> (B, horizon, F).
        C + horizon must equal cfg.seq_len. noise: the starting noise's dependence over the
        horizon's steps (``flowdiff.model.regimes``); None: independent (the plain sampler).
        horizon_blocks: per-step block summaries of the horizon (B, horizon, K) for a
        block-conditioned model (the context's own are computed from it); None:
        unconditional."""
        if not isinstance(horizon, int) or not 1 <= horizon < self.cfg.seq_len:
            raise ValueError(f"predict: horizon must be an integer in [1, {self.cfg.seq_len - 1}], "
                             f"got {horizon!r}")
        self._check_windows(context, "predict: context", self.cfg.seq_len - horizon)
        batch, n_context, n_feat = context.shape
        observed = torch.cat([context.to(self.device, torch.float32),
                              context.new_zeros((batch, horizon, n_feat), dtype=torch.float32,
                                                device=self.device)], dim=1)       # (B, L, F)
        mask = torch.zeros_like(observed, dtype=torch.bool)
        mask[:, :n_context] = True
        x_start = None
        if noise is not None:
            check_generators(generator, batch)
            x_start = correlated_start(tuple(observed.shape), generator, self.device, horizon,
                                       noise)
        blocks = None
        if horizon_blocks is not None:
            if not self.cfg.block_length:
                raise ValueError("predict: horizon_blocks given to a model without block conditioning")
            expected = (batch, horizon, self.cfg.block_dims)
            if tuple(horizon_blocks.shape) != expected:
                raise ValueError(f"predict: horizon_blocks must have shape {expected}, got "
                                 f"{tuple(horizon_blocks.shape)}")
            blocks = torch.cat([self.block_summaries(observed[:, :n_context]),
                                horizon_blocks.to(self.device, torch.float32)], dim=1)  # (B, L, K)
        return self.infill(observed, mask, sampler, generator, x_start,
                           blocks)[:, n_context:]                                # (B, H, F)
