"""Training loop: Adam, warm-up + plateau/cosine lr, grad clipping, EMA, NaN guard,
atomic periodic checkpoints, --resume, progress bar, JSONL log and a loss-curve PNG.
Under torchrun the same loop runs data-parallel (DDP); see ``flowdiff.model.distributed``.

Writes into ``out_dir``: ``checkpoint.pt`` (EMA weights + model config + training state),
``train_log.jsonl`` (one JSON object per logged step or event), ``loss_curve.png``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from flowdiff.atomic import write_atomic_via
from flowdiff.model import distributed
from flowdiff.model.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from flowdiff.model.config import ConfigError, ModelConfig, TrainConfig, resolve_device
from flowdiff.model.diffusion_ts import DiffusionTS
from flowdiff.model.ema import EMA
from flowdiff.model.rng import randint_rows, randn_like_rows
from flowdiff.model.schedules import WarmupLR

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "train_log.jsonl"
CURVE_NAME = "loss_curve.png"
VAL_WINDOWS = 1024          # validation loss uses at most this many windows
VAL_REPEATS = 4             # ... each with this many draws of (t, noise)
VAL_CHUNK = 64              # ... in chunks of this many windows (a 400 + 100 window's attention
                            # maps at 256 per chunk grew a fresh process to 13-18 GB)


@dataclass
class TrainResult:
    steps: int                    # optimiser steps completed in total (including resumed ones)
    final_loss: float             # mean training loss over the last logged interval
    val_loss: float | None        # EMA model's validation loss at the end
    seconds: float                # wall time of this call
    start_step: int               # step this call started from (> 0 after --resume)
    total_seconds: float          # wall time of every call, resumed ones included
    steps_per_s: float
    nan_skipped: int              # steps skipped because loss or gradient was not finite
    nan_restores: int             # times the last good state was restored
    checkpoint: Path


def as_windows(data: Dataset | np.ndarray | torch.Tensor, name: str, seq_len: int,
               n_feat: int) -> Dataset | torch.Tensor:
    """Validate windows: arrays/tensors (N, L, F) finite in [0, 1] -> float32 tensor."""
    if isinstance(data, Dataset) and not isinstance(data, torch.Tensor):
        if len(data) == 0:
            raise ValueError(f"{name}: the dataset is empty")
        return data
    x = torch.as_tensor(np.asarray(data, dtype=np.float32) if not isinstance(data, torch.Tensor) else data)
    x = x.float()
    if x.dim() != 3 or tuple(x.shape[1:]) != (seq_len, n_feat):
        raise ValueError(f"{name}: expected windows of shape (N, {seq_len}, {n_feat}), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: no windows")
    bad = ~torch.isfinite(x) | (x < 0) | (x > 1)
    if bad.any():
        i, step, feat = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"{name}: window {i}, step {step}, feature {feat} is {float(x[i, step, feat])}; "
                         "expected a finite value in [0, 1] (scale data before training)")
    return x


@torch.no_grad()
def validation_loss(model: DiffusionTS, data: Dataset | torch.Tensor, seed: int, device: str) -> float:
    """Mean loss over up to VAL_WINDOWS windows, VAL_REPEATS fixed draws of (t, noise)."""
    if isinstance(data, torch.Tensor):
        x = data[:VAL_WINDOWS]
    else:
        x = torch.stack([torch.as_tensor(data[i]) for i in range(min(len(data), VAL_WINDOWS))])
    x = x.to(device).float()
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    losses = [float(model.loss(x[i:i + VAL_CHUNK], generator)) for _ in range(VAL_REPEATS)
              for i in range(0, x.shape[0], VAL_CHUNK)]
    model.train(was_training)
    return float(np.mean(losses))


def plot_loss_curve(records: list[dict], path: Path) -> None:
    """Training loss (and validation loss) per step, log scale, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records if "loss" in r]
    losses = [r["loss"] for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, label="train loss (interval mean)")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss (EMA weights)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if losses and min(losses) > 0:
        ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_atomic_via(path, lambda name: fig.savefig(name, dpi=100))
    plt.close(fig)


