"""edm-prior: the marginal prior's posterior mean against the math on tiny cases, the
parameterization built on it, and its checkpoint round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowdiff.model import CheckpointError, ConfigError, DiffusionTS, ModelConfig, TrainConfig
from flowdiff.model import load_checkpoint, save_checkpoint, train
from flowdiff.model.prior import HISTOGRAM_BINS, MarginalPrior

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gaussian_posterior_mean(x_tilde: np.ndarray, sigma: float, atoms: np.ndarray,
                            weights: np.ndarray) -> np.ndarray:
    """E[x0 | x~] by brute force: atoms (A, d) with prior weights (A,), x~ (n, d)."""
    d2 = ((x_tilde[:, None, :] - atoms[None]) ** 2).sum(-1)                  # (n, A)
    like = weights[None] * np.exp(-(d2 - d2.min(1, keepdims=True)) / (2 * sigma ** 2))
    return (like[..., None] * atoms[None]).sum(1) / like.sum(1, keepdims=True)


GROUPS = {"mixed": slice(0, 2), "token": slice(2, 4)}   # (bit, number), a 2-dim token


def rows_with(rng, n=4000):
    """Data-space rows [0, 1]: a bit set 25 % of the time and a bimodal number (one group of
    more than MAX_ATOMS distinct rows: the bit on its own, the number on a histogram), then
    a 2-dim token from 3 vectors (frequencies .5/.3/.2, its own group: exact atoms)."""
    bit = (rng.random(n) < 0.25).astype(float)
    number = np.clip(np.where(rng.random(n) < 0.5, rng.normal(0.3, 0.02, n),
                              rng.normal(0.7, 0.02, n)), 0, 1)
    vocab = np.array([[0.1, 0.9], [0.5, 0.5], [0.8, 0.2]])
    token = vocab[rng.choice(3, n, p=[0.5, 0.3, 0.2])]
    return np.column_stack([bit, number, token]), vocab


def test_posterior_mean_matches_bayes_for_bits_tokens_and_numbers():
    rng = np.random.default_rng(0)
    rows, vocab = rows_with(rng)
    prior = MarginalPrior.fit(rows, GROUPS)
    assert prior.binary_cols.tolist() == [0] and len(prior.joint) == 1
    assert prior.hist_cols.tolist() == [1] and prior.hist_centers.shape == (1, HISTOGRAM_BINS)
    x = rows * 2 - 1                                                           # model space
    for sigma in (0.01, 0.1, 0.5, 3.0):
        x_tilde = x[:64] + sigma * rng.standard_normal((64, 4))
        got = prior(torch.tensor(x_tilde, dtype=torch.float32)[None],
                    torch.tensor([sigma])).numpy()[0].astype(np.float64)
        p1 = (x[:, 0] > 0).mean()
        bit = gaussian_posterior_mean(x_tilde[:, :1], sigma, np.array([[-1.0], [1.0]]),
                                      np.array([1 - p1, p1]))
        atoms, counts = np.unique(x[:, 2:4], axis=0, return_counts=True)
        token = gaussian_posterior_mean(x_tilde[:, 2:4], sigma, atoms, counts / counts.sum())
        counts, edges = np.histogram(x[:, 1], bins=HISTOGRAM_BINS, range=(-1, 1))
        number = gaussian_posterior_mean(x_tilde[:, 1:2], sigma,
                                         ((edges[:-1] + edges[1:]) / 2)[:, None], counts / counts.sum())
        np.testing.assert_allclose(got[:, :1], bit, atol=2e-4)
        np.testing.assert_allclose(got[:, 2:4], token, atol=2e-4)
        np.testing.assert_allclose(got[:, 1:2], number, atol=2e-3)   # float32 over 400 bins
    # low noise: the bit and the token come back exactly, the number closer than the input
    x_tilde = x[:512] + 0.01 * rng.standard_normal((512, 4))
    out = prior(torch.tensor(x_tilde, dtype=torch.float32)[None], torch.tensor([0.01])).numpy()[0]
    np.testing.assert_allclose(out[:, [0, 2, 3]], x[:512, [0, 2, 3]], atol=1e-5)
    assert np.abs(out[:, 1] - x[:512, 1]).mean() < np.abs(x_tilde[:, 1] - x[:512, 1]).mean()
    # high noise: the marginal mean
    far = prior(torch.zeros(1, 1, 4), torch.tensor([1e3])).numpy()[0, 0]
    np.testing.assert_allclose(far, x.mean(0), atol=0.02)


def test_a_group_with_few_distinct_rows_is_one_joint_posterior():
    """A one-hot code: its rows jointly (so the posterior mean is a mixture of codes, not
    of independent bits)."""
    codes = np.eye(3)[np.random.default_rng(4).choice(3, 600, p=[0.6, 0.3, 0.1])]
    prior = MarginalPrior.fit(codes, {"code": slice(0, 3)})
    assert len(prior.binary_cols) == 0 and [len(a) for _c, a, _w in prior.joint] == [3]
    far = prior(torch.zeros(1, 1, 3), torch.tensor([1e3])).numpy()[0, 0]
    np.testing.assert_allclose((far + 1) / 2, codes.mean(0), atol=1e-3)   # code frequencies


def test_groups_must_cover_every_feature_once_and_fit_checks_its_input():
    prior = MarginalPrior.fit(np.random.default_rng(1).random((50, 3)))     # one group per column
    with pytest.raises(ValueError, match="cover each of the 3 features"):
        MarginalPrior(3, prior.binary_cols, prior.binary_logit, prior.joint[:2],   # 3 columns,
                      prior.hist_cols, prior.hist_centers, prior.hist_logw)         # 50 atoms each
    with pytest.raises(ValueError, match=r"rows \(N, F\)"):
        MarginalPrior.fit(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="fitted on 3 features, got 4"):
        prior(torch.zeros(1, 2, 4), torch.tensor([1.0]))


CFG = ModelConfig(seq_len=8, feature_size=4, n_layer_enc=1, n_layer_dec=1, d_model=16, n_heads=2,
                  timesteps=20, parameterization="edm-prior", loss_weighting="edm")


def test_edm_prior_is_the_prior_mean_plus_c_out_times_the_network(tmp_path):
    rows, _vocab = rows_with(np.random.default_rng(2))
    model = DiffusionTS(CFG)
    x_t = torch.randn(3, 8, 4)
    t = torch.tensor([0, 7, 19])
    with pytest.raises(RuntimeError, match="no marginal prior"):
        model.denoise(x_t, t)
    prior = MarginalPrior.fit(rows, GROUPS)
    model.set_prior(prior)
    pc = model.precondition
    abar = model.process.alphas_cumprod[t][:, None, None]
    sigma = ((1 - abar) / abar).sqrt()
    net = model.network(pc.in_scale[t][:, None, None] * x_t, t)
    expected = prior(x_t / abar.sqrt(), sigma[:, 0, 0]) + pc.c_out[t][:, None, None] * net
    torch.testing.assert_close(model.denoise(x_t, t), expected)

    save_checkpoint(tmp_path / "m.pt", model)
    loaded, _extra = load_checkpoint(tmp_path / "m.pt")
    torch.testing.assert_close(loaded.denoise(x_t, t), model.eval().denoise(x_t, t))
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    del raw["prior"]
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="without its 'prior' entry"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not edm-prior"):
        DiffusionTS(ModelConfig(seq_len=8, feature_size=4, d_model=16, n_heads=2)).set_prior(prior)


def test_training_an_edm_prior_model_needs_its_prior_and_is_seeded(tmp_path):
    rows, _vocab = rows_with(np.random.default_rng(3), n=400)
    windows = np.stack([rows[i:i + 8] for i in range(0, 390, 2)]).astype(np.float32)
    cfg = TrainConfig.from_dict(dict(steps=6, batch_size=8, grad_accum=1, warmup=1,
                                     checkpoint_every=6, val_every=0, seed=5, device="cpu",
                                     low_noise_share=0.5))
    with pytest.raises(ConfigError, match="edm-prior needs the data's marginal prior"):
        train(DiffusionTS(CFG), windows, None, cfg, tmp_path / "none")
    results = []
    for name in ("a", "b"):
        torch.manual_seed(0)                                              # the same initial weights
        model = DiffusionTS(CFG)
        model.set_prior(MarginalPrior.fit(rows))
        train(model, windows, None, cfg, tmp_path / name)
        results.append(torch.load(tmp_path / name / "checkpoint.pt", weights_only=True))
    for key, value in results[0]["model"].items():
        assert torch.equal(value, results[1]["model"][key])              # bit for bit
    assert torch.equal(results[0]["prior"]["hist_logw"], results[1]["prior"]["hist_logw"])
