"""Issue 11 diagnostic: denoising error of x0_hat vs the noisy input, per feature group."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flowdiff.model import DiffusionTS, ModelConfig, save_checkpoint
from flowdiff.model.denoise_curve import denoising_curve, plot_denoise_curve

REPO = Path(__file__).resolve().parents[1]
TINY = ModelConfig(seq_len=12, feature_size=4, n_layer_enc=1, n_layer_dec=1, d_model=16,
                   n_heads=2, timesteps=50)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def windows() -> np.ndarray:
    return np.random.default_rng(0).uniform(0.1, 0.9, (40, 12, 4)).astype(np.float32)


def test_input_error_is_sigma_times_mean_abs_noise_and_an_oracle_scores_zero(windows, monkeypatch):
    model = DiffusionTS(TINY).eval()
    clean = torch.from_numpy(windows) * 2 - 1                                 # model space
    # an oracle denoiser that knows the clean windows: error 0, ratio 0
    monkeypatch.setattr(model, "denoise", lambda x_t, t: clean[:x_t.shape[0]])
    groups = {"a": slice(0, 1), "bc": slice(1, 3), "d": slice(3, 4)}
    curve = denoising_curve(model, windows, [0, 5, 30], groups, seed=3, batch_size=64)
    assert curve.groups == ["a", "bc", "d", "all"]
    eps = torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))
    for i, t in enumerate([0, 5, 30]):
        a = model.process.alphas_cumprod[t].item()
        sigma = ((1 - a) / a) ** 0.5
        assert curve.input_error["bc"][i] == pytest.approx(sigma * eps[:, :, 1:3].abs().mean().item(), rel=1e-4)
        assert curve.input_error["all"][i] == pytest.approx(sigma * eps.abs().mean().item(), rel=1e-4)
        assert curve.x0_error["a"][i] == 0.0 and curve.ratio("all")[i] == 0.0
    assert curve.clean_error == {"a": 0.0, "bc": 0.0, "d": 0.0, "all": 0.0}


def test_identity_denoiser_has_ratio_one_and_a_useless_one_is_flagged(windows, monkeypatch, tmp_path):
    model = DiffusionTS(TINY).eval()
    sqrt_abar = model.process.sqrt_alphas_cumprod
    monkeypatch.setattr(model, "denoise", lambda x_t, t: x_t / sqrt_abar[t][:, None, None])
    curve = denoising_curve(model, windows, [1, 10, 49])
    assert curve.groups == ["f0", "f1", "f2", "f3", "all"]
    for group in curve.groups:
        np.testing.assert_allclose(curve.ratio(group), 1.0, rtol=1e-5)
    # a denoiser that ignores its input (predicts the mean) is worse than the input at small t
    monkeypatch.setattr(model, "denoise", lambda x_t, t: torch.zeros_like(x_t))
    curve = denoising_curve(model, windows, [1, 49])
    assert curve.ratio("all")[0] > 5 and curve.ratio("all")[1] < 1
    text = curve.table()
    assert "f3" in text and "clean" in text
    plot_denoise_curve(curve, tmp_path / "curve.png", title="zero")
    assert (tmp_path / "curve.png").stat().st_size > 5000
    assert json.loads(json.dumps(curve.to_dict()))["ratio"]["all"][1] < 1


def test_denoising_curve_rejects_bad_timesteps_and_groups(windows):
    model = DiffusionTS(TINY).eval()
    with pytest.raises(ValueError, match=r"timesteps must be a non-empty list in \[0, 49\]"):
        denoising_curve(model, windows, [0, 50])
    with pytest.raises(ValueError, match="group 'x' is not a non-empty slice"):
        denoising_curve(model, windows, [1], {"x": slice(4, 6)})


def test_denoising_curve_is_deterministic_for_a_seed(windows):
    torch.manual_seed(1)
    edm = DiffusionTS(ModelConfig(**{**TINY.to_dict(), "parameterization": "edm"})).eval()
    a = denoising_curve(edm, windows, [0, 20], seed=5).to_dict()
    b = denoising_curve(edm, windows, [0, 20], seed=5).to_dict()
    assert a == b
    # with the same (untrained) network, EDM keeps most of the identity at low noise
    x0 = DiffusionTS(TINY).eval()
    x0.load_state_dict(edm.state_dict())
    plain = denoising_curve(x0, windows, [0, 20], seed=5).to_dict()
    assert a["ratio"]["all"][0] < plain["ratio"]["all"][0] / 5


def test_benchmark_cli_writes_table_json_and_png(windows, tmp_path, monkeypatch, capsys):
    model = DiffusionTS(TINY).eval()
    save_checkpoint(tmp_path / "checkpoint.pt", model, {"train_state": {"step": 7}})
    np.save(tmp_path / "windows.npy", windows)
    monkeypatch.setattr(sys, "argv", ["denoise_curve.py", "--checkpoint", str(tmp_path / "checkpoint.pt"),
                                      "--windows", str(tmp_path / "windows.npy"), "--t", "0", "10",
                                      "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / "benchmarks" / "denoise_curve.py"), run_name="__main__")
    assert done.value.code == 0
    result = json.loads((tmp_path / "out" / "denoise_curve.json").read_text())
    assert result["timesteps"] == [0, 10] and result["parameterization"] == "x0"
    assert (tmp_path / "out" / "denoise_curve.png").exists()
    assert "trained steps 7" in capsys.readouterr().out



def test_benchmark_skip_only_scores_the_edm_prior_skip_alone(tmp_path, monkeypatch, capsys):
    """--skip-only (F = 0): an edm-prior model's x0_hat is its marginal prior's posterior mean,
    which returns binary features exactly at low noise whatever the network is."""
    from flowdiff.model.prior import MarginalPrior

    rng = np.random.default_rng(0)
    bits = (rng.random((40, TINY.seq_len, TINY.feature_size)) < 0.3).astype(np.float32)
    model = DiffusionTS(ModelConfig(**{**TINY.to_dict(), "parameterization": "edm-prior"}))
    model.set_prior(MarginalPrior.fit(bits.reshape(-1, TINY.feature_size)))
    save_checkpoint(tmp_path / "prior.pt", model.eval())
    np.save(tmp_path / "bits.npy", bits)
    monkeypatch.setattr(sys, "argv", ["denoise_curve.py", "--checkpoint", str(tmp_path / "prior.pt"),
                                      "--windows", str(tmp_path / "bits.npy"), "--t", "0", "5",
                                      "--skip-only", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / "benchmarks" / "denoise_curve.py"), run_name="__main__")
    assert done.value.code == 0
    ratio = json.loads((tmp_path / "out" / "denoise_curve.json").read_text())["ratio"]["all"]
    assert ratio[0] < 1e-3 and ratio[1] < 1e-3
    assert "skip only, F = 0" in capsys.readouterr().out
