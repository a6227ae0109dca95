"""Issue 11: EDM preconditioning (parameterization: edm), loss options, predict-mode loss."""

from __future__ import annotations

import math

import pytest
import torch

from flowdiff.model import (
    ConfigError,
    DiffusionTS,
    ModelConfig,
    load_checkpoint,
    make_sampler,
    save_checkpoint,
)
from flowdiff.model.diffusion import DiffusionProcess
from flowdiff.model.diffusion_ts import to_model_space
from flowdiff.model.parameterization import Preconditioning, edm_coefficients
from flowdiff.model.rng import randint_rows, randn_like_rows

TINY = dict(seq_len=12, feature_size=3, n_layer_enc=1, n_layer_dec=2, d_model=16, n_heads=2,
            timesteps=50)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def abar_of(process: DiffusionProcess, t: int) -> float:
    return process.alphas_cumprod[t].item()


def test_edm_coefficients_match_karras_table_1():
    process = DiffusionProcess(500)
    pre = Preconditioning("edm", 500, 0.008, sigma_data=0.5)
    for t in (0, 9, 100, 499):
        a = abar_of(process, t)
        sigma = math.sqrt((1 - a) / a)
        c_skip = 0.25 / (sigma ** 2 + 0.25)
        c_out = sigma * 0.5 / math.sqrt(sigma ** 2 + 0.25)
        c_in = 1 / math.sqrt(sigma ** 2 + 0.25)
        assert pre.skip[t].item() == pytest.approx(c_skip / math.sqrt(a), rel=1e-4)
        assert pre.c_out[t].item() == pytest.approx(c_out, rel=1e-4)
        assert pre.in_scale[t].item() == pytest.approx(c_in / math.sqrt(a), rel=1e-4)
    # low noise: the identity is free (c_skip -> 1, c_out -> 0)
    assert pre.skip[0].item() * math.sqrt(abar_of(process, 0)) > 0.999 and pre.c_out[0].item() < 0.01


def test_edm_training_target_has_unit_variance_at_every_t():
    """F's target (x0 - c_skip x~) / c_out has variance ((1-c_skip)^2 sd^2 + c_skip^2 sigma^2) / c_out^2
    = 1 for data of std sd: the network learns a unit-scale residual at every noise level."""
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.05, 200, dtype=torch.float64), 0)
    for sd in (0.3, 0.5, 1.0):
        c = edm_coefficients(abar, sd)
        variance = ((1 - c["c_skip"]) ** 2 * sd ** 2 + c["c_skip"] ** 2 * c["sigma"] ** 2) / c["c_out"] ** 2
        torch.testing.assert_close(variance, torch.ones_like(variance))
        # and the network input c_in x~ has unit variance too
        torch.testing.assert_close(c["c_in"] ** 2 * (sd ** 2 + c["sigma"] ** 2), torch.ones_like(abar))


def test_edm_denoise_is_skip_plus_scaled_network_output():
    model = DiffusionTS(ModelConfig(**TINY, parameterization="edm", sigma_data=0.7))
    seen = {}

    def fake_network(x, t):                  # records its input, returns a known function of it
        seen["x"] = x
        return 2.0 * x + t[:, None, None].float()

    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(3, 12, 3, generator=g)
    t = torch.tensor([0, 17, 49])
    out = model.precondition(fake_network, x_t, t)
    for i, step in enumerate(t.tolist()):
        a = abar_of(model.process, step)
        sigma = math.sqrt((1 - a) / a)
        total = sigma ** 2 + 0.49
        x_scaled = x_t[i] / math.sqrt(a)
        net_in = x_scaled / math.sqrt(total)
        expected = 0.49 / total * x_scaled + sigma * 0.7 / math.sqrt(total) * (2 * net_in + step)
        torch.testing.assert_close(seen["x"][i], net_in, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[i], expected, atol=1e-4, rtol=1e-4)


def test_x0_parameterization_is_the_raw_network_bit_for_bit():
    torch.manual_seed(1)
    model = DiffusionTS(ModelConfig(**TINY)).eval()
    assert model.cfg.parameterization == "x0" and model.cfg.loss == "l1"
    x_t, t = torch.randn(4, 12, 3), torch.tensor([0, 5, 30, 49])
    assert torch.equal(model.denoise(x_t, t), model.network(x_t, t))


