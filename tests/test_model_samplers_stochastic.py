"""Issue 11 samplers: strided ancestral DDPM, EDM churn, the clean-context conditional sampler.
Each step is checked against closed-form Gaussian math on tiny cases."""

from __future__ import annotations

import math

import pytest
import torch

from flowdiff.model import SamplerError, make_sampler
from flowdiff.model.diffusion import DiffusionProcess
from flowdiff.model.samplers import ddim_grid, process_sigmas, run_sampler
from tinymodel import gens, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(one_torch_thread):
    return tiny_model()


# ---- ancestral DDPM on S < T steps -----------------------------------------------------------

def test_strided_ddpm_step_is_the_gaussian_posterior_of_the_skip():
    """q(x_s | x_t, x0) from the joint Gaussian: x_s = sqrt(a_s) x0 + sqrt(1-a_s) e1,
    x_t = sqrt(a_t/a_s) x_s + sqrt(1-a_t/a_s) e2 => mean = sqrt(a_s) x0 + C/V (x_t - sqrt(a_t) x0),
    var = (1 - a_s) - C^2/V with C = Cov(x_s, x_t) = sqrt(a_t/a_s)(1-a_s), V = 1 - a_t."""
    process = DiffusionProcess(50)
    sampler = make_sampler("ddpm", steps=5)
    sampler.set_timesteps(50)
    assert sampler.pairs == ddim_grid(50, 5)
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(2, 12, 3, generator=g, dtype=torch.float64)
    x0_hat = torch.rand(2, 12, 3, generator=g, dtype=torch.float64) * 2 - 1
    for t, s in [(49, 39), (29, 19), (9, -1)]:
        mean, std = sampler.step(process, x_t, x0_hat, t, s)
        if s < 0:
            assert std == 0.0 and torch.equal(mean, x0_hat)
            continue
        a_t, a_s = process.alphas_cumprod[t].item(), process.alphas_cumprod[s].item()
        cov, var_t = math.sqrt(a_t / a_s) * (1 - a_s), 1 - a_t
        expected = math.sqrt(a_s) * x0_hat + cov / var_t * (x_t - math.sqrt(a_t) * x0_hat)
        torch.testing.assert_close(mean, expected, atol=1e-6, rtol=1e-6)
        assert std == pytest.approx(math.sqrt((1 - a_s) - cov ** 2 / var_t), rel=1e-5)
        # ... which is DDIM with eta = 1 on the same pair
        ddim = make_sampler("ddim", steps=5, eta=1.0)
        ddim.set_timesteps(50)
        ddim_mean, ddim_std = ddim.step(process, x_t.float(), x0_hat.float(), t, s)
        torch.testing.assert_close(mean.float(), ddim_mean, atol=3e-4, rtol=1e-4)  # DDIM in float32
        assert std == pytest.approx(ddim_std, rel=1e-4)


def test_full_ddpm_grid_and_step_are_unchanged():
    sampler = make_sampler("ddpm")
    sampler.set_timesteps(50)
    assert sampler.pairs == [(t, t - 1) for t in range(49, -1, -1)]


def test_strided_ddpm_predicts_and_reproduces_with_a_seed(model):
    context = torch.rand(3, 8, 3, generator=torch.Generator().manual_seed(2))
    sampler = make_sampler("ddpm", steps=10)
    a = model.predict(context, 4, sampler, gens([1, 2, 3]))
    b = model.predict(context, 4, sampler, gens([1, 2, 3]))
    c = model.predict(context, 4, sampler, gens([1, 2, 4]))
    assert torch.equal(a, b) and torch.equal(a[:2], c[:2]) and not torch.equal(a[2], c[2])


# ---- EDM churn ---------------------------------------------------------------------------------

def test_churn_target_is_the_first_timestep_reaching_the_raised_sigma():
    process = DiffusionProcess(50)
    sigmas = process_sigmas(process)
    assert bool((sigmas[1:] > sigmas[:-1]).all())
    sampler = make_sampler("ddim", steps=10, churn=2.0)      # gamma = min(2/10, sqrt2 - 1) = 0.2
    sampler.set_timesteps(50)
    for t in (3, 20, 40):
        t_hat, sigma, sigma_hat = sampler.churn_target(process, t)
        wanted = 1.2 * sigmas[t].item()
        assert sigma == pytest.approx(sigmas[t].item()) and sigma_hat >= wanted
        assert t_hat > t and sigmas[t_hat - 1].item() < wanted
    assert sampler.churn_target(process, 49)[0] == 49        # capped at T - 1
    big = make_sampler("ddim", steps=2, churn=100.0)        # gamma capped at sqrt2 - 1
    big.set_timesteps(50)
    t_hat, sigma, sigma_hat = big.churn_target(process, 10)
    assert sigma_hat >= math.sqrt(2) * sigma and sigmas[t_hat - 1].item() < math.sqrt(2) * sigma
    off = make_sampler("ddim", steps=10)
    off.set_timesteps(50)
    assert off.churn_target(process, 20)[0] == 20


