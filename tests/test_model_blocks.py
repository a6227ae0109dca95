"""Block conditioning (flowdiff.model.blocks): summaries against the math on tiny cases, the
training path (dropout, network input), checkpoints, a tiny model that learns to follow its
summaries, and the daemon's walk through the bank."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from flowdiff.model import CheckpointError, DiffusionTS, ModelConfig, TrainConfig
from flowdiff.model import load_checkpoint, make_sampler, save_checkpoint, train
from flowdiff.model.blocks import WALK_TURNS, BlockConditioning, block_means, expand_blocks

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]


def test_summaries_are_the_projected_block_means_and_the_bank_is_the_training_sequence():
    rng = np.random.default_rng(0)
    rows = rng.random((1003, 5))                       # 100 blocks of 10, 3 rows left over
    blocks = BlockConditioning.fit(rows, length=10, dims=3)
    means = rows[:1000].reshape(100, 10, 5).mean(axis=1)
    center = means.mean(axis=0)
    basis = blocks.basis.double().numpy()
    np.testing.assert_allclose(basis.T @ basis, np.eye(3), atol=1e-6)      # orthonormal (float32)
    # the first direction is the top principal direction of the block means
    top = np.linalg.eigh(np.cov((means - center).T))[1][:, -1]
    assert abs(abs(float(top @ basis[:, 0])) - 1.0) < 1e-6
    expected = (means - center) @ basis / blocks.scale.double().numpy()
    np.testing.assert_allclose(blocks.bank.double().numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(blocks.bank.double().numpy().std(axis=0, ddof=1), 1.0, atol=1e-5)
    # a window starting on a block boundary: each step carries its block's bank entry
    window = torch.as_tensor(rows[20:60][None], dtype=torch.float32)         # blocks 2..5
    summaries = blocks.summarise(window)                                      # (1, 40, 3)
    assert summaries.shape == (1, 40, 3)
    for step in range(40):
        torch.testing.assert_close(summaries[0, step], blocks.bank[2 + step // 10], atol=1e-5, rtol=0)
    # a last, shorter block is its own mean
    x = torch.arange(7.0).reshape(1, 7, 1)
    torch.testing.assert_close(block_means(x, 3), torch.tensor([[[1.0], [4.0], [6.0]]]))
    assert expand_blocks(torch.tensor([[[1.0], [2.0]]]), 2, 3).flatten().tolist() == [1.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="fewer than two blocks"):
        BlockConditioning.fit(rows[:15], length=10, dims=3)


CFG = ModelConfig(seq_len=16, feature_size=2, n_layer_enc=1, n_layer_dec=1, d_model=16,
                  n_heads=2, timesteps=50, parameterization="edm", loss_weighting="edm",
                  block_length=4, block_dims=1, block_dropout=0.25)


def regime_rows(n: int, seed: int) -> np.ndarray:
    """Rows whose 4-row blocks sit at a level 0.2 or 0.8 (kept from block to block with
    probability 0.8), feature 1 = 1 - feature 0: the level is the only thing that varies."""
    rng = np.random.default_rng(seed)
    levels, level = [], 0.2
    for _ in range(n // 4):
        level = level if rng.random() < 0.8 else 1.0 - level
        levels.append(level)
    first = np.repeat(levels, 4) + rng.normal(0, 0.03, 4 * len(levels))
    return np.clip(np.column_stack([first, 1.0 - first]), 0.0, 1.0)


def blocked_model(rows: np.ndarray) -> DiffusionTS:
    torch.manual_seed(0)
    model = DiffusionTS(CFG)
    model.set_blocks(BlockConditioning.fit(rows, CFG.block_length, CFG.block_dims))
    return model


class Spy(torch.nn.Module):
    """Wraps a network and records the block summaries it was given."""

    def __init__(self, network):
        super().__init__()
        self.network, self.seen = network, []

    def forward(self, x, t, blocks=None):
        self.seen.append(blocks)
        return self.network(x, t, blocks)


def test_training_loss_gives_the_clean_windows_summaries_and_drops_a_share_of_rows():
    rows = regime_rows(4000, 1)
    model = blocked_model(rows)
    spy = model.network = Spy(model.network)
    windows = torch.as_tensor(np.stack([rows[i:i + 16] for i in range(0, 3980, 4)]), dtype=torch.float32)
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn(windows.shape, generator=generator)
    t = torch.randint(0, CFG.timesteps, (len(windows),), generator=generator)
    model.loss(windows, t=t, noise=noise)
    given = spy.seen[-1]                                                      # (B, 16, 1)
    full = model.blocks.summarise(windows)
    kept = noise[:, 0, 0] <= math.sqrt(2.0) * float(torch.erfinv(torch.tensor(1 - 2 * 0.25)))
    torch.testing.assert_close(given[kept], full[kept])
    assert torch.equal(given[~kept], torch.zeros_like(given[~kept]))
    assert abs(float((~kept).float().mean()) - 0.25) < 0.05                  # the dropout share
    # without summaries the network sees zeros, the same as a dropped row
    network = spy.network
    x, tt = windows[:3] * 2 - 1, t[:3]
    torch.testing.assert_close(network(x, tt), network(x, tt, torch.zeros(3, 16, 1)))
    assert not torch.allclose(network(x, tt), network(x, tt, full[:3]))      # and it reads them


def test_checkpoint_keeps_the_bank_and_refuses_a_file_without_it(tmp_path):
    rows = regime_rows(400, 2)
    model = blocked_model(rows)
    save_checkpoint(tmp_path / "m.pt", model)
    loaded, _ = load_checkpoint(tmp_path / "m.pt")
    assert torch.equal(loaded.blocks.bank, model.blocks.bank)
    assert loaded.blocks.length == 4
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    del raw["blocks"]
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="without its 'blocks' entry"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="no block conditioning"):
        DiffusionTS(ModelConfig(seq_len=16, feature_size=2, d_model=16, n_heads=2)).set_blocks(model.blocks)
    with pytest.raises(RuntimeError, match="no fitted BlockConditioning"):
        DiffusionTS(CFG).loss(torch.full((2, 16, 2), 0.5))


def test_a_tiny_model_learns_to_follow_its_block_summaries(tmp_path):
    """Trained on windows whose blocks sit at level 0.2 or 0.8, the model given a "high" or
    a "low" summary for a block generates that block at that level; horizons continue a
    context under the summaries given."""
    rows = regime_rows(8000, 4)
    model = blocked_model(rows)
    windows = np.stack([rows[i:i + 16] for i in range(0, 7980, 2)]).astype(np.float32)
    cfg = TrainConfig.from_dict(dict(steps=400, batch_size=32, grad_accum=1, warmup=20, lr=2e-3,
                                     checkpoint_every=400, val_every=0, seed=5, device="cpu",
                                     predict_fraction=0.5, predict_horizon=8))
    train(model, windows, None, cfg, tmp_path / "run")
    model, _ = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    bank = model.blocks.bank[:, 0]
    high_is_positive = float(bank[torch.as_tensor(rows[:len(bank) * 4:4, 0] > 0.5)].mean()) > 0
    high = bank.max() if high_is_positive else bank.min()
    low = bank.min() if high_is_positive else bank.max()
    # each window: 4 blocks, levels drawn at random
    rng = np.random.default_rng(9)
    wanted = rng.random((64, 4)) < 0.5                                        # True = high
    summaries = torch.where(torch.as_tensor(wanted), high, low)[:, :, None]  # (64, 4, 1)
    per_step = expand_blocks(summaries, 4, 16)
    sampler = make_sampler("ddim", steps=20)
    generators = [torch.Generator().manual_seed(s) for s in range(64)]
    out = model.sample(64, sampler, generators, per_step)                    # (64, 16, 2)
    levels = block_means(out, 4)[:, :, 0]                                     # (64, 4)
    assert float(levels[torch.as_tensor(wanted)].min()) > 0.5
    assert float(levels[~torch.as_tensor(wanted)].max()) < 0.5
    # predict: the horizon (2 blocks) follows the summaries given, whatever the context
    context = torch.as_tensor(rows[:8].reshape(1, 8, 2).repeat(64, 0), dtype=torch.float32)
    generators = [torch.Generator().manual_seed(s) for s in range(64)]
    horizon = model.predict(context, 8, make_sampler("conditional", steps=20), generators,
                            horizon_blocks=per_step[:, 8:])
    levels = block_means(horizon, 4)[:, :, 0]                                 # (64, 2)
    assert float(levels[torch.as_tensor(wanted[:, 2:])].min()) > 0.5
    assert float(levels[~torch.as_tensor(wanted[:, 2:])].max()) < 0.5
    with pytest.raises(ValueError, match="horizon_blocks must have shape"):
        model.predict(context, 8, sampler, generators, horizon_blocks=per_step[:, :7])


def test_streams_walk_the_bank_in_order_and_the_cli_path_is_seeded(ugr16_sample, tmp_path):
    """flowdiff train fits the bank; each stream's horizons continue its walk turn after turn
    (the blocks after its context's), jumping every WALK_TURNS turns; calibrate skips the
    starting-noise regimes; generate reproduces byte for byte."""
    from flowdiff.artifact import load_artifact
    from flowdiff.cli import main
    from flowdiff.daemon.generator import StreamGenerator

    config = yaml.safe_load((REPO / "configs" / "tiny-test.yaml").read_text())
    config["model"].update(parameterization="edm-prior", block_length=4, block_dims=3)
    path = tmp_path / "blocks.yaml"
    path.write_text(yaml.safe_dump(config))
    bad = dict(config, model=dict(config["model"], block_length=5))
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert main(["train", "--data", str(ugr16_sample), "--config", str(tmp_path / "bad.yaml"),
                 "--out", str(tmp_path / "bad")]) != 0
    out = tmp_path / "model"
    assert main(["train", "--data", str(ugr16_sample), "--config", str(path), "--out", str(out)]) == 0
    artifact = load_artifact(out)
    blocks = artifact.model.blocks
    assert blocks.length == 4 and blocks.dims == 3 and blocks.bank.shape[0] >= 200

    seen = []
    predict = artifact.model.predict

    def spy(*args, **kwargs):
        seen.append(kwargs["horizon_blocks"])
        return predict(*args, **kwargs)

    artifact.model.predict = spy
    bank, n = blocks.bank, len(blocks.bank)

    def bank_index(summary):
        return int(np.flatnonzero((bank == summary).all(dim=1))[0])

    def first_blocks(timeline):
        """The first bank block of each turn's horizon, (turns, streams), over WALK_TURNS + 1 turns."""
        seen.clear()
        gen = StreamGenerator(artifact.model, artifact.codec, make_sampler("conditional", steps=3),
                              context=24, horizon=8, streams=2, seed=11, timeline=timeline)
        gen.start_unconditional(make_sampler("ddim", steps=3), start_ts=0.0)
        for _ in range(WALK_TURNS + 1):
            gen.step()
        firsts = np.array([[bank_index(turn[s, 0]) for s in range(2)] for turn in seen])
        for turn, first in zip(seen, firsts):   # a horizon's two blocks are consecutive bank blocks
            for stream in range(2):
                torch.testing.assert_close(turn[stream, 4], bank[(first[stream] + 1) % n])
        return firsts

    # one timeline: the two streams are slices of one walk, stream s at turn k reads its
    # step 2k + s (two blocks each, after the first window's 32 / 4), so the merged output
    # reads the bank in order, and the walk jumps after WALK_TURNS steps (WALK_TURNS / 2 turns)
    firsts = first_blocks("shared")
    start = firsts[0, 0] - 8
    for turn in (0, 1, WALK_TURNS // 2 - 1):
        assert list(firsts[turn]) == [(start + 8 + 2 * (2 * turn + s)) % n for s in range(2)]
    assert firsts[WALK_TURNS // 2, 0] != (start + 8 + 2 * WALK_TURNS) % n
    # separate timelines: each stream walks its own places, one step per turn
    firsts = first_blocks("per_stream")
    for stream in range(2):
        start = firsts[0, stream] - 8
        for turn in (0, 1, WALK_TURNS - 1):
            assert firsts[turn, stream] == (start + 8 + 2 * turn) % n
        assert firsts[WALK_TURNS, stream] != (start + 8 + 2 * WALK_TURNS) % n   # a new place
    assert firsts[0, 0] != firsts[0, 1]                                       # streams differ

    assert main(["calibrate", "--model", str(out), "--data", str(ugr16_sample), "--streams", "2",
                 "--turns", "3"]) == 0
    codec = json.loads((out / "codec" / "codec.json").read_text())
    assert codec["calibration"]["regimes"] == {}
    files = []
    for name in ("a", "b"):
        files.append(tmp_path / f"{name}.jsonl")
        assert main(["generate", "--model", str(out), "--records", "64", "--streams", "2",
                     "--seed", "5", "--start-ts", "1460390400", "--out", str(files[-1])]) == 0
    assert files[0].read_bytes() == files[1].read_bytes()
