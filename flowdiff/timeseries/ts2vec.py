"""A compact TS2Vec encoder (Yue et al., AAAI 2022) for Context-FID.

Same recipe as the reference TS2Vec: input linear -> timestamp masking (training) ->
10 residual dilated-conv blocks (hidden 64, output 320) -> dropout; hierarchical
contrastive loss (instance + temporal) on two overlapping random crops; AdamW lr 1e-3,
batch 8, 200 iterations (600 when the data has more than 100k values); the weight average
over iterations encodes. A window's embedding is the max over time of its representation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flowdiff.model.rng import scoped_torch_seed

HIDDEN = 64
OUTPUT = 320
DEPTH = 10
BATCH = 8
LR = 1e-3


class SamePadConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int):
        super().__init__()
        field = (kernel - 1) * dilation + 1
        self.conv = nn.Conv1d(c_in, c_out, kernel, padding=field // 2, dilation=dilation)
        self.remove = 1 if field % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)                                     # (B, C, T [+1])
        return out[:, :, :-self.remove] if self.remove else out


class ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, dilation: int, final: bool):
        super().__init__()
        self.conv1 = SamePadConv(c_in, c_out, 3, dilation)
        self.conv2 = SamePadConv(c_out, c_out, 3, dilation)
        self.projector = nn.Conv1d(c_in, c_out, 1) if c_in != c_out or final else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.projector is None else self.projector(x)
        return self.conv2(F.gelu(self.conv1(F.gelu(x)))) + residual


class TS2VecNet(nn.Module):
    def __init__(self, n_feat: int):
        super().__init__()
        self.input_fc = nn.Linear(n_feat, HIDDEN)
        channels = [HIDDEN] * DEPTH + [OUTPUT]
        self.blocks = nn.Sequential(*[
            ConvBlock(channels[i - 1] if i > 0 else HIDDEN, channels[i], 2 ** i, i == len(channels) - 1)
            for i in range(len(channels))])
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        h = self.input_fc(x)                                   # (B, T, hidden)
        if self.training:                                      # binomial timestamp masking
            keep = torch.rand(h.shape[:2], generator=generator) < 0.5
            h = h * keep[..., None]
        out = self.blocks(h.transpose(1, 2)).transpose(1, 2)   # (B, T, 320)
        return self.dropout(out)


def _instance_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    b = z1.shape[0]
    if b == 1:
        return z1.new_tensor(0.0)
    z = torch.cat([z1, z2], dim=0).transpose(0, 1)            # (T, 2B, C)
    sim = z @ z.transpose(1, 2)                                # (T, 2B, 2B)
    logits = torch.tril(sim, diagonal=-1)[:, :, :-1] + torch.triu(sim, diagonal=1)[:, :, 1:]
    logits = -F.log_softmax(logits, dim=-1)                    # (T, 2B, 2B-1)
    i = torch.arange(b)
    return (logits[:, i, b + i - 1].mean() + logits[:, b + i, i].mean()) / 2


def _temporal_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    t = z1.shape[1]
    if t == 1:
        return z1.new_tensor(0.0)
    z = torch.cat([z1, z2], dim=1)                             # (B, 2T, C)
    sim = z @ z.transpose(1, 2)                                # (B, 2T, 2T)
    logits = torch.tril(sim, diagonal=-1)[:, :, :-1] + torch.triu(sim, diagonal=1)[:, :, 1:]
    logits = -F.log_softmax(logits, dim=-1)
    s = torch.arange(t)
    return (logits[:, s, t + s - 1].mean() + logits[:, t + s, s].mean()) / 2


def hierarchical_contrastive_loss(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """z1, z2 (B, T, C): instance + temporal losses at every max-pooled time scale."""
    loss = z1.new_tensor(0.0)
    depth = 0
    while z1.shape[1] > 1:
        loss = loss + alpha * _instance_loss(z1, z2) + (1 - alpha) * _temporal_loss(z1, z2)
        depth += 1
        z1 = F.max_pool1d(z1.transpose(1, 2), kernel_size=2).transpose(1, 2)
        z2 = F.max_pool1d(z2.transpose(1, 2), kernel_size=2).transpose(1, 2)
    if z1.shape[1] == 1:
        loss = loss + alpha * _instance_loss(z1, z2)
        depth += 1
    return loss / depth


def _take_per_row(x: torch.Tensor, start: np.ndarray, length: int) -> torch.Tensor:
    index = torch.as_tensor(start[:, None] + np.arange(length))             # (B, length)
    return x[torch.arange(x.shape[0])[:, None], index]                      # (B, length, F)


class TS2VecEncoder:
    """A fitted encoder: ``embed(windows (N, L, F)) -> (N, 320)``."""

    def __init__(self, net: nn.Module):
        self.net = net.eval()

    @torch.no_grad()
    def embed(self, windows: np.ndarray, batch: int = 256) -> np.ndarray:
        x = torch.from_numpy(np.asarray(windows, dtype=np.float32))
        parts = [self.net(x[i:i + batch]).amax(dim=1) for i in range(0, len(x), batch)]  # (b, 320)
        return torch.cat(parts).numpy().astype(np.float64)


def fit_ts2vec(windows: np.ndarray, seed: int, iterations: int | None = None) -> TS2VecEncoder:
    """Train on real windows (N, L, F) with the TS2Vec recipe; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    with scoped_torch_seed(seed):  # model init and dropout: not the global RNG
        x = torch.from_numpy(np.asarray(windows, dtype=np.float32))
        n, length, n_feat = x.shape
        iterations = iterations or (200 if x.numel() <= 100_000 else 600)
        net = TS2VecNet(n_feat)
        averaged = torch.optim.swa_utils.AveragedModel(net)
        optimizer = torch.optim.AdamW(net.parameters(), lr=LR)
        net.train()
        for _ in range(iterations):
            batch = x[rng.choice(n, min(BATCH, n), replace=False)]              # (B, L, F)
            crop_l = int(rng.integers(2, length + 1))
            crop_left = int(rng.integers(length - crop_l + 1))
            crop_right = crop_left + crop_l
            crop_eleft = int(rng.integers(crop_left + 1))
            crop_eright = int(rng.integers(crop_right, length + 1))
            offset = rng.integers(-crop_eleft, length - crop_eright + 1, size=len(batch))
            out1 = net(_take_per_row(batch, offset + crop_eleft, crop_right - crop_eleft), generator)
            out2 = net(_take_per_row(batch, offset + crop_left, crop_eright - crop_left), generator)
            loss = hierarchical_contrastive_loss(out1[:, -crop_l:], out2[:, :crop_l])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            averaged.update_parameters(net)
        return TS2VecEncoder(averaged.module)