def test_churn_adds_the_missing_noise_in_the_scaled_variable():
    """x~_hat = x_t / sqrt(a_t) + sqrt(sigma_hat^2 - sigma_t^2) S_noise eps, returned as
    sqrt(a_hat) x~_hat; for x_t ~ q(x_t | x0) the result is distributed as q(x_t_hat | x0)."""
    process = DiffusionProcess(50)
    sampler = make_sampler("ddim", steps=10, churn=3.0, churn_noise=1.0)
    sampler.set_timesteps(50)
    t = 15
    t_hat, sigma, sigma_hat = sampler.churn_target(process, t)
    x_t = torch.randn(2, 12, 3, generator=torch.Generator().manual_seed(3))
    out, got_t = sampler.churn(process, x_t, t, torch.Generator().manual_seed(4))
    eps = torch.randn(2, 12, 3, generator=torch.Generator().manual_seed(4))
    a_t, a_hat = process.alphas_cumprod[t].item(), process.alphas_cumprod[t_hat].item()
    expected = math.sqrt(a_hat) * (x_t / math.sqrt(a_t) + math.sqrt(sigma_hat ** 2 - sigma ** 2) * eps)
    assert got_t == t_hat
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)

    # Monte Carlo: mean sqrt(a_hat) x0 and std sqrt(1 - a_hat), like a fresh q_sample at t_hat
    n, x0 = 200_000, 0.6
    g = torch.Generator().manual_seed(5)
    t_batch = torch.full((n,), t, dtype=torch.long)
    x_t = process.q_sample(torch.full((n, 1, 1), x0), t_batch, torch.randn(n, 1, 1, generator=g))
    out, _ = sampler.churn(process, x_t, t, g)
    assert out.mean().item() == pytest.approx(math.sqrt(a_hat) * x0, abs=0.01)
    assert out.std().item() == pytest.approx(math.sqrt(1 - a_hat), rel=0.01)


def test_churn_sampling_is_seeded_and_draws_nothing_when_off(model):
    plain = model.sample(3, make_sampler("ddim", steps=10), torch.Generator().manual_seed(6))
    zero = model.sample(3, make_sampler("ddim", steps=10, churn=0.0), torch.Generator().manual_seed(6))
    assert torch.equal(plain, zero)
    churned = [model.sample(3, make_sampler("ddim", steps=10, churn=5.0), torch.Generator().manual_seed(6))
               for _ in range(2)]
    assert torch.equal(churned[0], churned[1]) and not torch.equal(churned[0], plain)
    assert churned[0].min() >= 0 and churned[0].max() <= 1


def test_churn_calls_the_network_at_the_raised_timesteps():
    process = DiffusionProcess(50)
    calls = []

    def denoise(x, t):
        calls.append(int(t[0]))
        return torch.zeros_like(x)

    sampler = make_sampler("ddim", steps=5, churn=2.0)
    run_sampler(denoise, process, sampler, (1, 4, 2), torch.Generator().manual_seed(0), "cpu")
    grid = [t for t, _ in ddim_grid(50, 5)]
    assert calls == [sampler.churn_target(process, t)[0] for t in grid]
    assert calls[0] == 49 and all(c > t for c, t in zip(calls[1:], grid[1:]))


# ---- conditional (clean-context) sampler -------------------------------------------------------

def test_conditional_sampler_shows_the_clean_observation_at_every_call():
    process = DiffusionProcess(50)
    inputs = []

    def denoise(x, t):
        inputs.append(x.clone())
        return x.clamp(-1, 1) * 0.5

    g = torch.Generator().manual_seed(7)
    target = torch.rand(2, 6, 2, generator=g) * 2 - 1
    mask = torch.zeros(2, 6, 2, dtype=torch.bool)
    mask[:, :4] = True
    target = target.masked_fill(~mask, 0.0)
    for churn in (0.0, 3.0):
        inputs.clear()
        sampler = make_sampler("conditional", steps=6, eta=0.5, churn=churn)
        out = run_sampler(denoise, process, sampler, (2, 6, 2), gens([1, 2]), "cpu", target=target, mask=mask)
        assert len(inputs) == 6
        for x in inputs:                        # x_T included, and after churn noise
            assert torch.equal(x[mask], target[mask])
            assert not torch.equal(x[~mask], target[~mask])
        assert torch.equal(out[mask], target[mask])


def test_conditional_sampler_needs_an_observation(model):
    with pytest.raises(SamplerError, match="needs an observation"):
        model.sample(2, make_sampler("conditional", steps=5), torch.Generator().manual_seed(0))
    context = torch.rand(2, 8, 3, generator=torch.Generator().manual_seed(1))
    a = model.predict(context, 4, make_sampler("conditional", steps=10, eta=1.0), gens([3, 4]))
    b = model.predict(context, 4, make_sampler("conditional", steps=10, eta=1.0), gens([3, 4]))
    assert a.shape == (2, 4, 3) and torch.equal(a, b)