def test_checkpoint_records_parameterization_and_old_checkpoints_load_as_x0(tmp_path):
    torch.manual_seed(2)
    edm = DiffusionTS(ModelConfig(**TINY, parameterization="edm", sigma_data=0.4)).eval()
    save_checkpoint(tmp_path / "edm.pt", edm)
    raw = torch.load(tmp_path / "edm.pt", weights_only=True)
    assert raw["model_config"]["parameterization"] == "edm" and raw["model_config"]["sigma_data"] == 0.4
    loaded, _ = load_checkpoint(tmp_path / "edm.pt")
    sampler = make_sampler("ddim", steps=8)
    assert torch.equal(loaded.sample(2, sampler, torch.Generator().manual_seed(3)),
                       edm.sample(2, sampler, torch.Generator().manual_seed(3)))

    # a checkpoint written before issue 11 has none of the new keys: it is an x0 model
    x0 = DiffusionTS(ModelConfig(**TINY)).eval()
    save_checkpoint(tmp_path / "old.pt", x0)
    raw = torch.load(tmp_path / "old.pt", weights_only=True)
    for key in ("parameterization", "sigma_data", "loss", "loss_weighting"):
        del raw["model_config"][key]
    torch.save(raw, tmp_path / "old.pt")
    old, _ = load_checkpoint(tmp_path / "old.pt")
    assert old.cfg == x0.cfg
    assert torch.equal(old.sample(2, sampler, torch.Generator().manual_seed(3)),
                       x0.sample(2, sampler, torch.Generator().manual_seed(3)))


def test_model_config_rejects_unknown_parameterization_and_loss():
    with pytest.raises(ConfigError) as err:
        ModelConfig.from_dict({"parameterization": "eps", "loss": "huber", "loss_weighting": "snr",
                               "sigma_data": 0.0})
    msg = str(err.value)
    for needle in ("model.parameterization: one of x0, edm", "model.loss: one of l1, l2",
                   "model.loss_weighting: one of dts, edm", "model.sigma_data"):
        assert needle in msg


def manual_loss(model: DiffusionTS, x0: torch.Tensor, seed: int, horizon: int | None) -> torch.Tensor:
    """The training loss written out: same draws as model.loss, per-sample mean of
    d(x0_hat - x0) + w_ff (d(Re FFT diff) + d(Im FFT diff)) over the horizon, times the weight."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    y = to_model_space(x0)
    t = randint_rows(y.shape[0], cfg.timesteps, g)
    noise = randn_like_rows(y.shape, g)
    a = model.process.alphas_cumprod[t][:, None, None]
    x_t = a.sqrt() * y + (1 - a).sqrt() * noise
    start = 0 if horizon is None else cfg.seq_len - horizon
    x_t[:, :start] = y[:, :start]
    x0_hat = model.denoise(x_t, t)[:, start:]
    y = y[:, start:]
    d = torch.abs if cfg.loss == "l1" else torch.square
    fa, fb = torch.fft.fft(x0_hat, dim=1) / y.shape[1], torch.fft.fft(y, dim=1) / y.shape[1]
    w_ff = cfg.fourier_weight_value
    per = (d(x0_hat - y) + w_ff * (d(fa.real - fb.real) + d(fa.imag - fb.imag))).flatten(1).mean(1)
    if cfg.loss_weighting == "edm":
        a = model.process.alphas_cumprod[t]
        sigma = ((1 - a) / a).sqrt()
        c_out = sigma * cfg.sigma_data / (sigma ** 2 + cfg.sigma_data ** 2).sqrt()
        weight = c_out ** -(1 if cfg.loss == "l1" else 2)
    else:
        weight = model.process.loss_weight[t]
    return (per * weight).mean()


@pytest.mark.parametrize("options", [
    dict(), dict(parameterization="edm"), dict(parameterization="edm", loss_weighting="edm"),
    dict(parameterization="edm", loss="l2", loss_weighting="edm"), dict(loss="l2")])
@pytest.mark.parametrize("horizon", [None, 4])
def test_loss_matches_its_formula(options, horizon):
    torch.manual_seed(4)
    model = DiffusionTS(ModelConfig(**TINY, **options)).eval()
    x0 = torch.rand(6, 12, 3, generator=torch.Generator().manual_seed(5))
    got = model.loss(x0, torch.Generator().manual_seed(6), horizon=horizon)
    assert got.item() == pytest.approx(manual_loss(model, x0, 6, horizon).item(), rel=1e-4)


def test_predict_mode_loss_sees_the_clean_context_and_scores_the_horizon_only():
    torch.manual_seed(7)
    model = DiffusionTS(ModelConfig(**TINY)).eval()
    seen = []
    model.network.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
    x0 = torch.rand(5, 12, 3, generator=torch.Generator().manual_seed(8))
    model.loss(x0, torch.Generator().manual_seed(9), horizon=4)
    torch.testing.assert_close(seen[0][:, :8], to_model_space(x0)[:, :8], rtol=0, atol=0)
    assert not torch.allclose(seen[0][:, 8:], to_model_space(x0)[:, 8:])   # horizon noised

    # the context's own reconstruction error does not enter the loss: a network that is
    # wrong only on the context scores exactly like a perfect one
    def perfect_on_horizon(wrong_context: bool):
        def network(x, t):
            out = to_model_space(x0).clone()
            if wrong_context:
                out[:, :8] += 1.0
            return out
        return network

    for wrong in (False, True):
        model.network.forward = perfect_on_horizon(wrong)
        assert model.loss(x0, torch.Generator().manual_seed(9), horizon=4).item() == 0.0
    with pytest.raises(ValueError, match="horizon must be in"):
        model.loss(x0, horizon=12)
