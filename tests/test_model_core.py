"""Diffusion-TS core: schedule, loss, network, samplers, per-row generators, checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowdiff.model import (CheckpointError, ConfigError, DiffusionTS, ModelConfig, SamplerError,
                            load_checkpoint, make_sampler, randn_like_rows, save_checkpoint)
from flowdiff.model.diffusion import DiffusionProcess, cosine_beta_schedule
from flowdiff.model.network import fourier_season
from flowdiff.model.samplers import ddim_grid
from tinymodel import TINY, gens, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(one_torch_thread):
    return tiny_model()


# ---- schedule and loss -------------------------------------------------------------------

def test_cosine_schedule_matches_closed_form():
    T, s = 100, 0.008
    betas = cosine_beta_schedule(T, s)

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    for t in (0, 1, 10, 50, 98):
        abar_t, abar_prev = f(t + 1) / f(0), f(t) / f(0)
        assert betas[t].item() == pytest.approx(min(1 - abar_t / abar_prev, 0.999), rel=1e-9)
    assert betas[-1].item() == pytest.approx(0.999)  # last beta is clipped
    process = DiffusionProcess(T, s)
    abar = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(process.alphas_cumprod, abar.float())
    t = 37
    w = math.sqrt(1 - betas[t].item()) * math.sqrt(1 - abar[t].item()) / betas[t].item() / 100
    assert process.loss_weight[t].item() == pytest.approx(w, rel=1e-5)


def test_q_sample_and_loss_match_formula():
    process = DiffusionProcess(50)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 12, 3, generator=g) * 2 - 1
    noise = torch.randn(4, 12, 3, generator=g)
    t = torch.tensor([0, 5, 20, 49])
    xt = process.q_sample(x0, t, noise)
    abar = process.alphas_cumprod[t][:, None, None]
    torch.testing.assert_close(xt, abar.sqrt() * x0 + (1 - abar).sqrt() * noise)

    x0_hat = x0 + 0.1 * torch.randn(4, 12, 3, generator=g)
    w_ff = math.sqrt(12) / 5
    manual = []
    for i in range(4):
        a, b = x0_hat[i], x0[i]
        fa, fb = torch.fft.fft(a, dim=0) / 12, torch.fft.fft(b, dim=0) / 12
        per = (a - b).abs() + w_ff * ((fa.real - fb.real).abs() + (fa.imag - fb.imag).abs())
        manual.append(per.mean() * process.loss_weight[t[i]])
    expected = torch.stack(manual).mean()
    assert process.loss(x0_hat, x0, t, w_ff).item() == pytest.approx(expected.item(), rel=1e-5)


# ---- network --------------------------------------------------------------------------------

def test_parameter_counts_match_reference_sizes():
    stocks = DiffusionTS(ModelConfig(feature_size=6, n_layer_enc=2, n_layer_dec=2, d_model=64))
    etth = DiffusionTS(ModelConfig(feature_size=7, n_layer_enc=3, n_layer_dec=2, d_model=64))
    assert 0.28e6 < stocks.num_parameters() < 0.30e6
    assert 0.34e6 < etth.num_parameters() < 0.36e6


def test_fourier_season_keeps_top_k_bins():
    # L=24: 13 rfft bins, minus DC and Nyquist -> 11, K = int(ln 11) = 2.
    steps = torch.arange(24, dtype=torch.float32)
    pure = (torch.cos(2 * math.pi * 3 * steps / 24) + 0.5 * torch.sin(2 * math.pi * 5 * steps / 24))
    weak = 0.01 * torch.cos(2 * math.pi * 7 * steps / 24)
    h = (pure + weak + 4.0)[None, :, None]                         # (1, 24, 1), DC offset dropped
    season = fourier_season(h)
    # The rebuild of the two kept bins is |X_k| cos(..) + conjugate = L * the component.
    torch.testing.assert_close(season[0, :, 0], 24 * pure, atol=1e-3, rtol=1e-4)


def test_fourier_season_is_the_cosine_sum_of_the_kept_bins_at_the_window_length():
    # The packaged window (L = 500, K = int(ln 249) = 5): the float32 result equals
    # sum_k 2 |c_k| cos(2 pi k n / L + angle c_k) over each channel's top-K bins,
    # evaluated in float64 (phases up to pi L, where float32 cosines lose ~1e-4).
    torch.manual_seed(0)
    h = torch.randn(2, 500, 3)
    season = fourier_season(h)
    spectrum = torch.fft.rfft(h.double(), dim=1)[:, 1:-1]              # bins 1..249
    _, index = torch.topk(spectrum.abs(), 5, dim=1)                     # (2, 5, 3)
    coeff = torch.gather(spectrum, 1, index)
    bins = (index + 1).double()
    n = torch.arange(500, dtype=torch.float64)
    expected = (2 * coeff.abs()[:, :, None, :]
                * torch.cos(2 * math.pi * bins[:, :, None, :] * n[None, None, :, None] / 500
                            + coeff.angle()[:, :, None, :])).sum(dim=1)  # (2, 500, 3)
    scale = expected.abs().max().item()
    assert (season.double() - expected).abs().max().item() < 1e-5 * scale


def test_denoise_shapes_and_row_independence(model):
    x = torch.randn(5, 12, 3)
    t = torch.tensor([0, 10, 20, 30, 49])
    out = model.denoise(x, t)
    assert out.shape == (5, 12, 3)
    alone = model.denoise(x[2:3], t[2:3])
    torch.testing.assert_close(out[2:3], alone, atol=1e-5, rtol=1e-5)


def test_model_config_validation_lists_problems():
    with pytest.raises(ConfigError) as err:
        ModelConfig.from_dict({"seq_len": 2, "d_modle": 64, "kernel_size": 2, "dropout": "x"})
    msg = str(err.value)
    assert "model.d_modle: unknown key" in msg and "model.dropout: expected a number" in msg
    with pytest.raises(ConfigError) as err:
        ModelConfig.from_dict({"seq_len": 2, "kernel_size": 2, "n_heads": 3})
    msg = str(err.value)
    assert "model.seq_len" in msg and "model.kernel_size" in msg and "model.n_heads" in msg
    assert ModelConfig.from_dict(TINY.to_dict()) == TINY


# ---- samplers -------------------------------------------------------------------------------

def test_ddim_grid_is_truncated_linspace():
    assert ddim_grid(10, 10) == [(t, t - 1) for t in range(9, -1, -1)]
    assert ddim_grid(500, 2) == [(499, 249), (249, -1)]


def test_one_ddim_step_matches_formula():
    process = DiffusionProcess(50)
    g = torch.Generator().manual_seed(3)
    x_t = torch.randn(2, 12, 3, generator=g)
    x0_hat = torch.rand(2, 12, 3, generator=g) * 2 - 1
    t, t_next = 40, 30
    a, an = process.alphas_cumprod[t].item(), process.alphas_cumprod[t_next].item()
    eps = (x_t / math.sqrt(a) - x0_hat) / math.sqrt(1 / a - 1)
    for eta in (0.0, 0.7):
        sampler = make_sampler("ddim", steps=5, eta=eta)
        sampler.set_timesteps(50)
        mean, std = sampler.step(process, x_t, x0_hat, t, t_next)
        sigma = eta * math.sqrt((1 - a / an) * (1 - an) / (1 - a))
        expected = math.sqrt(an) * x0_hat + math.sqrt(1 - an - sigma ** 2) * eps
        torch.testing.assert_close(mean, expected, atol=1e-5, rtol=1e-5)
        assert std == pytest.approx(sigma, rel=1e-5, abs=1e-12)
    final, std = sampler.step(process, x_t, x0_hat, 4, -1)
    assert std == 0.0 and torch.equal(final, x0_hat)


def test_ddpm_step_is_the_posterior():
    process = DiffusionProcess(50)
    x_t, x0_hat = torch.randn(2, 12, 3), torch.rand(2, 12, 3)
    sampler = make_sampler("ddpm")
    sampler.set_timesteps(50)
    assert len(sampler.pairs) == 50
    t = 20
    b, a = process.betas[t].item(), process.alphas_cumprod[t].item()
    ap = process.alphas_cumprod[t - 1].item()
    mean, std = sampler.step(process, x_t, x0_hat, t, t - 1)
    expected = b * math.sqrt(ap) / (1 - a) * x0_hat + (1 - ap) * math.sqrt(1 - b) / (1 - a) * x_t
    torch.testing.assert_close(mean, expected, atol=1e-5, rtol=1e-5)
    assert std == pytest.approx(math.sqrt(b * (1 - ap) / (1 - a)), rel=1e-4)


def test_make_sampler_rejects_bad_arguments():
    with pytest.raises(SamplerError, match="expected one of ddpm, ddim, guided, replacement"):
        make_sampler("euler")
    with pytest.raises(SamplerError, match="steps"):
        make_sampler("ddim", steps=0)
    with pytest.raises(SamplerError, match="exceeds"):
        make_sampler("ddim", steps=51).set_timesteps(50)
    with pytest.raises(SamplerError, match="ddpm sampler: steps=60 exceeds"):
        make_sampler("ddpm", steps=60).set_timesteps(50)
    with pytest.raises(SamplerError, match="churn"):
        make_sampler("ddim", churn=-1.0)


@pytest.mark.parametrize("kind,steps", [("ddpm", None), ("ddim", 10)])
def test_unconditional_sample_shape_range_and_seed(model, kind, steps):
    sampler = make_sampler(kind, steps=steps)
    a = model.sample(3, sampler, torch.Generator().manual_seed(5))
    b = model.sample(3, sampler, torch.Generator().manual_seed(5))
    c = model.sample(3, sampler, torch.Generator().manual_seed(6))
    assert a.shape == (3, 12, 3)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0.0 and a.max() <= 1.0  # x0_hat clamped to [-1, 1] -> [0, 1]


def test_guided_sampler_requires_an_observation(model):
    with pytest.raises(SamplerError, match="needs an observation"):
        model.sample(2, make_sampler("guided", steps=5), torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", ["guided", "replacement", "ddim"])
def test_predict_keeps_observed_entries_exactly(model, kind):
    g = torch.Generator().manual_seed(11)
    context = torch.rand(4, 8, 3, generator=g)
    sampler = make_sampler(kind, steps=10)
    out = model.predict(context, 4, sampler, gens([1, 2, 3, 4]))
    assert out.shape == (4, 4, 3)
    observed = torch.cat([context, torch.zeros(4, 4, 3)], dim=1)
    mask = torch.zeros(4, 12, 3, dtype=torch.bool)
    mask[:, :8] = True
    full = model.infill(observed, mask, sampler, gens([1, 2, 3, 4]))
    assert torch.equal(full[:, :8], context)          # bit-exact, not approximately
    torch.testing.assert_close(full[:, 8:], out)
    assert torch.isfinite(full).all()


def test_replacement_is_ddim_with_a_mask(model):
    """The kinds are listed once (flowdiff.config.SAMPLER_KINDS), each registered; the
    replacement sampler is DDIM under its infill name: the same predict output for the same
    steps and seeds, only its default grid differs (200 vs 50 steps)."""
    from flowdiff.config import SAMPLER_KINDS
    from flowdiff.model.samplers import _SAMPLERS

    assert set(_SAMPLERS) == set(SAMPLER_KINDS)
    context = torch.rand(2, 8, 3, generator=torch.Generator().manual_seed(5))
    ddim = model.predict(context, 4, make_sampler("ddim", steps=10), gens([3, 4]))
    replaced = model.predict(context, 4, make_sampler("replacement", steps=10), gens([3, 4]))
    assert torch.equal(ddim, replaced)
    assert make_sampler("replacement").default_steps(500) == 200
    assert make_sampler("ddim").default_steps(500) == 50
    assert make_sampler("ddpm").default_steps(500) == 500


def test_infill_with_scattered_mask_keeps_observed(model):
    g = torch.Generator().manual_seed(2)
    observed = torch.rand(2, 12, 3, generator=g)
    mask = torch.rand(2, 12, 3, generator=g) < 0.4
    out = model.infill(observed, mask, make_sampler("guided", steps=20), torch.Generator().manual_seed(0))
    assert torch.equal(out[mask], observed[mask])
    assert not torch.equal(out[~mask], observed[~mask])


def test_guided_refinement_changes_unobserved_part(model):
    context = torch.rand(2, 8, 3, generator=torch.Generator().manual_seed(4))
    guided = model.predict(context, 4, make_sampler("guided", steps=10), gens([7, 8]))
    replaced = model.predict(context, 4, make_sampler("replacement", steps=10), gens([7, 8]))
    assert not torch.allclose(guided, replaced)


@pytest.mark.parametrize("kind", ["guided", "ddpm"])
def test_row_output_independent_of_batch_neighbours(model, kind):
    """A stream's output depends only on its own generator, not on the other rows."""
    steps = None if kind == "ddpm" else 10
    g = torch.Generator().manual_seed(9)
    context = torch.rand(3, 8, 3, generator=g)
    together = model.predict(context, 4, make_sampler(kind, steps=steps), gens([10, 20, 30]))
    alone = model.predict(context[1:2], 4, make_sampler(kind, steps=steps), gens([20]))
    other_neighbours = model.predict(torch.cat([torch.rand(1, 8, 3), context[1:2]]), 4,
                                     make_sampler(kind, steps=steps), gens([99, 20]))
    torch.testing.assert_close(together[1:2], alone, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(other_neighbours[1:2], alone, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(together[0], together[2])


def test_randn_like_rows_per_row_streams():
    rows = randn_like_rows((3, 4, 2), gens([1, 2, 3]))
    torch.testing.assert_close(rows[1], torch.randn((4, 2), generator=torch.Generator().manual_seed(2)))
    single = randn_like_rows((3, 4, 2), torch.Generator().manual_seed(1))
    torch.testing.assert_close(single, torch.randn((3, 4, 2), generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        randn_like_rows((3, 4, 2), gens([1, 2]))
    with pytest.raises(TypeError, match="torch.Generator"):
        randn_like_rows((3, 4, 2), [1, 2, 3])


def test_infill_and_predict_reject_bad_inputs(model):
    g = torch.Generator().manual_seed(0)
    sampler = make_sampler("replacement", steps=5)
    with pytest.raises(ValueError, match=r"shape \(B, 12, 3\)"):
        model.infill(torch.rand(2, 10, 3), torch.ones(2, 10, 3, dtype=torch.bool), sampler, g)
    with pytest.raises(ValueError, match="bool tensor"):
        model.infill(torch.rand(2, 12, 3), torch.ones(2, 12, 3), sampler, g)
    with pytest.raises(ValueError, match="horizon"):
        model.predict(torch.rand(2, 8, 3), 12, sampler, g)
    with pytest.raises(ValueError, match=r"shape \(B, 8, 3\)"):
        model.predict(torch.rand(2, 9, 3), 4, sampler, g)


# ---- checkpoints ----------------------------------------------------------------------------

def test_checkpoint_round_trip_gives_identical_samples(model, tmp_path):
    path = tmp_path / "ckpt" / "checkpoint.pt"
    save_checkpoint(path, model, {"scaler": {"min": [0.0], "max": [1.0]}, "note": "x"})
    loaded, extra = load_checkpoint(path, "cpu")
    assert extra["note"] == "x" and loaded.cfg == model.cfg
    for kind in ("ddim", "guided"):
        sampler = make_sampler(kind, steps=8)
        context = torch.rand(2, 8, 3, generator=torch.Generator().manual_seed(1))
        a = model.predict(context, 4, sampler, gens([3, 4]))
        b = loaded.predict(context, 4, sampler, gens([3, 4]))
        assert torch.equal(a, b)
    raw = torch.load(path, weights_only=True)      # plain data only: loads without pickle
    assert isinstance(raw["model_config"], dict)
    assert not list(path.parent.glob("*.tmp"))     # atomic write leaves no temp file


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match=f"{bad}: not a flowdiff Diffusion-TS checkpoint"):
        load_checkpoint(bad)


@pytest.mark.parametrize("t,n_inner,lr_scale", [(46, 3, 1.0), (40, 2, 0.5), (20, 1, 0.25), (2, 0, 0.0)])
def test_guided_refinement_matches_the_specified_update(t, n_inner, lr_scale):
    """K sign-gradient steps of size eta_t on coef*sum((mu-x')^2/sigma) + mean_obs((net(x')-y)^2)/sigma,
    phases by t/T (T = 50 here), refined values kept only where unobserved."""
    coef, eta = 0.3, 0.05
    sampler = make_sampler("guided", steps=10, guidance_coef=coef, guidance_lr=eta)
    sampler.set_timesteps(50)
    assert sampler.inner_steps(t) == (n_inner, eta * lr_scale)

    def denoise(x, t_batch):               # every output mixes all time steps of its feature
        return x.sum(dim=1, keepdim=True).expand_as(x) * 0.5

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 2, generator=g, dtype=torch.float64)
    mean = x + 0.01 * torch.randn(2, 6, 2, generator=g, dtype=torch.float64)
    target = torch.randn(2, 6, 2, generator=g, dtype=torch.float64)
    mask = torch.zeros(2, 6, 2, dtype=torch.bool)
    mask[:, :4] = True
    mask[1, :2] = False                      # rows observe different counts
    std = 0.2
    out = sampler.refine(denoise, x, mean, std, t, target, mask)

    expected = x.clone()
    for row in range(2):
        xr = x[row].numpy().copy()
        obs = mask[row].numpy()
        for _ in range(n_inner):
            pred = xr.sum(axis=0) * 0.5                                      # (F,)
            residual = np.where(obs, pred[None, :] - target[row].numpy(), 0.0)  # (L, F)
            d_fit = (2 * residual.sum(axis=0) * 0.5 / obs.sum() / std)[None, :]  # same for all l
            d_logp = -2 * coef * (mean[row].numpy() - xr) / std
            xr = xr - eta * lr_scale * np.sign(d_fit + d_logp)
        expected[row] = torch.from_numpy(np.where(obs, x[row].numpy(), xr))
    torch.testing.assert_close(out, expected)
