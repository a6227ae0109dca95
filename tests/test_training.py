"""Trace -> artifact pipeline: one self-contained directory, version-checked on load."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from flowdiff.artifact import ArtifactError, load_artifact, read_manifest
from flowdiff.commands import train as train_command

REPO = Path(__file__).resolve().parents[1]


def run_train(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    train_command.register(parser.add_subparsers())
    args = parser.parse_args(["train", *argv])
    return args.func(args)


@pytest.fixture
def artifact_dir(tiny_model) -> Path:
    """The session's tiny model (conftest), trained by ``flowdiff train``."""
    return tiny_model


def test_artifact_is_self_contained_with_metadata(artifact_dir):
    from conftest import shared_file

    from flowdiff.artifact import file_sha256

    names = {p.name for p in artifact_dir.iterdir()}
    assert {"artifact.json", "model.pt", "codec", "train_log.jsonl", "loss_curve.png",
            "denoise_curve.json", "denoise_curve.txt", "denoise_curve.png"} <= names
    curve = json.loads((artifact_dir / "denoise_curve.json").read_text())
    assert set(curve["ratio"]) >= {"srcip", "dstip", "ts", "td", "all"}   # one group per field
    assert curve["timesteps"][0] == 0 and curve["timesteps_total"] == 50
    assert all(len(v) == len(curve["timesteps"]) for v in curve["ratio"].values())
    manifest = read_manifest(artifact_dir)
    meta = manifest["meta"]
    assert manifest["version"] == 1 and manifest["window"] == {"context": 24, "horizon": 8}
    assert meta["data_sha256"] == file_sha256(shared_file("ugr16/ugr16_sample_20k.csv"))
    assert meta["records"] == 1500 and meta["train_records"] == 1200  # max_rows, val 20 %
    assert meta["steps"] == 30 and len(meta["losses"]) == 3
    assert all(l["loss"] > 0 for l in meta["losses"])
    assert meta["config"]["model"]["seq_len"] == 32
    # weights only: the resumable checkpoint (optimizer state) stays in the work directory
    work_checkpoint = artifact_dir.parent / "model.work" / "checkpoint.pt"
    assert (artifact_dir / "model.pt").stat().st_size < work_checkpoint.stat().st_size


def test_artifact_loads_and_predicts(artifact_dir):
    from flowdiff.model import make_sampler

    art = load_artifact(artifact_dir)
    assert art.model.cfg.seq_len == art.context + art.horizon
    assert art.model.cfg.feature_size == art.codec.width
    ctx = torch.rand(2, art.context, art.codec.width)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    out = art.model.predict(ctx, art.horizon, make_sampler("replacement", steps=2), gens)
    assert out.shape == (2, art.horizon, art.codec.width)
    decoded = art.codec.decode(out[0].numpy(), start_ts=0.0)
    assert len(decoded.table) == art.horizon


