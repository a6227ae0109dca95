"""Trace -> artifact: ingest, fit the codec on the training part, encode, window, train
Diffusion-TS, write one self-contained artifact directory (see ``flowdiff.artifact``).

The split is by time and happens before anything is fitted: the last
``data.holdout_records`` records are dropped (kept for evaluation, never seen); of the rest,
the first ``1 - val_fraction`` train the codec and the model and the last part only measures
validation loss (no leakage of the validation period into the codec's ranges or
vocabularies).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from flowdiff.artifact import Artifact, file_sha256, save_artifact
from flowdiff.config import Config, DataConfig

log = logging.getLogger(__name__)

CURVE_FILES = ("train_log.jsonl", "loss_curve.png")  # copied from the work dir into the artifact
DENOISE_WINDOWS = 64   # validation windows of the artifact's denoising curve


@dataclass
class TrainingReport:
    artifact: Path
    records: int
    train_records: int
    windows: int
    steps: int
    final_loss: float
    val_loss: float | None
    seconds: float


def read_trace(d: DataConfig, path: str | Path) -> pd.DataFrame:
    """The trace as a canonical table sorted by ts; with ``data.max_rows``, the first rows of
    the file only (read chunk by chunk, so a large file is not loaded whole)."""
    from flowdiff.ingest import iter_flow_chunks, read_flows

    if d.max_rows is None:
        table, _summary = read_flows(path, format=d.format, skip_bad=d.skip_bad)
        return table
    chunks, rows = [], 0
    for chunk in iter_flow_chunks(path, format=d.format, skip_bad=d.skip_bad,
                                  chunk_rows=min(d.max_rows, 100_000)):
        chunks.append(chunk)
        rows += len(chunk)
        if rows >= d.max_rows:
            break
    if not chunks:
        raise ValueError(f"{path}: no flow records")
    table = pd.concat(chunks, ignore_index=True).iloc[:d.max_rows]
    return table.sort_values("ts", kind="stable", ignore_index=True)


def split_trace(data: DataConfig, table: pd.DataFrame, data_path: str | Path = "trace"
                ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(used, train part, validation part): ``used`` is the trace without its last
    ``data.holdout_records`` records; its first ``1 - val_fraction`` train, the rest validate."""
    holdout = data.holdout_records
    if holdout:
        if holdout >= len(table):
            raise ValueError(f"{data_path}: data.holdout_records {holdout} leaves no records "
                             f"to train on (the trace has {len(table)})")
        log.info("holding out the last %d of %d records (never trained on)", holdout, len(table))
        table = table.iloc[:len(table) - holdout]
    cut = int(round(len(table) * (1.0 - data.val_fraction)))
    return table, table.iloc[:cut], table.iloc[cut:]


def artifact_data_config(artifact) -> DataConfig:
    """The data section an artifact was trained with (its split: hold-out, validation)."""
    saved = artifact.meta.get("config", {}).get("data", {})
    known = {f.name for f in dataclasses.fields(DataConfig)}
    return DataConfig(**{k: v for k, v in saved.items() if k in known})


def _continued_model(base, cfg: Config) -> None:
    """Give the artifact's model the parameterization written in the config's model section,
    the one model key a continued run may change (the network and its weights carry over,
    e.g. edm -> edm-prior); any other model key written there is an error."""
    written = sorted(key.split(".", 1)[1] for key in cfg.lines if key.startswith("model."))
    others = [key for key in written if key != "parameterization"]
    if others:
        raise ValueError(f"--init-from: {cfg.source} sets model keys {', '.join(others)}; a "
                         "continued run keeps the artifact's model and may change only "
                         "model.parameterization")
    if "parameterization" not in written or cfg.model is None \
            or cfg.model.parameterization == base.model.cfg.parameterization:
        return
    from flowdiff.model import DiffusionTS

    model = DiffusionTS(dataclasses.replace(base.model.cfg,
                                            parameterization=cfg.model.parameterization))
    model.load_state_dict(base.model.state_dict())
    base.model = model


