"""Trainer: loss goes down on a toy sine set, checkpoints/resume, NaN guard, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flowdiff.model import (CheckpointError, ConfigError, DiffusionTS, ModelConfig, TrainConfig, load_checkpoint,
                            make_sampler, train)
from flowdiff.timeseries.series import sliding_windows

CFG = ModelConfig(seq_len=16, feature_size=2, n_layer_enc=1, n_layer_dec=1, d_model=16,
                  n_heads=2, timesteps=50)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sine_windows() -> np.ndarray:
    """Two phase-shifted sines in [0.1, 0.9] with a little noise, stride-1 windows."""
    t = np.linspace(0, 12 * np.pi, 1200)
    noise = np.random.default_rng(0).normal(0, 0.01, (1200, 2))
    series = np.stack([0.5 + 0.4 * np.sin(t), 0.5 + 0.4 * np.cos(t)], axis=1) + noise
    return sliding_windows(np.clip(series, 0, 1), 16)


def small_train_cfg(**changes) -> TrainConfig:
    base = dict(steps=300, batch_size=32, grad_accum=1, warmup=20, checkpoint_every=100,
                val_every=100, log_every=25, seed=3, device="cpu")
    return TrainConfig.from_dict({**base, **changes})


@pytest.mark.slow
def test_loss_decreases_on_sine_and_writes_artifacts(sine_windows, tmp_path):
    model = DiffusionTS(CFG)
    result = train(model, sine_windows[:1000], sine_windows[1000:], small_train_cfg(), tmp_path)
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert result.steps == 300 and len(losses) == 12
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:2]), losses
    assert result.val_loss is not None and np.isfinite(result.val_loss)
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000
    loaded, extra = load_checkpoint(tmp_path / "checkpoint.pt")
    assert extra["train_state"]["step"] == 300
    # train() leaves the EMA weights in the model, the same ones the checkpoint holds
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    out = loaded.sample(4, make_sampler("ddim", steps=10), torch.Generator().manual_seed(0))
    assert out.shape == (4, 16, 2) and torch.isfinite(out).all()


def test_training_is_reproducible_for_a_seed(sine_windows, tmp_path):
    cfg = small_train_cfg(steps=30, checkpoint_every=30, val_every=0)
    a = DiffusionTS(CFG)
    b = DiffusionTS(CFG)
    b.load_state_dict(a.state_dict())
    torch.manual_seed(99)
    caller_state = torch.get_rng_state()
    train(a, sine_windows, None, cfg, tmp_path / "a")
    assert torch.equal(torch.get_rng_state(), caller_state)   # no global seeding leaks out
    train(b, sine_windows, None, cfg, tmp_path / "b")
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)


def test_resume_continues_from_checkpoint(sine_windows, tmp_path):
    model = DiffusionTS(CFG)
    first = train(model, sine_windows, None,
                  small_train_cfg(steps=40, checkpoint_every=20, val_every=0), tmp_path)
    assert first.start_step == 0
    saved = load_checkpoint(tmp_path / "checkpoint.pt")[1]["train_state"]["seconds"]
    assert 0 < saved <= first.total_seconds      # time up to the step-40 checkpoint
    resumed = DiffusionTS(CFG)
    result = train(resumed, sine_windows, None,
                   small_train_cfg(steps=60, checkpoint_every=20, val_every=0), tmp_path, resume=True)
    assert result.steps == 60 and result.start_step == 40
    # the total counts the first call's time too (saved in the checkpoint at step 40)
    assert result.total_seconds == pytest.approx(saved + result.seconds, abs=1.0)
    assert result.total_seconds > result.seconds + 0.5 * saved
    _, extra = load_checkpoint(tmp_path / "checkpoint.pt")
    assert extra["train_state"]["step"] == 60
    steps = [json.loads(l)["step"] for l in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert steps[-1] == 60 and 25 in steps          # the log kept the first run's records
    other = DiffusionTS(ModelConfig(**{**CFG.to_dict(), "d_model": 32}))
    with pytest.raises(CheckpointError, match="different model config"):
        train(other, sine_windows, None, small_train_cfg(steps=80), tmp_path, resume=True)


def test_nan_guard_skips_and_restores_after_injected_nan(sine_windows, tmp_path, caplog):
    model = DiffusionTS(CFG)
    calls = {"n": 0}

    def poison_once(module, inputs):
        calls["n"] += 1
        if calls["n"] == 45:     # a weight turns NaN: every following step fails until restore
            with torch.no_grad():
                module.embed.weight.fill_(float("nan"))

    model.network.register_forward_pre_hook(poison_once)
    cfg = small_train_cfg(steps=80, checkpoint_every=20, val_every=0, nan_patience=3)
    with caplog.at_level("WARNING"):
        result = train(model, sine_windows, None, cfg, tmp_path)
    assert result.nan_skipped == 3 and result.nan_restores == 1
    assert result.steps == 80
    assert all(torch.isfinite(p).all() for p in model.parameters())
    events = [json.loads(l) for l in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    restore = [e for e in events if e.get("event") == "nan_restore"]
    assert len(restore) == 1 and restore[0]["step"] == 40    # the last good checkpointed state
    assert sum(e.get("event") == "nan_skip" for e in events) == 3
    assert "restored the last good state" in caplog.text
    assert np.isfinite(result.final_loss)


def test_train_rejects_bad_windows(tmp_path):
    bad = np.full((10, 16, 2), 0.5, dtype=np.float32)
    bad[3, 4, 1] = 1.5
    with pytest.raises(ValueError, match=r"train_windows: window 3, step 4, feature 1 is 1.5"):
        train(DiffusionTS(CFG), bad, None, small_train_cfg(steps=1), tmp_path)
    with pytest.raises(ValueError, match=r"expected windows of shape \(N, 16, 2\)"):
        train(DiffusionTS(CFG), np.zeros((10, 8, 2), np.float32), None, small_train_cfg(steps=1), tmp_path)


def test_train_config_validation():
    from flowdiff.model import ConfigError

    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({"steps": 0, "scheduler": "step", "device": "tpu", "batchsize": 3})
    msg = str(err.value)
    for needle in ("train.batchsize: unknown key", "train.steps", "train.scheduler", "train.device"):
        assert needle in msg


def test_cosine_schedule_option(sine_windows, tmp_path):
    result = train(DiffusionTS(CFG), sine_windows, None,
                   small_train_cfg(steps=40, scheduler="cosine", warmup=10, min_lr=1e-5,
                                   checkpoint_every=40, val_every=0, log_every=10), tmp_path)
    lrs = [json.loads(l)["lr"] for l in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert lrs[0] == pytest.approx(8e-4) and lrs[-1] == pytest.approx(1e-5)
    assert result.steps == 40


def test_train_accepts_a_torch_dataset(sine_windows, tmp_path):
    class Windows(torch.utils.data.Dataset):
        def __len__(self):
            return len(sine_windows)

        def __getitem__(self, i):
            return torch.from_numpy(sine_windows[i])

    result = train(DiffusionTS(CFG), Windows(), Windows(),
                   small_train_cfg(steps=20, checkpoint_every=20, val_every=20, log_every=10), tmp_path)
    assert result.steps == 20 and np.isfinite(result.val_loss)


def test_predict_mode_training_is_seeded_and_uses_the_given_fraction(sine_windows, tmp_path,
                                                                     monkeypatch):
    """predict_fraction of the micro-batches are trained with the context clean and only the
    last predict_horizon steps noised; the choice comes from the seeded noise generator."""
    horizons = []
    original = DiffusionTS.loss

    def spy(self, x0, generator=None, horizon=None):
        horizons.append(horizon)
        return original(self, x0, generator, horizon)

    monkeypatch.setattr(DiffusionTS, "loss", spy)
    cfg = small_train_cfg(steps=60, checkpoint_every=60, val_every=0, predict_fraction=0.5,
                          predict_horizon=4)
    a, b = DiffusionTS(CFG), DiffusionTS(CFG)
    b.load_state_dict(a.state_dict())
    train(a, sine_windows, None, cfg, tmp_path / "a")
    first = list(horizons)
    horizons.clear()
    train(b, sine_windows, None, cfg, tmp_path / "b")
    assert horizons == first                       # same micro-batches in predict mode
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)                   # a seeded run reproduces bit for bit
    assert set(first) == {None, 4} and 15 <= first.count(4) <= 45   # 60 draws at p = 0.5

    horizons.clear()
    train(DiffusionTS(CFG), sine_windows, None, small_train_cfg(steps=5, checkpoint_every=5, val_every=0),
          tmp_path / "c")
    assert horizons == [None] * 5                  # predict_fraction 0: unconditional only


def test_low_noise_share_draws_that_share_of_timesteps_from_the_lowest_fraction(
        sine_windows, tmp_path, monkeypatch):
    """low_noise_share p, low_noise_fraction f: each row's t is uniform over the lowest
    round(f T) timesteps with probability p, else uniform over all T; seeded."""
    drawn = []
    original = DiffusionTS.loss

    def spy(self, x0, generator=None, horizon=None, *, t=None, noise=None):
        drawn.append(t.clone())
        return original(self, x0, generator, horizon, t=t, noise=noise)

    monkeypatch.setattr(DiffusionTS, "loss", spy)

    def run(name, **changes):
        drawn.clear()
        train(DiffusionTS(CFG), sine_windows, None,
              small_train_cfg(steps=40, checkpoint_every=40, val_every=0, **changes),
              tmp_path / name)
        return torch.cat(drawn)

    only_low = run("all", low_noise_share=1.0, low_noise_fraction=0.1)   # T = 50: t in 0..4
    assert len(only_low) == 40 * 32 and int(only_low.max()) == 4 and int(only_low.min()) == 0
    half = run("half", low_noise_share=0.5, low_noise_fraction=0.1)
    # P(t < 5) = 0.5 + 0.5 * 5 / 50 = 0.55 over 1,280 draws (sd 0.014); the rest spans all T
    assert abs(float((half < 5).float().mean()) - 0.55) < 0.05 and int(half.max()) >= 45
    assert torch.equal(half, run("again", low_noise_share=0.5, low_noise_fraction=0.1))
    with pytest.raises(ConfigError, match="train.low_noise_share"):
        TrainConfig.from_dict({"low_noise_share": 1.5})
    with pytest.raises(ConfigError, match="train.low_noise_fraction"):
        TrainConfig.from_dict({"low_noise_fraction": 0.0})


def test_predict_mode_training_needs_a_horizon_inside_the_window(sine_windows, tmp_path):
    from flowdiff.model import ConfigError

    for horizon in (0, 16):
        with pytest.raises(ConfigError, match=r"train.predict_horizon: an integer in \[1, 15\]"):
            train(DiffusionTS(CFG), sine_windows, None,
                  small_train_cfg(steps=1, predict_fraction=0.2, predict_horizon=horizon), tmp_path)
    with pytest.raises(ConfigError, match="train.predict_fraction"):
        TrainConfig.from_dict({"predict_fraction": 1.5})


def test_resume_accepts_a_checkpoint_written_before_new_model_keys(sine_windows, tmp_path):
    """A checkpoint whose model_config lacks keys added later (issue 11) resumes: the missing
    keys take their defaults, which is the configuration it was trained with."""
    train(DiffusionTS(CFG), sine_windows, None,
          small_train_cfg(steps=10, checkpoint_every=10, val_every=0), tmp_path)
    raw = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    del raw["model_config"]["parameterization"]
    torch.save(raw, tmp_path / "checkpoint.pt")
    result = train(DiffusionTS(CFG), sine_windows, None,
                   small_train_cfg(steps=15, checkpoint_every=5, val_every=0), tmp_path, resume=True)
    assert result.start_step == 10 and result.steps == 15
