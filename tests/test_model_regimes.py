"""Horizon regimes (flowdiff.model.regimes): the starting noise's persistence and
correlation against their definition, predict with and without them, the per-part fit on
a crafted model whose outputs are known, and the calibration / daemon plumbing on the tiny
artifact."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import generate_twice

from flowdiff.cli import main
from flowdiff.model import make_sampler
from flowdiff.model.regimes import (HorizonNoise, block_variance, correlated_start,
                                    fit_horizon_noise, step_correlation)
from flowdiff.model.rng import randn_like_rows
from tinymodel import gens, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_correlated_start_is_the_ar1_filter_then_the_shared_mix_on_the_horizon_only():
    rho, phi = torch.tensor([0.0, 0.25, 0.81]), torch.tensor([0.0, 0.6, 0.3])
    x = correlated_start((2, 6, 3), gens([1, 2]), "cpu", 4, HorizonNoise.of(3, rho, phi))
    # the same draws by hand: x_T first, then one shared (1, F) draw per row's generator
    rows = gens([1, 2])
    plain = randn_like_rows((2, 6, 3), rows, "cpu")
    shared = randn_like_rows((2, 1, 3), rows, "cpu")
    assert torch.equal(x[:, :2], plain[:, :2])                     # context steps untouched
    e = [plain[:, 2]]
    for step in range(3, 6):
        e.append(phi * e[-1] + (1 - phi ** 2).sqrt() * plain[:, step])
    expected = (1 - rho).sqrt() * torch.stack(e, dim=1) + rho.sqrt() * shared
    torch.testing.assert_close(x[:, 2:], expected, rtol=0, atol=1e-6)
    assert torch.equal(x[:, 2:, 0], plain[:, 2:, 0])               # rho = phi = 0: independent


def test_correlated_start_has_unit_variance_and_the_stated_correlations():
    rho, phi = torch.tensor([0.0, 0.3, 0.0, 0.2]), torch.tensor([0.0, 0.0, 0.7, 0.5])
    x = correlated_start((20_000, 6, 4), torch.Generator().manual_seed(0), "cpu", 4,
                         HorizonNoise.of(4, rho, phi))
    h, context = x[:, 2:], x[:, 0]                                 # horizon steps 0..3

    def corr(a, b):
        return ((a - a.mean(0)) * (b - b.mean(0))).mean(0) / (a.std(0) * b.std(0))

    assert torch.allclose(h.var(dim=0), torch.ones(4, 4), atol=0.05)
    # steps k apart: rho + (1 - rho) phi^k
    for k in (1, 3):
        assert torch.allclose(corr(h[:, 0], h[:, k]), rho + (1 - rho) * phi ** k, atol=0.03)
    assert corr(h[:, 0], context).abs().max() < 0.03


def test_horizon_noise_rejects_bad_values():
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        HorizonNoise.of(2, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="expected shape"):
        HorizonNoise.of(2, persistence=torch.tensor([0.5]))
    with pytest.raises(ValueError, match="unknown codec part"):
        HorizonNoise.from_parts({"correlation": {"nope": 0.1}}, {"a": slice(0, 2)}, 2)
    noise = HorizonNoise.from_parts({"persistence": {"b": 0.4}}, {"a": slice(0, 1), "b": slice(1, 3)}, 3)
    assert noise.persistence.tolist() == pytest.approx([0.0, 0.4, 0.4])
    assert noise.correlation.tolist() == [0.0, 0.0, 0.0]


def test_predict_without_correlation_is_the_plain_sampler_and_with_it_is_seeded():
    model = tiny_model()
    context = torch.rand(2, 8, 3, generator=torch.Generator().manual_seed(1))
    sampler = make_sampler("conditional", steps=5)
    plain = model.predict(context, 4, sampler, gens([3, 4]))
    zero = model.predict(context, 4, sampler, gens([3, 4]), noise=None)
    assert torch.equal(plain, zero)
    noise = HorizonNoise.of(3, torch.tensor([0.2, 0.5, 0.0]), torch.tensor([0.0, 0.3, 0.6]))
    a = model.predict(context, 4, sampler, gens([3, 4]), noise=noise)
    b = model.predict(context, 4, sampler, gens([3, 4]), noise=noise)
    assert torch.equal(a, b) and not torch.equal(a, plain)
    # a row's noise comes only from its own generator: row 1 alone is row 1 of the pair (up
    # to the float rounding of a different batch size)
    alone = model.predict(context[1:], 4, sampler, gens([4]), noise=noise)
    torch.testing.assert_close(alone[0], a[1], rtol=0, atol=1e-5)


def test_block_variance_is_the_variance_of_half_horizon_means():
    h = np.zeros((2, 4, 3))
    h[0, :2, 0], h[0, 2:, 0], h[1, :2, 0], h[1, 2:, 0] = 1.0, 3.0, 5.0, 7.0   # block means
    h[:, :, 1:] = 0.5
    out = block_variance(h, {"a": slice(0, 1), "b": slice(1, 3)})
    assert out == {"a": pytest.approx(np.var([1.0, 3.0, 5.0, 7.0])), "b": 0.0}


def test_step_correlation_is_the_pooled_lag1_correlation_within_each_horizon():
    h = np.zeros((2, 4, 2))
    h[0, :, 0] = [1.0, 1.0, -1.0, -1.0]                             # lag-1 products 1, -1, 1
    h[0, :, 1] = [1.0, -1.0, 1.0, -1.0]                             # -1, -1, -1
    h[1] = h[0] + 5.0                    # another horizon at another level: the same deviations
    out = step_correlation(h, {"a": slice(0, 1), "b": slice(1, 2), "ab": slice(0, 2)})
    assert out["a"] == pytest.approx(1 / 3)        # mean lag-1 product / variance (mean 0, var 1)
    assert out["b"] == pytest.approx(-1.0)
    assert out["ab"] == pytest.approx((1 / 3 - 1) / 2)


class _ShiftModel:
    """A 'model' whose horizon is its starting noise scaled by 0.1 around 0.5: the fit must
    then recover the rho and phi the real horizons were made with."""

    def predict(self, context, horizon, sampler, generator, noise=None):
        batch, n_context, features = context.shape
        x = correlated_start((batch, n_context + horizon, features), generator, "cpu", horizon,
                             noise)
        return (0.5 + 0.1 * x[:, n_context:]).clamp(0, 1)


def test_regime_fit_recovers_the_persistence_and_correlation_of_the_real_horizons():
    n, context, horizon = 3000, 6, 10                               # blocks of 5 steps
    rho, phi = torch.tensor([0.0, 0.4, 0.15]), torch.tensor([0.0, 0.3, 0.7])
    real = correlated_start((n, context + horizon, 3), torch.Generator().manual_seed(11), "cpu",
                            horizon, HorizonNoise.of(3, rho, phi))
    windows = (0.5 + 0.1 * real).clamp(0, 1).numpy()
    parts = {"a": slice(0, 1), "b": slice(1, 2), "c": slice(2, 3)}
    fitted, report = fit_horizon_noise(_ShiftModel(), windows, horizon, parts, sampler=None, seed=3)
    assert fitted["persistence"]["a"] == pytest.approx(0.0, abs=0.03)
    assert fitted["correlation"]["a"] == pytest.approx(0.0, abs=0.03)
    assert fitted["persistence"]["b"] == pytest.approx(0.3, abs=0.08)
    assert fitted["persistence"]["c"] == pytest.approx(0.7, abs=0.08)
    assert fitted["correlation"]["b"] == pytest.approx(0.4, abs=0.08)
    assert fitted["correlation"]["c"] == pytest.approx(0.15, abs=0.08)
    assert set(report["b"]) == {"real_lag1", "model_lag1", "real_block_variance",
                                "model_block_variance"}
    again, _ = fit_horizon_noise(_ShiftModel(), windows, horizon, parts, sampler=None, seed=3)
    assert again == fitted                                          # seeded


def test_calibrate_fits_regimes_that_serve_and_generate_use(tiny_model, ugr16_sample, tmp_path, capsys):
    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    assert main(["calibrate", "--model", str(model), "--data", str(ugr16_sample), "--turns", "2",
                 "--streams", "2", "--sampler", "conditional", "--steps", "3",
                 "--regime-windows", "20"]) == 0
    out = capsys.readouterr().out
    assert "starting-noise correlation (regimes)" in out and "starting-noise persistence" in out
    calibration = json.loads((model / "codec" / "codec.json").read_text())["calibration"]
    regimes = calibration["regimes"]
    assert set(regimes) == {"correlation", "persistence"}
    assert set(regimes["correlation"]) >= {"srcip.bits", "proto", "byt"}
    assert all(0.0 <= v < 1.0 for kind in regimes.values() for v in kind.values())
    assert calibration["meta"]["regime_windows"] == 20
    from flowdiff.artifact import load_artifact
    from flowdiff.daemon.generator import StreamGenerator

    artifact = load_artifact(model)
    gen = StreamGenerator(artifact.model, artifact.codec, make_sampler("conditional", steps=3),
                          context=artifact.context, horizon=artifact.horizon, streams=1, seed=0)
    expected = HorizonNoise.from_parts(regimes, artifact.codec.feature_parts, artifact.codec.width)
    assert torch.equal(gen.noise.correlation, expected.correlation)
    assert torch.equal(gen.noise.persistence, expected.persistence)
    runs = generate_twice(model, tmp_path, 24)                      # generation stays seeded
    assert runs[0] == runs[1] and runs[0].count(b"\n") == 24
    # --regime-windows 0: no regimes, independent noise
    assert main(["calibrate", "--model", str(model), "--data", str(ugr16_sample), "--turns", "2",
                 "--streams", "2", "--sampler", "conditional", "--steps", "3",
                 "--regime-windows", "0"]) == 0
    assert json.loads((model / "codec" / "codec.json").read_text())["calibration"]["regimes"] == {}
    assert main(["calibrate", "--model", str(model), "--data", str(ugr16_sample),
                 "--regime-windows", "1"]) == 2
