"""Samplers: swappable objects over a step grid, driven by one loop (``run_sampler``).

Interface (diffusers-like): ``set_timesteps(T)`` fixes the grid of (t, t_next) pairs,
``step`` turns (x_t, x0_hat) into the mean and std of x_{t_next}, ``refine`` may improve the
unobserved part of a conditional sample (guided only), and ``add_noise`` (= q_sample) noises
the observation. Kinds:

- ``ddpm``        ancestral sampling: posterior q(x_{t_next} | x_t, x0_hat) mean + std; all T
                  steps by default, or S steps on the DDIM grid (the posterior of the skip).
- ``ddim``        DDIM on S steps over linspace(-1, T-1, S+1), eta configurable; with an
                  observation mask the observed entries are replaced by the noised
                  observation after each step (``run_sampler``, for every kind).
- ``replacement`` the same sampler as ``ddim`` (one class), under the name that says it is
                  used for infill/predict, with the conditional default grid (200 steps).
- ``guided``      as ``replacement`` plus the reconstruction-guided refinement of Diffusion-TS:
                  K sign-gradient steps of size eta_t on
                  coef * sum((mu - x')^2 / sigma) + mean_obs((net(x', t) - y)^2) / sigma.
- ``conditional`` DDIM grid; observed entries held at their clean values at every network
                  call (x_T included): what a model trained with ``predict_fraction`` > 0 saw.

Any kind takes EDM "churn" (Karras et al. 2022, algorithm 2; ``churn`` = S_churn > 0):
before each network call the noise level is raised from sigma_t to the first grid-free
timestep t_hat with sigma(t_hat) >= (1 + gamma) sigma_t, gamma = min(S_churn / S, sqrt(2) - 1),
by adding fresh noise of std sqrt(sigma_hat^2 - sigma_t^2) * S_noise in the x / sqrt(abar)
scaling; the step then starts from t_hat (sigma_t = sqrt(1 - abar_t) / sqrt(abar_t)).

Every sampler can run unconditionally or with an observation mask; ``guided`` and
``conditional`` require an observation. All noise is drawn through ``randn_like_rows``
(one generator or one per row); churn 0 draws nothing extra.
"""

from __future__ import annotations

from typing import Callable

import torch

from flowdiff.config import SAMPLER_KINDS
from flowdiff.model.diffusion import DiffusionProcess
from flowdiff.model.rng import Generators, randn_like_rows

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t (B,L,F), t (B,)) -> x0_hat

DEFAULT_DDIM_STEPS = 50
DEFAULT_CONDITIONAL_STEPS = 200


class SamplerError(ValueError):
    """A sampler was configured or used wrongly (message says what was expected)."""


def ddim_grid(timesteps: int, steps: int) -> list[tuple[int, int]]:
    """(t, t_next) pairs over linspace(-1, T-1, S+1) truncated to int, largest t first."""
    times = torch.linspace(-1, timesteps - 1, steps + 1, dtype=torch.float64).int().tolist()
    times = list(reversed(times))
    return list(zip(times[:-1], times[1:]))