class _Run:
    """State of one training run; ``train`` below is the entry point."""

    def __init__(self, model: DiffusionTS, cfg: TrainConfig, out_dir: Path, device: str,
                 user_extra: dict, ranks: distributed.Ranks = distributed.SINGLE,
                 plan: distributed.DevicePlan | None = None):
        self.model, self.cfg, self.out_dir, self.device = model, cfg, out_dir, device
        self.user_extra = user_extra
        self.ranks = ranks
        self.plan = plan or distributed.plan(device, "fp32", False)
        # the module a step calls when it is not the plain model.loss (DDP and/or compiled)
        self.module = (distributed.wrap(model, ranks, device, self.plan.compile)
                       if ranks.parallel or self.plan.compile else None)
        self.batches: distributed.ShardedBatches | None = None  # set by train()
        self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr,
                                          betas=(cfg.adam_beta1, cfg.adam_beta2))
        self.schedule = WarmupLR(cfg)
        self.ema = EMA(model, cfg.ema_decay, cfg.ema_every)
        self.noise_generator = torch.Generator().manual_seed(cfg.seed)  # global: alike on all ranks
        self.step = 0
        self.records: list[dict] = []
        self.nan_skipped = 0
        self.nan_restores = 0
        self.earlier_seconds = 0.0            # training time before a --resume
        self.started = time.perf_counter()    # this call's start
        self.good_state: dict | None = None
        self.set_lr(self.schedule.lr)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state(self) -> dict:
        return {
            "step": self.step,
            "online": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "schedule": self.schedule.state_dict(),
            "ema": copy.deepcopy(self.ema.state_dict()),
            "noise_generator": self.noise_generator.get_state(),
            "data_position": self.batches.position() if self.batches else None,
            "nan_skipped": self.nan_skipped,
            "nan_restores": self.nan_restores,
            "seconds": self.total_seconds(),
        }

    def total_seconds(self) -> float:
        """Training wall time over every call, including those before a --resume."""
        return self.earlier_seconds + time.perf_counter() - self.started

    def load_state(self, state: dict) -> None:
        self.step = int(state["step"])
        self.model.load_state_dict(state["online"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.ema.load_state_dict(state["ema"])
        self.noise_generator.set_state(state["noise_generator"])
        if self.batches is not None and state.get("data_position"):  # absent before DDP
            self.batches.seek(state["data_position"])
        self.nan_skipped = int(state["nan_skipped"])
        self.nan_restores = int(state["nan_restores"])
        self.set_lr(self.schedule.lr)

    def save(self, val_loss: float | None) -> Path:
        path = self.out_dir / CHECKPOINT_NAME
        if not self.ranks.is_main:  # rank 0 writes; the others keep the state for NaN restores
            self.good_state = self.state()
            return path
        extra = {**self.user_extra, "train_config": self.cfg.to_dict(), "train_state": self.state(),
                 "val_loss": val_loss, "records": self.records[-2000:]}
        save_checkpoint(path, self.ema.model, extra)
        self.good_state = extra["train_state"]
        return path

    def log_event(self, record: dict) -> None:
        self.records.append(record)
        if not self.ranks.is_main:
            return
        with open(self.out_dir / LOG_NAME, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def one_step(self, data_iter: Iterator[tuple[torch.Tensor, slice]]) -> float | None:
        """One optimiser step over ``grad_accum`` micro-batches; None if it was skipped
        (on every rank alike: the loss and a bad-step flag are all-reduced once per step)."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        total, bad = 0.0, False
        for i in range(cfg.grad_accum):
            x0, rows = next(data_iter)
            x0 = x0.to(self.device, torch.float32)                              # (b, L, F)
            with distributed.no_sync(self.module, last=i == cfg.grad_accum - 1) \
                    if self.module is not None else contextlib.nullcontext():
                with self.plan.autocast():
                    loss = self.micro_batch_loss(x0, rows, self.draw_horizon()) / cfg.grad_accum
                if not torch.isfinite(loss):
                    if not self.ranks.parallel:
                        return None
                    bad = True  # backward still runs: DDP's all-reduce waits for every rank
                loss.backward()
            total += loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        total, bad = distributed.reduce_step(total, bad or not torch.isfinite(grad_norm),
                                             self.ranks)
        if bad:
            return None
        self.optimizer.step()
        return total

    def micro_batch_loss(self, x0: torch.Tensor, rows: slice, horizon: int | None) -> torch.Tensor:
        """Loss of this rank's windows x0 (b, L, F). Alone: model.loss draws (t, noise) for
        the batch. Data-parallel: (t, noise) are drawn for the global batch (b * N rows, from
        the generator every rank holds alike) and this rank keeps its ``rows``."""
        if self.module is None and self.cfg.low_noise_share == 0.0:
            return self.model.loss(x0, self.noise_generator, horizon)
        n_global = x0.shape[0] * self.ranks.world_size
        t = self.draw_timesteps(n_global)[rows]                                         # (b,)
        noise = randn_like_rows((n_global, *x0.shape[1:]), self.noise_generator)[rows]    # (b, L, F)
        if self.module is None:
            return self.model.loss(x0, horizon=horizon, t=t, noise=noise)
        return self.module(x0, t.to(self.device), noise.to(self.device), horizon)

    def draw_timesteps(self, n: int) -> torch.Tensor:
        """t (n,) for a global batch: uniform over the T timesteps, except that each row is,
        with probability low_noise_share, drawn uniformly from the lowest low_noise_fraction
        of them instead (where the denoiser must beat its own input, docs/model.md)."""
        total = self.model.cfg.timesteps
        t = randint_rows(n, total, self.noise_generator)
        if self.cfg.low_noise_share > 0.0:
            low = torch.rand(n, generator=self.noise_generator) < self.cfg.low_noise_share
            low_t = randint_rows(n, low_noise_timesteps(self.cfg, total), self.noise_generator)
            t = torch.where(low, low_t, t)
        return t

    def draw_horizon(self) -> int | None:
        """predict_horizon for a predict-mode micro-batch (probability predict_fraction), else
        None. Draws from the noise generator only when predict_fraction > 0, so runs without
        predict-mode training keep their random stream."""
        if self.cfg.predict_fraction == 0.0:
            return None
        draw = float(torch.rand((), generator=self.noise_generator))
        return self.cfg.predict_horizon if draw < self.cfg.predict_fraction else None

    def restore_good_state(self, bad_in_a_row: int) -> None:
        skipped, restores = self.nan_skipped, self.nan_restores + 1
        position = self.batches.position() if self.batches else None
        self.load_state(self.good_state)
        self.nan_skipped, self.nan_restores = skipped, restores
        if position:  # the data goes on forward (the restored weights meet new batches)
            self.batches.seek(position)
        lr = self.schedule.reduce()
        self.set_lr(lr)
        log.warning("NaN guard: %d non-finite steps in a row; restored the last good state "
                    "(step %d) and reduced lr to %.3g", bad_in_a_row, self.step, lr)
        self.log_event({"event": "nan_restore", "step": self.step, "bad_in_a_row": bad_in_a_row,
                        "lr": lr})


def low_noise_timesteps(cfg: TrainConfig, total: int) -> int:
    """How many of the lowest timesteps low-noise draws come from (at least 1)."""
    return max(1, round(cfg.low_noise_fraction * total))


def train(model: DiffusionTS, train_windows: Dataset | np.ndarray | torch.Tensor,
          val_windows: Dataset | np.ndarray | torch.Tensor | None, train_cfg: TrainConfig,
          out_dir: str | Path, resume: bool = False, extra: dict | None = None) -> TrainResult:
    """Train ``model`` in place on windows (N, L, F) in [0, 1]; the checkpoint holds EMA weights.

    resume=True continues from ``out_dir/checkpoint.pt`` (model config must match), with
    any number of ranks. Under torchrun the ranks train one model data-parallel and only
    rank 0 writes into ``out_dir`` (see ``flowdiff.model.distributed``).
    extra: plain data stored in every checkpoint's ``extra`` (e.g. the fitted scaler).
    The global torch RNG (dropout masks, seeded ``train.seed + rank``) is the caller's again
    when training returns.
    """
    with torch.random.fork_rng(devices=[]):
        return _train(model, train_windows, val_windows, train_cfg, out_dir, resume, extra)


def _train(model: DiffusionTS, train_windows, val_windows, train_cfg: TrainConfig,
           out_dir: str | Path, resume: bool, extra: dict | None) -> TrainResult:
    from tqdm import tqdm

    cfg = train_cfg
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    seq_len, n_feat = model.cfg.seq_len, model.cfg.feature_size
    problems = cfg.predict_problems(seq_len)
    if problems:
        raise ConfigError("train", [f"train.{key}: {message}" for key, message in problems])
    if model.cfg.parameterization == "edm-prior" and model.prior is None:
        raise ConfigError("model", ["model.parameterization: edm-prior needs the data's marginal "
                                    "prior before training: model.set_prior(MarginalPrior.fit("
                                    "training rows, feature groups))"])
    ranks, device = distributed.setup(resolve_device(cfg.device))
    plan = distributed.plan(device, cfg.precision, cfg.compile)
    for note in plan.notes if ranks.is_main else ():
        log.warning("%s", note)
    torch.manual_seed(cfg.seed + ranks.rank)  # dropout masks (inside train()'s fork_rng)
    train_data = as_windows(train_windows, "train_windows", seq_len, n_feat)
    val_data = None if val_windows is None else as_windows(val_windows, "val_windows", seq_len, n_feat)
    model.to(device).train()
    run = _Run(model, cfg, out_dir, device, dict(extra or {}), ranks, plan)
    run.batches = distributed.ShardedBatches(train_data, cfg.batch_size, cfg.seed + 1, ranks)
    checkpoint_path = out_dir / CHECKPOINT_NAME
    if resume:  # rank 0 reads the checkpoint and sends it to the others
        raw = distributed.from_main(ranks, lambda: read_checkpoint(checkpoint_path))
        stored = ModelConfig.from_dict(raw["model_config"], "model_config",
                                       source=str(checkpoint_path))
        if stored != model.cfg:  # compared as configs: keys added later take their defaults
            raise CheckpointError(f"{checkpoint_path}: --resume with a different model config "
                                  f"(checkpoint {raw['model_config']}, given {model.cfg.to_dict()})")
        run.load_state(raw["extra"]["train_state"])
        run.earlier_seconds = float(raw["extra"]["train_state"].get("seconds", 0.0))
        run.records = list(raw["extra"].get("records", []))
        log.info("resumed from %s at step %d (%d rank(s))", checkpoint_path, run.step,
                 ranks.world_size)
    elif ranks.is_main:
        (out_dir / LOG_NAME).unlink(missing_ok=True)
    run.good_state = run.state()
    data_iter = run.batches
    run.started = time.perf_counter()  # training proper starts here (after loading)
    start_step = run.step
    interval_losses: list[float] = []
    interval_start = time.perf_counter()
    bad_in_a_row = 0
    val_loss = None
    last_mean = math.nan
    bar = tqdm(total=cfg.steps, initial=run.step, desc="train", unit="step", dynamic_ncols=True,
               mininterval=1.0, disable=not ranks.is_main)
    while run.step < cfg.steps:
        loss = run.one_step(data_iter)
        if loss is None:
            run.nan_skipped += 1
            bad_in_a_row += 1
            run.optimizer.zero_grad(set_to_none=True)
            log.warning("NaN guard: non-finite loss or gradient at step %d, step skipped", run.step + 1)
            run.log_event({"event": "nan_skip", "step": run.step + 1})
            if bad_in_a_row >= cfg.nan_patience:
                run.restore_good_state(bad_in_a_row)
                bad_in_a_row = 0
                bar.n = run.step
            continue
        bad_in_a_row = 0
        run.step += 1
        run.ema.update(model)
        run.set_lr(run.schedule.step(loss))
        interval_losses.append(loss)
        bar.update(1)
        if run.step % cfg.log_every == 0 or run.step == cfg.steps:
            now = time.perf_counter()
            last_mean = float(np.mean(interval_losses))
            speed = len(interval_losses) / max(now - interval_start, 1e-9)
            record = {"step": run.step, "loss": last_mean, "lr": run.schedule.lr,
                      "steps_per_s": speed}
            if val_data is not None and cfg.val_every and ranks.is_main and (
                    run.step % cfg.val_every == 0 or run.step == cfg.steps):
                val_loss = validation_loss(run.ema.model, val_data, cfg.seed, device)
                record["val_loss"] = val_loss
            run.log_event(record)
            bar.set_postfix(loss=f"{last_mean:.4f}", lr=f"{run.schedule.lr:.2e}",
                            steps_s=f"{speed:.1f}")
            interval_losses, interval_start = [], now
        if run.step % cfg.checkpoint_every == 0 or run.step == cfg.steps:
            run.save(val_loss)
            if ranks.is_main:
                plot_loss_curve(run.records, out_dir / CURVE_NAME)
    bar.close()
    if ranks.is_main and not checkpoint_path.exists():  # steps already reached on resume
        run.save(val_loss)
        plot_loss_curve(run.records, out_dir / CURVE_NAME)
    model.load_state_dict(run.ema.model.state_dict())  # the caller samples with EMA weights
    model.eval()
    seconds = time.perf_counter() - run.started
    done = run.step - start_step
    return TrainResult(steps=run.step, final_loss=last_mean, val_loss=val_loss, seconds=seconds,
                       start_step=start_step, total_seconds=run.total_seconds(),
                       steps_per_s=done / max(seconds, 1e-9), nan_skipped=run.nan_skipped,
                       nan_restores=run.nan_restores, checkpoint=checkpoint_path)
