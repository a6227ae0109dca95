"""Horizon regimes (flowdiff.model.regimes): the correlated starting noise against its
definition, predict with and without it, the per-part fit on a crafted model whose window
variance is known, and the calibration / daemon plumbing on the tiny artifact."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from flowdiff.cli import main
from flowdiff.model import make_sampler
from flowdiff.model.regimes import (block_variance, correlated_start, correlation_vector,
                                    fit_regime_correlation)
from flowdiff.model.rng import randn_like_rows
from tinymodel import gens, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_correlated_start_mixes_one_shared_draw_into_the_horizon_only():
    rho = torch.tensor([0.0, 0.25, 0.81])
    x = correlated_start((2, 6, 3), gens([1, 2]), "cpu", 4, rho)
    # the same draws by hand: x_T first, then one shared (1, F) draw per row's generator
    rows = gens([1, 2])
    plain = randn_like_rows((2, 6, 3), rows, "cpu")
    shared = randn_like_rows((2, 1, 3), rows, "cpu")
    assert torch.equal(x[:, :2], plain[:, :2])                     # context steps untouched
    expected = (1 - rho).sqrt() * plain[:, 2:] + rho.sqrt() * shared
    torch.testing.assert_close(x[:, 2:], expected, rtol=0, atol=1e-6)
    assert torch.equal(x[:, 2:, 0], plain[:, 2:, 0])               # rho 0: independent noise


def test_correlated_start_has_unit_variance_and_correlation_rho_between_horizon_steps():
    rho = torch.tensor([0.0, 0.3, 0.7])
    x = correlated_start((20_000, 5, 3), torch.Generator().manual_seed(0), "cpu", 3, rho)
    a, b, context = x[:, 2], x[:, 4], x[:, 0]                     # two horizon steps, one context
    assert torch.allclose(a.var(0), torch.ones(3), atol=0.04)
    corr = ((a - a.mean(0)) * (b - b.mean(0))).mean(0) / (a.std(0) * b.std(0))
    assert torch.allclose(corr, rho, atol=0.03)
    corr_context = ((a - a.mean(0)) * (context - context.mean(0))).mean(0)
    assert corr_context.abs().max() < 0.03


def test_correlated_start_rejects_bad_correlations():
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        correlated_start((1, 4, 2), gens([0]), "cpu", 2, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="expected shape"):
        correlated_start((1, 4, 2), gens([0]), "cpu", 2, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="unknown codec part"):
        correlation_vector({"nope": 0.1}, {"a": slice(0, 2)}, 2)


def test_predict_without_correlation_is_the_plain_sampler_and_with_it_is_seeded():
    model = tiny_model()
    context = torch.rand(2, 8, 3, generator=torch.Generator().manual_seed(1))
    sampler = make_sampler("conditional", steps=5)
    plain = model.predict(context, 4, sampler, gens([3, 4]))
    zero = model.predict(context, 4, sampler, gens([3, 4]), noise_correlation=None)
    assert torch.equal(plain, zero)
    rho = torch.tensor([0.2, 0.5, 0.0])
    a = model.predict(context, 4, sampler, gens([3, 4]), noise_correlation=rho)
    b = model.predict(context, 4, sampler, gens([3, 4]), noise_correlation=rho)
    assert torch.equal(a, b) and not torch.equal(a, plain)
    # a row's noise comes only from its own generator: row 1 alone is row 1 of the pair (up
    # to the float rounding of a different batch size)
    alone = model.predict(context[1:], 4, sampler, gens([4]), noise_correlation=rho)
    torch.testing.assert_close(alone[0], a[1], rtol=0, atol=1e-5)


def test_block_variance_is_the_variance_of_half_horizon_means():
    h = np.zeros((2, 4, 3))
    h[0, :2, 0], h[0, 2:, 0], h[1, :2, 0], h[1, 2:, 0] = 1.0, 3.0, 5.0, 7.0   # block means
    h[:, :, 1:] = 0.5
    out = block_variance(h, {"a": slice(0, 1), "b": slice(1, 3)})
    assert out == {"a": pytest.approx(np.var([1.0, 3.0, 5.0, 7.0])), "b": 0.0}


class _ShiftModel:
    """A 'model' whose horizon is its starting noise scaled by 0.1 (clipped into [0, 1]
    around 0.5): the block variance of part p at correlation rho is then known in closed
    form, 0.01 * (rho + (1 - rho) / block) per feature."""

    def predict(self, context, horizon, sampler, generator, noise_correlation=None):
        batch, n_context, features = context.shape
        x = correlated_start((batch, n_context + horizon, features), generator, "cpu", horizon,
                             noise_correlation)
        return (0.5 + 0.1 * x[:, n_context:]).clamp(0, 1)


def test_regime_fit_recovers_the_correlation_that_matches_the_real_block_variance():
    rng = np.random.default_rng(0)
    n, context, horizon = 4000, 6, 10                               # blocks of 5 steps
    target = {"a": 0.0, "b": 0.4}
    windows = np.full((n, context + horizon, 2), 0.5)
    for col, rho in enumerate(target.values()):                     # real horizons at known rho
        shared = rng.standard_normal((n, 1))
        eps = rng.standard_normal((n, horizon))
        windows[:, context:, col] = 0.5 + 0.1 * (np.sqrt(1 - rho) * eps + np.sqrt(rho) * shared)
    parts = {"a": slice(0, 1), "b": slice(1, 2)}
    fitted, report = fit_regime_correlation(_ShiftModel(), windows, horizon, parts, sampler=None,
                                            seed=3)
    assert fitted["a"] == pytest.approx(0.0, abs=0.05)
    assert fitted["b"] == pytest.approx(0.4, abs=0.08)
    assert set(report["b"]) == {"real", "model"} and len(report["b"]["model"]) == 3
    again, _ = fit_regime_correlation(_ShiftModel(), windows, horizon, parts, sampler=None, seed=3)
    assert again == fitted                                          # seeded


def test_calibrate_fits_regimes_that_serve_and_generate_use(tiny_model, ugr16_sample, tmp_path, capsys):
    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    assert main(["calibrate", "--model", str(model), "--data", str(ugr16_sample), "--turns", "2",
                 "--streams", "2", "--sampler", "conditional", "--steps", "3",
                 "--regime-windows", "20"]) == 0
    assert "starting-noise correlation (regimes)" in capsys.readouterr().out
    calibration = json.loads((model / "codec" / "codec.json").read_text())["calibration"]
    regimes = calibration["regimes"]
    assert set(regimes) >= {"srcip.bits", "proto", "byt"}
    assert all(0.0 <= rho <= 0.9 for rho in regimes.values())
    assert calibration["meta"]["regime_windows"] == 20
    from flowdiff.artifact import load_artifact
    from flowdiff.daemon.generator import StreamGenerator

    artifact = load_artifact(model)
    gen = StreamGenerator(artifact.model, artifact.codec, make_sampler("conditional", steps=3),
                          context=artifact.context, horizon=artifact.horizon, streams=1, seed=0)
    expected = correlation_vector(regimes, artifact.codec.feature_parts, artifact.codec.width)
    assert torch.equal(gen.noise_correlation, expected)
    runs = []
    for name in ("x", "y"):                                          # generation stays seeded
        path = tmp_path / f"{name}.jsonl"
        assert main(["generate", "--model", str(model), "--records", "24", "--seed", "3",
                     "--start-ts", "1460390400", "--sampler", "conditional", "--steps", "3",
                     "--out", str(path)]) == 0
        runs.append(path.read_bytes())
    assert runs[0] == runs[1] and runs[0].count(b"\n") == 24
    # --regime-windows 0: no regimes, independent noise
    assert main(["calibrate", "--model", str(model), "--data", str(ugr16_sample), "--turns", "2",
                 "--streams", "2", "--sampler", "conditional", "--steps", "3",
                 "--regime-windows", "0"]) == 0
    assert json.loads((model / "codec" / "codec.json").read_text())["calibration"]["regimes"] == {}
    assert main(["calibrate", "--model", str(model), "--data", str(ugr16_sample),
                 "--regime-windows", "1"]) == 2