def _from_artifact(cfg: Config, init_from: str | Path) -> tuple[Config, Artifact]:
    """(cfg with the artifact's data, window, codec and model sections, the artifact): a run
    that continues training an artifact keeps its split, window and codec and starts from its
    weights; the train section of ``cfg`` applies, and of its model section (if any) only the
    parameterization. The codec's output calibration is dropped (it was fitted on the old
    weights' outputs: run ``flowdiff calibrate`` again)."""
    from flowdiff.artifact import load_artifact
    from flowdiff.config import WindowConfig

    base = load_artifact(init_from)
    _continued_model(base, cfg)
    saved = base.meta.get("config", {})
    stride = saved.get("window", {}).get("stride", cfg.window.stride)
    base.codec.set_calibration(None)
    cfg = dataclasses.replace(cfg, data=artifact_data_config(base), codec=base.codec.config,
                              model=base.model.cfg,
                              window=WindowConfig(context=base.context, horizon=base.horizon,
                                                  stride=stride))
    log.info("continuing %s (%s steps): its data split, window, codec and weights; the "
             "train section of %s", init_from, base.meta.get("steps"), cfg.source)
    return cfg, base


def train_flows(cfg: Config, data_path: str | Path, out_dir: str | Path,
                work_dir: str | Path | None = None, resume: bool = False,
                init_from: str | Path | None = None) -> TrainingReport:
    """Train an artifact on ``data_path``; with ``init_from`` (an artifact directory),
    continue training that artifact instead of starting from a new codec and new weights."""
    from flowdiff.codec import CodecConfig, FlowCodec
    from flowdiff.model import DiffusionTS, ModelConfig, TrainConfig, distributed, train
    from flowdiff.model.rng import scoped_torch_seed

    from flowdiff.model.config import resolve_device
    from flowdiff.windows import WindowDataset

    data_path, out_dir = Path(data_path), Path(out_dir)
    work_dir = Path(work_dir) if work_dir else out_dir.with_name(out_dir.name + ".work")
    base = None
    if init_from is not None:
        cfg, base = _from_artifact(cfg, init_from)
    train_cfg = cfg.train or TrainConfig()
    window = cfg.window
    ranks, _device = distributed.setup(resolve_device(train_cfg.device))  # torchrun: join
    table, train_part, val_part = split_trace(cfg.data, read_trace(cfg.data, data_path), data_path)
    holdout = cfg.data.holdout_records
    if len(train_part) < window.length + 1:
        raise ValueError(f"{data_path}: {len(train_part)} training records, fewer than one "
                         f"window of {window.length} (context + horizon); use more data "
                         "(data.max_rows) or a smaller window")
    if base is not None:
        codec = base.codec
    else:
        codec = distributed.from_main(  # rank 0 fits, every rank encodes with the same codec
            ranks, lambda: FlowCodec.fit(train_part, cfg.codec or CodecConfig(), seed=train_cfg.seed))
    encoded_train = codec.encode(train_part)  # (n_train, F)
    train_windows = WindowDataset(encoded_train, window.length, window.stride)
    val_windows = None
    if len(val_part) >= window.length:
        encoded_val = codec.encode(val_part, prev_ts=float(train_part["ts"].iloc[-1]))
        val_windows = WindowDataset(encoded_val, window.length, window.stride)
    model_cfg = dataclasses.replace(cfg.model or ModelConfig(), seq_len=window.length,
                                    feature_size=codec.width)
    if base is not None:
        model = base.model
    else:
        with scoped_torch_seed(train_cfg.seed):  # the initial weights: same seed, same model (every rank)
            model = DiffusionTS(model_cfg)
    if model_cfg.parameterization == "edm-prior" and model.prior is None:
        from flowdiff.model.prior import MarginalPrior

        model.set_prior(MarginalPrior.fit(encoded_train, codec.feature_parts))
        log.info("marginal prior of the training records: %s", model.prior.summary())
    if model_cfg.block_length and model.blocks is None:
        from flowdiff.model.blocks import BlockConditioning

        model.set_blocks(BlockConditioning.fit(encoded_train, model_cfg.block_length,
                                               model_cfg.block_dims))
        log.info("block conditioning: %s", model.blocks.summary())
    log.info("training on %d records (%d windows of %d, %d features), %d parameters, "
             "%d steps", len(train_part), len(train_windows), window.length, codec.width,
             model.num_parameters(), train_cfg.steps)
    result = train(model, train_windows, val_windows, train_cfg, work_dir, resume=resume)
    if not ranks.is_main:  # rank 0 writes the artifact
        return TrainingReport(artifact=out_dir, records=len(table), train_records=len(train_part),
                              windows=len(train_windows), steps=result.steps,
                              final_loss=result.final_loss, val_loss=result.val_loss,
                              seconds=result.total_seconds)
    losses = _loss_history(work_dir / "train_log.jsonl")
    meta = {
        "data_file": data_path.name, "data_sha256": file_sha256(data_path),
        "records": len(table), "holdout_records": holdout, "train_records": len(train_part), "val_records": len(val_part),
        "train_windows": len(train_windows), "steps": result.steps,
        "final_loss": result.final_loss, "val_loss": result.val_loss,
        "nan_skipped": result.nan_skipped, "train_seconds": round(result.total_seconds, 1),
        "losses": losses, "config": {
            "data": dataclasses.asdict(cfg.data), "window": dataclasses.asdict(window),
            "codec": codec.config.to_dict(), "model": model_cfg.to_dict(),
            "train": train_cfg.to_dict()},
        "source_config": cfg.source,
        "total_train_seconds": round(result.total_seconds, 1),
    }
    if base is not None:  # the training before this run, so the whole budget stays visible
        earlier = base.meta.get("total_train_seconds", base.meta.get("train_seconds", 0.0))
        meta["init_from"] = {key: base.meta.get(key) for key in
                             ("steps", "train_seconds", "source_config", "data_sha256", "init_from")}
        meta["total_train_seconds"] = round(earlier + result.total_seconds, 1)
    from flowdiff import __version__
    meta["flowdiff_version"] = __version__
    artifact = Artifact(model=model, codec=codec, context=window.context,
                        horizon=window.horizon, meta=meta)
    path = save_artifact(out_dir, artifact)
    for name in CURVE_FILES:
        if (work_dir / name).exists():
            shutil.copy2(work_dir / name, path / name)
    _denoise_curve(model, val_windows or train_windows, codec, path)
    return TrainingReport(artifact=path, records=len(table), train_records=len(train_part),
                          windows=len(train_windows), steps=result.steps,
                          final_loss=result.final_loss, val_loss=result.val_loss,
                          seconds=result.total_seconds)


def _denoise_curve(model, windows, codec, path: Path) -> None:
    """The artifact's denoising curve (docs/model.md): per field, the x0 error against the
    noisy input's at small to large t, on up to DENOISE_WINDOWS validation windows."""
    import numpy as np

    from flowdiff.model.denoise_curve import write_denoise_curve

    picks = np.linspace(0, len(windows) - 1, min(DENOISE_WINDOWS, len(windows))).round()
    batch = np.stack([np.asarray(windows[int(i)]) for i in picks]).astype(np.float32)
    curve = write_denoise_curve(model, batch, codec.feature_slices, path,
                                title=f"{path.name} ({model.cfg.parameterization})")
    log.info("denoising curve (%d windows) written to %s:\n%s", curve.windows, path,
             curve.table())


def _loss_history(log_path: Path) -> list[dict]:
    """(step, loss[, val_loss]) of every logged step, for the artifact's metadata."""
    if not log_path.exists():
        return []
    history = []
    for line in log_path.read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            history.append({k: record[k] for k in ("step", "loss", "val_loss") if k in record})
    return history