def test_artifact_version_and_format_are_checked(artifact_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(artifact_dir, copy)
    manifest = json.loads((copy / "artifact.json").read_text())
    manifest["version"] = 99
    (copy / "artifact.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="artifact version 99 is not supported"):
        load_artifact(copy)
    with pytest.raises(ArtifactError, match="not a flowdiff model directory"):
        load_artifact(tmp_path)
    manifest.update(version=1, window={"context": 20, "horizon": 8})
    (copy / "artifact.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="model window 32 != context 20"):
        load_artifact(copy)


def test_too_little_data_is_a_clear_error(tmp_path):
    from conftest import shared_file

    config = tmp_path / "c.yaml"
    config.write_text((REPO / "configs" / "tiny-test.yaml").read_text()
                      .replace("max_rows: 1500", "max_rows: 30"))
    with pytest.raises(ValueError, match="fewer than one window of 32"):
        run_train(["--data", str(shared_file("ugr16/ugr16_sample_20k.csv")), "--config",
                   str(config), "--out", str(tmp_path / "m")])


def test_invalid_training_config_exits_2(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  steps: -1\nwindow:\n  context: 0\n")
    assert run_train(["--data", "x.csv", "--config", str(config), "--out",
                      str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "train.steps" in err and "window.context" in err


def test_timeseries_kind_delegates_to_the_model_trainer(tmp_path):
    from conftest import shared_file

    csv = shared_file("timeseries/stock_data.csv")
    config = tmp_path / "dts.yaml"
    config.write_text(f"""
data: {{csv: {csv}, train_fraction: 0.9}}
model: {{seq_len: 8, feature_size: 6, n_layer_enc: 1, n_layer_dec: 1, d_model: 16,
         n_heads: 2, timesteps: 20}}
train: {{steps: 3, batch_size: 8, grad_accum: 1, warmup: 1, checkpoint_every: 3,
         val_every: 0, device: cpu, num_threads: 1}}
""")
    assert run_train(["--kind", "timeseries", "--config", str(config),
                      "--out", str(tmp_path / "ts")]) == 0
    assert (tmp_path / "ts" / "checkpoint.pt").exists()


def test_init_from_continues_an_artifact_with_its_split_codec_and_weights(artifact_dir, tmp_path):
    """``--init-from``: only the config's train section applies; the data split, window, codec
    and starting weights are the artifact's; the stale output calibration is dropped; the
    metadata keeps the earlier training (steps, seconds) so the whole budget stays visible."""
    import shutil

    import numpy as np

    from conftest import shared_file

    from flowdiff.cli import main

    data = shared_file("ugr16/ugr16_sample_20k.csv")
    base_dir = tmp_path / "base"
    shutil.copytree(artifact_dir, base_dir)
    assert main(["calibrate", "--model", str(base_dir), "--data", str(data), "--streams", "2",
                 "--turns", "2", "--steps", "2"]) == 0
    config = tmp_path / "finetune.yaml"   # no data section: max_rows 1500 comes from the artifact
    config.write_text("train: {steps: 3, batch_size: 8, grad_accum: 1, warmup: 0, lr: 1.0e-7,\n"
                      "        min_lr: 0.0, checkpoint_every: 3, val_every: 0, log_every: 1,\n"
                      "        ema_decay: 0.0, ema_every: 1, device: cpu, num_threads: 1,\n"
                      "        low_noise_share: 0.5}\n")
    assert run_train(["--data", str(data), "--config", str(config), "--init-from",
                      str(base_dir), "--out", str(tmp_path / "tuned")]) == 0

    base, tuned = load_artifact(base_dir), load_artifact(tmp_path / "tuned")
    assert base.codec.calibration is not None and tuned.codec.calibration is None
    rows = torch.rand(40, base.codec.width).numpy()
    base.codec.set_calibration(None)
    assert base.codec.decode(rows, start_ts=0.0).table.equals(
        tuned.codec.decode(rows, start_ts=0.0).table)                  # the same codec
    diffs = [float((a - b).abs().max()) for a, b in
             zip(base.model.state_dict().values(), tuned.model.state_dict().values())]
    assert 0.0 < max(diffs) < 1e-3     # 3 steps at lr 1e-7 (EMA = the weights) from the base ones
    meta = read_manifest(tmp_path / "tuned")["meta"]
    assert meta["train_records"] == 1200 and meta["steps"] == 3
    assert meta["config"]["train"]["low_noise_share"] == 0.5
    assert meta["init_from"]["steps"] == 30
    assert np.isclose(meta["total_train_seconds"],
                      meta["init_from"]["train_seconds"] + meta["train_seconds"], atol=0.2)
    assert (tmp_path / "tuned" / "denoise_curve.json").exists()


def test_init_from_a_missing_artifact_exits_2(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("train: {steps: 1}\n")
    assert run_train(["--data", "x.csv", "--config", str(config), "--init-from",
                      str(tmp_path / "nothing"), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "--init-from" in err and "nothing" in err


def test_init_from_may_switch_to_edm_prior_and_nothing_else_of_the_model(artifact_dir, tmp_path):
    """A continued run's config may change model.parameterization only: the network and its
    weights carry over; an edm-prior artifact carries the prior fitted on its training rows."""
    from conftest import shared_file

    from flowdiff.model import make_sampler

    data = shared_file("ugr16/ugr16_sample_20k.csv")
    config = tmp_path / "prior.yaml"
    train_section = ("train: {steps: 2, batch_size: 8, grad_accum: 1, warmup: 0, "
                     "checkpoint_every: 2, val_every: 0, device: cpu, num_threads: 1}\n")
    config.write_text("model: {parameterization: edm-prior}\n" + train_section)
    assert run_train(["--data", str(data), "--config", str(config), "--init-from",
                      str(artifact_dir), "--out", str(tmp_path / "prior")]) == 0
    base, art = load_artifact(artifact_dir), load_artifact(tmp_path / "prior")
    assert art.model.cfg.parameterization == "edm-prior"
    assert art.model.cfg.to_dict() == {**base.model.cfg.to_dict(), "parameterization": "edm-prior"}
    assert art.model.prior is not None and art.model.prior.width == art.codec.width
    parts = art.codec.feature_parts      # the prior's groups: fields, addresses and ports split
    assert parts["srcip.code"].stop == parts["srcip.bits"].start == art.codec.feature_slices["srcip"].stop - 32
    assert sum(p.stop - p.start for p in parts.values()) == art.codec.width
    assert "srcport.vector" in parts and parts["srcport.bits"].stop - parts["srcport.bits"].start == 16
    code = list(range(parts["srcip.code"].start, parts["srcip.code"].stop))
    assert any(cols.tolist() == code for cols, _atoms, _w in art.model.prior.joint)  # codes jointly
    gens = [torch.Generator().manual_seed(0)]
    out = art.model.predict(torch.rand(1, art.context, art.codec.width), art.horizon,
                            make_sampler("conditional", steps=2), gens)
    assert out.shape == (1, art.horizon, art.codec.width) and torch.isfinite(out).all()

    config.write_text("model: {parameterization: edm-prior, d_model: 32}\n" + train_section)
    with pytest.raises(ValueError, match="sets model keys d_model"):
        run_train(["--data", str(data), "--config", str(config), "--init-from",
                   str(artifact_dir), "--out", str(tmp_path / "bad")])