class Sampler:
    """Base: DDIM-style step on a grid; subclasses change the grid, step or refinement."""

    kind = "ddim"
    needs_observation = False

    clean_observation = False     # True: observed entries are the clean y at every call
    default_cap: int | None = DEFAULT_DDIM_STEPS  # default S = min(T, cap); None: S = T

    def __init__(self, steps: int | None = None, eta: float = 0.0, churn: float = 0.0,
                 churn_noise: float = 1.0):
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise SamplerError(f"sampler steps: expected an integer >= 1, got {steps!r}")
        if not 0.0 <= eta <= 1.0:
            raise SamplerError(f"sampler eta: expected a number in [0, 1], got {eta!r}")
        if churn < 0 or churn_noise < 0:
            raise SamplerError(f"sampler churn, churn_noise: expected numbers >= 0, got {churn!r}, "
                               f"{churn_noise!r}")
        self.steps = steps
        self.eta = float(eta)
        self.churn_amount = float(churn)     # S_churn
        self.churn_noise = float(churn_noise)  # S_noise
        self.timesteps: int | None = None
        self.pairs: list[tuple[int, int]] = []

    def default_steps(self, timesteps: int) -> int:
        return timesteps if self.default_cap is None else min(timesteps, self.default_cap)

    def set_timesteps(self, timesteps: int) -> None:
        steps = self.steps if self.steps is not None else self.default_steps(timesteps)
        if steps > timesteps:
            raise SamplerError(f"{self.kind} sampler: steps={steps} exceeds the model's "
                               f"T={timesteps} diffusion steps")
        self.timesteps = timesteps
        self.pairs = ddim_grid(timesteps, steps)

    def step(self, process: DiffusionProcess, x_t: torch.Tensor, x0_hat: torch.Tensor,
             t: int, t_next: int) -> tuple[torch.Tensor, float]:
        """DDIM: mean of x_{t_next} and the std of the noise to add (0 = deterministic)."""
        if t_next < 0:
            return x0_hat, 0.0
        t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        eps = process.noise_from_x0(x_t, t_batch, x0_hat)                     # (B, L, F)
        abar = process.alphas_cumprod[t]
        abar_next = process.alphas_cumprod[t_next]
        sigma = self.eta * ((1 - abar / abar_next) * (1 - abar_next) / (1 - abar)).sqrt()
        c = (1 - abar_next - sigma ** 2).sqrt()
        return x0_hat * abar_next.sqrt() + c * eps, float(sigma)

    def churn_target(self, process: DiffusionProcess, t: int) -> tuple[int, float, float]:
        """(t_hat, sigma_t, sigma_hat): the first timestep >= t whose sigma reaches
        (1 + gamma) sigma_t (capped at T - 1); t_hat = t when churn is off."""
        if not self.pairs:
            raise SamplerError(f"{self.kind} sampler: set_timesteps(T) must be called before stepping")
        if self.churn_amount == 0.0:
            return t, 0.0, 0.0
        sigmas = process_sigmas(process)                                        # (T,) float64
        gamma = min(self.churn_amount / len(self.pairs), 2 ** 0.5 - 1)
        wanted = sigmas[t] * (1.0 + gamma)
        t_hat = min(int(torch.searchsorted(sigmas, wanted)), process.timesteps - 1)
        return max(t_hat, t), float(sigmas[t]), float(sigmas[max(t_hat, t)])

    def churn(self, process: DiffusionProcess, x_t: torch.Tensor, t: int,
              generators: Generators) -> tuple[torch.Tensor, int]:
        """EDM churn: x_t (B, L, F) at t -> (x at t_hat, t_hat). No draw when churn is off."""
        t_hat, sigma, sigma_hat = self.churn_target(process, t)
        if t_hat == t:
            return x_t, t
        abar, abar_hat = float(process.alphas_cumprod[t]), float(process.alphas_cumprod[t_hat])
        extra = (sigma_hat ** 2 - sigma ** 2) ** 0.5 * self.churn_noise
        noise = randn_like_rows(x_t.shape, generators, x_t.device, x_t.dtype)     # (B, L, F)
        x_scaled = x_t / abar ** 0.5 + extra * noise                            # x0 + sigma_hat eps
        return x_scaled * abar_hat ** 0.5, t_hat

    @staticmethod
    def add_noise(process: DiffusionProcess, x0: torch.Tensor, t: int,
                  noise: torch.Tensor) -> torch.Tensor:
        t_batch = torch.full((x0.shape[0],), t, device=x0.device, dtype=torch.long)
        return process.q_sample(x0, t_batch, noise)

    def refine(self, denoise: Denoiser, x: torch.Tensor, mean: torch.Tensor, std: float, t: int,
               target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Improve the unobserved entries of x (B, L, F); identity except for ``guided``."""
        return x


class DDPMSampler(Sampler):
    """Ancestral sampling: x_{t_next} ~ q(x_{t_next} | x_t, x0_hat). All T steps by default
    (the reference, using the precomputed posterior); with S < T steps it walks the DDIM
    grid and draws from the posterior of the whole skip, which equals DDIM with eta = 1."""

    kind = "ddpm"
    default_cap = None

    def step(self, process: DiffusionProcess, x_t: torch.Tensor, x0_hat: torch.Tensor,
             t: int, t_next: int) -> tuple[torch.Tensor, float]:
        if t_next == t - 1:   # one step: the reference's buffers, bit-identical to before
            t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
            mean = process.posterior_mean(x_t, t_batch, x0_hat)               # (B, L, F)
            std = float((0.5 * process.posterior_log_variance_clipped[t]).exp()) if t > 0 else 0.0
            return mean, std
        if t_next < 0:
            return x0_hat, 0.0
        abar = float(process.alphas_cumprod[t])
        abar_next = float(process.alphas_cumprod[t_next])
        beta_skip = 1.0 - abar / abar_next                                    # 1 - alpha_{t|t_next}
        coef_x0 = abar_next ** 0.5 * beta_skip / (1.0 - abar)
        coef_xt = (abar / abar_next) ** 0.5 * (1.0 - abar_next) / (1.0 - abar)
        std = (beta_skip * (1.0 - abar_next) / (1.0 - abar)) ** 0.5
        return coef_x0 * x0_hat + coef_xt * x_t, std


class DDIMSampler(Sampler):
    """DDIM; also the ``replacement`` infill sampler (the mask is applied by ``run_sampler``)."""
    kind = "ddim"


class ConditionalSampler(Sampler):
    """For models trained in predict mode: the network always sees the clean observation."""

    kind = "conditional"
    needs_observation = True
    clean_observation = True
    default_cap = DEFAULT_CONDITIONAL_STEPS

    @staticmethod
    def add_noise(process: DiffusionProcess, x0: torch.Tensor, t: int,
                  noise: torch.Tensor) -> torch.Tensor:
        return x0


class GuidedSampler(Sampler):
    kind = "guided"
    needs_observation = True
    default_cap = DEFAULT_CONDITIONAL_STEPS

    def __init__(self, steps: int | None = None, eta: float = 0.0,
                 guidance_coef: float = 1e-2, guidance_lr: float = 5e-2, churn: float = 0.0,
                 churn_noise: float = 1.0):
        super().__init__(steps, eta, churn, churn_noise)
        if guidance_coef < 0 or guidance_lr < 0:
            raise SamplerError("guided sampler: guidance_coef and guidance_lr must be >= 0, got "
                               f"{guidance_coef!r}, {guidance_lr!r}")
        self.guidance_coef = float(guidance_coef)
        self.guidance_lr = float(guidance_lr)

    def inner_steps(self, t: int) -> tuple[int, float]:
        """(K, eta_t) by phase of t relative to T."""
        total = self.timesteps
        if total is None:
            raise SamplerError("guided sampler: set_timesteps(T) must be called before stepping")
        if t < 0.05 * total:
            return 0, 0.0
        if t > 0.9 * total:
            return 3, self.guidance_lr
        if t > 0.75 * total:
            return 2, self.guidance_lr * 0.5
        return 1, self.guidance_lr * 0.25

    def refine(self, denoise: Denoiser, x: torch.Tensor, mean: torch.Tensor, std: float, t: int,
               target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n_inner, lr = self.inner_steps(t)
        if n_inner == 0:
            return x
        sigma = std if std > 0 else 1.0
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        weight = mask.to(x.dtype)                                             # (B, L, F)
        n_observed = weight.flatten(1).sum(dim=1).clamp(min=1.0)              # (B,)
        mean = mean.detach()
        refined = x.detach()
        for _ in range(n_inner):
            refined.requires_grad_(True)
            with torch.enable_grad():
                x0_hat = denoise(refined, t_batch)                            # (B, L, F)
                logp = self.guidance_coef * ((mean - refined) ** 2 / sigma).flatten(1).sum(dim=1)
                fit = (((x0_hat - target) ** 2) * weight).flatten(1).sum(dim=1) / n_observed / sigma
                (grad,) = torch.autograd.grad((logp + fit).sum(), refined)    # rows independent
            # A fresh Adagrad per inner step (the reference) moves by lr * sign(grad).
            refined = (refined - lr * grad.sign()).detach()
        return torch.where(mask, x, refined)


# name -> (class, default grid cap); the names are ``flowdiff.config.SAMPLER_KINDS``, the one
# list (a config names them before torch is imported), and each has an entry here (tested).
_SAMPLERS: dict[str, tuple[type[Sampler], int | None]] = {
    "ddpm": (DDPMSampler, None),
    "ddim": (DDIMSampler, DEFAULT_DDIM_STEPS),
    "replacement": (DDIMSampler, DEFAULT_CONDITIONAL_STEPS),
    "conditional": (ConditionalSampler, DEFAULT_CONDITIONAL_STEPS),
    "guided": (GuidedSampler, DEFAULT_CONDITIONAL_STEPS),
}


def make_sampler(kind: str, steps: int | None = None, eta: float = 0.0,
                 guidance_coef: float = 1e-2, guidance_lr: float = 5e-2, churn: float = 0.0,
                 churn_noise: float = 1.0) -> Sampler:
    """A sampler by kind: ddpm | ddim | guided | replacement | conditional.

    steps: grid size S (ddpm default T; ddim default min(T, 50); guided, replacement and
    conditional default min(T, 200)). eta: DDIM stochasticity (0 = deterministic; ignored
    by ddpm). guidance_coef / guidance_lr: the guided refinement's coef and eta (reference
    1e-2, 5e-2). churn / churn_noise: EDM S_churn (0 = off) and S_noise.
    """
    if kind not in _SAMPLERS:
        raise SamplerError(f"sampler kind: expected one of {', '.join(SAMPLER_KINDS)}, got {kind!r}")
    cls, cap = _SAMPLERS[kind]
    if cls is GuidedSampler:
        sampler = GuidedSampler(steps, eta, guidance_coef, guidance_lr, churn, churn_noise)
    else:
        sampler = cls(steps, eta, churn, churn_noise)
    sampler.kind, sampler.default_cap = kind, cap
    return sampler


def process_sigmas(process: DiffusionProcess) -> torch.Tensor:
    """sigma_t = sqrt(1 - abar_t) / sqrt(abar_t), (T,) float64 on the CPU, increasing in t."""
    abar = process.alphas_cumprod.detach().double().cpu()
    return ((1.0 - abar) / abar).sqrt()


def run_sampler(denoise: Denoiser, process: DiffusionProcess, sampler: Sampler,
                shape: tuple[int, int, int], generators: Generators, device: torch.device,
                target: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                x_start: torch.Tensor | None = None) -> torch.Tensor:
    """The one sampling loop. Returns x_0 (B, L, F) in [-1, 1] model space.

    x_start (B, L, F): the starting noise x_T (default: standard normal drawn from
    ``generators``; ``flowdiff.model.regimes.correlated_start`` correlates it over the
    horizon).

    target, mask (B, L, F): observation (model space) and True where observed; then the
    observed entries are replaced by q_sample(target, t) after every step and by target at
    the end (exactly); with ``clean_observation`` they are the clean target at every call.
    """
    if sampler.needs_observation and mask is None:
        raise SamplerError(f"{sampler.kind} sampler needs an observation: use infill/predict, "
                           "or kind 'ddim'/'ddpm' for unconditional sampling")
    sampler.set_timesteps(process.timesteps)
    batch = shape[0]
    x = randn_like_rows(shape, generators, device) if x_start is None else x_start  # x_T
    for t_grid, t_next in sampler.pairs:
        x, t = sampler.churn(process, x, t_grid, generators)                  # t_hat >= t_grid
        if mask is not None and sampler.clean_observation:
            x = torch.where(mask, target, x)
        t_batch = torch.full((batch,), t, device=device, dtype=torch.long)
        x0_hat = denoise(x, t_batch).clamp(-1.0, 1.0)                         # (B, L, F)
        mean, std = sampler.step(process, x, x0_hat, t, t_next)
        x = mean + std * randn_like_rows(shape, generators, device) if std > 0 else mean
        if mask is not None and t_next >= 0:
            x = sampler.refine(denoise, x, mean, std, t, target, mask)
            noised = sampler.add_noise(process, target, t_grid,
                                       randn_like_rows(shape, generators, device))
            x = torch.where(mask, noised, x)
    if mask is not None:
        x = torch.where(mask, target, x)
    return x
