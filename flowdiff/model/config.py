"""Typed configuration of the Diffusion-TS model and of its training loop.

Both are plain dataclasses. ``ModelConfig`` is stored (as a plain dict) inside every
checkpoint, so a checkpoint alone rebuilds the model. ``from_dict`` validates with the one
config engine (``flowdiff.config``): unknown keys, wrong types and the rules of ``check()``
are all reported in one ``ConfigError``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from flowdiff.config import Checked, ConfigError

__all__ = ["ConfigError", "ModelConfig", "TrainConfig", "resolve_device"]


def _failed(checks: list[tuple[str, bool, str]]) -> list[tuple[str, str]]:
    """(key, expectation) of each rule that does not hold."""
    return [(name, expected) for name, ok, expected in checks if not ok]


PARAMETERIZATIONS = ("x0", "edm", "edm-prior")
LOSSES = ("l1", "l2")
LOSS_WEIGHTINGS = ("dts", "edm")


@dataclass(frozen=True)
class ModelConfig(Checked):
    """Network size and diffusion process. Defaults are the reference Stocks config."""

    SECTION = "model"

    seq_len: int = 24                 # L: time steps per window
    feature_size: int = 6             # F: features per time step
    n_layer_enc: int = 2
    n_layer_dec: int = 2
    d_model: int = 64                 # d: embedding width
    n_heads: int = 4
    mlp_hidden_times: int = 4         # MLP hidden width = mlp_hidden_times * d
    dropout: float = 0.0              # attention and residual dropout
    kernel_size: int = 1              # season combiner Conv1d kernel (odd; circular padding)
    timesteps: int = 500              # T: diffusion steps
    cosine_s: float = 0.008           # cosine schedule offset
    fourier_loss: bool = True         # add the Fourier term to the L1 loss
    fourier_weight: float = -1.0      # w_ff; -1 means sqrt(L) / 5 (the reference)
    parameterization: str = "x0"      # x0 (network output is x0_hat) | edm (preconditioned) | edm-prior
    sigma_data: float = 0.5           # edm: assumed std of the data in model space [-1, 1]
    loss: str = "l1"                  # l1 | l2: element-wise distance (and of the Fourier term)
    loss_weighting: str = "dts"       # dts: w_t of Diffusion-TS | edm: 1 / c_out(t)^p (p = 1, 2)
    block_length: int = 0             # > 0: condition on block summaries of this many steps (flowdiff.model.blocks)
    block_dims: int = 16              # K: dimensions of a block summary
    block_dropout: float = 0.1        # share of training rows whose summaries are dropped (unconditional)

    def check(self) -> list[tuple[str, str]]:
        return _failed([
            ("seq_len", self.seq_len >= 4, f"an integer >= 4, got {self.seq_len}"),
            ("feature_size", self.feature_size >= 1, f"an integer >= 1, got {self.feature_size}"),
            ("n_layer_enc", self.n_layer_enc >= 1, f"an integer >= 1, got {self.n_layer_enc}"),
            ("n_layer_dec", self.n_layer_dec >= 1, f"an integer >= 1, got {self.n_layer_dec}"),
            ("d_model", self.d_model >= 4 and self.d_model % 2 == 0,
             f"an even integer >= 4, got {self.d_model}"),
            ("n_heads", self.n_heads >= 1 and self.d_model % max(self.n_heads, 1) == 0,
             f"an integer >= 1 dividing d_model={self.d_model}, got {self.n_heads}"),
            ("mlp_hidden_times", self.mlp_hidden_times >= 1,
             f"an integer >= 1, got {self.mlp_hidden_times}"),
            ("dropout", 0.0 <= self.dropout < 1.0, f"a number in [0, 1), got {self.dropout}"),
            ("kernel_size", self.kernel_size >= 1 and self.kernel_size % 2 == 1,
             f"an odd integer >= 1, got {self.kernel_size}"),
            ("timesteps", 2 <= self.timesteps <= 10000,
             f"an integer in [2, 10000], got {self.timesteps}"),
            ("cosine_s", 0.0 < self.cosine_s < 1.0, f"a number in (0, 1), got {self.cosine_s}"),
            ("fourier_weight", self.fourier_weight == -1.0 or self.fourier_weight >= 0.0,
             f"-1 (meaning sqrt(L)/5) or a number >= 0, got {self.fourier_weight}"),
            ("parameterization", self.parameterization in PARAMETERIZATIONS,
             f"one of {', '.join(PARAMETERIZATIONS)}, got {self.parameterization!r}"),
            ("sigma_data", self.sigma_data > 0, f"a number > 0, got {self.sigma_data}"),
            ("loss", self.loss in LOSSES, f"one of {', '.join(LOSSES)}, got {self.loss!r}"),
            ("block_length", self.block_length >= 0,
             f"0 (off) or an integer >= 1 dividing the window's context and horizon, "
             f"got {self.block_length}"),
            ("block_dims", self.block_dims >= 1, f"an integer >= 1, got {self.block_dims}"),
            ("block_dropout", 0.0 <= self.block_dropout < 1.0,
             f"a number in [0, 1), got {self.block_dropout}"),
            ("loss_weighting", self.loss_weighting in LOSS_WEIGHTINGS,
             f"one of {', '.join(LOSS_WEIGHTINGS)}, got {self.loss_weighting!r}"),
        ])

    @property
    def fourier_weight_value(self) -> float:
        """w_ff actually used by the loss."""
        return self.seq_len ** 0.5 / 5.0 if self.fourier_weight == -1.0 else self.fourier_weight

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainConfig(Checked):
    """Training recipe. Defaults follow the reference (Adam (0.9, 0.96), warm-up 1e-5 -> 8e-4
    over 500 steps, then reduce-on-plateau x0.5 down to 1e-5, clip 1.0, EMA 0.995 every 10)."""

    SECTION = "train"
    steps: int = 10000                # optimiser steps
    batch_size: int = 64              # windows per micro-batch: the GLOBAL batch, split over ranks
    grad_accum: int = 2               # micro-batches per optimiser step (reference: 2)
    lr: float = 8e-4                  # peak learning rate, reached after warm-up
    warmup_start_lr: float = 1e-5
    warmup: int = 500                 # warm-up steps (linear)
    scheduler: str = "plateau"        # plateau | cosine
    min_lr: float = 1e-5
    plateau_factor: float = 0.5
    plateau_patience: int = 2000
    plateau_threshold: float = 0.1    # relative improvement that counts
    adam_beta1: float = 0.9
    adam_beta2: float = 0.96
    ema_decay: float = 0.995
    ema_every: int = 10
    grad_clip: float = 1.0
    checkpoint_every: int = 1000
    val_every: int = 500              # validation loss every N steps (0 = never)
    log_every: int = 50
    nan_patience: int = 3             # consecutive bad steps before restoring the last good state
    seed: int = 12345
    device: str = "auto"              # auto (CUDA when present) | cpu | cuda
    precision: str = "fp32"           # fp32 | bf16: bf16 autocast of the forward pass, CUDA only
    compile: bool = False             # torch.compile the training step, CUDA only
    num_threads: int = 0              # torch CPU threads; 0 = leave torch's default
    predict_fraction: float = 0.0     # share of micro-batches trained in predict mode
    predict_horizon: int = 0          # H: those keep the first L - H steps clean, noise the last H
    low_noise_share: float = 0.0      # share of training windows whose t is drawn from ...
    low_noise_fraction: float = 0.05  # ... the lowest fraction of the T timesteps (the rest: all T)

    def predict_problems(self, seq_len: int) -> list[tuple[str, str]]:
        """Cross-check with the model's window length (``flowdiff config check`` knows it
        from ``window``; the trainer checks again when training starts)."""
        if self.predict_fraction == 0.0 or 1 <= self.predict_horizon < seq_len:
            return []
        return [("predict_horizon", f"an integer in [1, {seq_len - 1}] (seq_len {seq_len}) "
                                    f"when predict_fraction > 0, got {self.predict_horizon}")]

    def check(self) -> list[tuple[str, str]]:
        return _failed([
            ("steps", self.steps >= 1, f"an integer >= 1, got {self.steps}"),
            ("batch_size", self.batch_size >= 1, f"an integer >= 1, got {self.batch_size}"),
            ("grad_accum", self.grad_accum >= 1, f"an integer >= 1, got {self.grad_accum}"),
            ("lr", self.lr > 0, f"a number > 0, got {self.lr}"),
            ("warmup_start_lr", self.warmup_start_lr > 0, f"a number > 0, got {self.warmup_start_lr}"),
            ("warmup", self.warmup >= 0, f"an integer >= 0, got {self.warmup}"),
            ("scheduler", self.scheduler in ("plateau", "cosine"),
             f"one of plateau, cosine, got {self.scheduler!r}"),
            ("min_lr", 0 <= self.min_lr <= self.lr, f"a number in [0, lr], got {self.min_lr}"),
            ("plateau_factor", 0 < self.plateau_factor < 1, f"a number in (0, 1), got {self.plateau_factor}"),
            ("plateau_patience", self.plateau_patience >= 0, f"an integer >= 0, got {self.plateau_patience}"),
            ("plateau_threshold", self.plateau_threshold >= 0, f"a number >= 0, got {self.plateau_threshold}"),
            ("adam_beta1", 0 <= self.adam_beta1 < 1, f"a number in [0, 1), got {self.adam_beta1}"),
            ("adam_beta2", 0 <= self.adam_beta2 < 1, f"a number in [0, 1), got {self.adam_beta2}"),
            ("ema_decay", 0 <= self.ema_decay < 1, f"a number in [0, 1), got {self.ema_decay}"),
            ("ema_every", self.ema_every >= 1, f"an integer >= 1, got {self.ema_every}"),
            ("grad_clip", self.grad_clip > 0, f"a number > 0, got {self.grad_clip}"),
            ("checkpoint_every", self.checkpoint_every >= 1, f"an integer >= 1, got {self.checkpoint_every}"),
            ("val_every", self.val_every >= 0, f"an integer >= 0, got {self.val_every}"),
            ("log_every", self.log_every >= 1, f"an integer >= 1, got {self.log_every}"),
            ("nan_patience", self.nan_patience >= 1, f"an integer >= 1, got {self.nan_patience}"),
            ("device", self.device in ("auto", "cpu", "cuda"), f"one of auto, cpu, cuda, got {self.device!r}"),
            ("precision", self.precision in ("fp32", "bf16"),
             f"one of fp32, bf16, got {self.precision!r}"),
            ("num_threads", self.num_threads >= 0, f"an integer >= 0, got {self.num_threads}"),
            ("predict_fraction", 0.0 <= self.predict_fraction <= 1.0,
             f"a number in [0, 1], got {self.predict_fraction}"),
            ("predict_horizon", self.predict_horizon >= 0,
             f"an integer >= 0, got {self.predict_horizon}"),
            ("low_noise_share", 0.0 <= self.low_noise_share <= 1.0,
             f"a number in [0, 1], got {self.low_noise_share}"),
            ("low_noise_fraction", 0.0 < self.low_noise_fraction <= 1.0,
             f"a number in (0, 1], got {self.low_noise_fraction}"),
        ])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'; 'cuda' without CUDA is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device", ["train.device: 'cuda' requested but "
                                           "torch.cuda.is_available() is False (use 'auto' or 'cpu')"])
    return name
