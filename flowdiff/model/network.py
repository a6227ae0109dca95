"""The Diffusion-TS network: x_t, t -> x0_hat (a pure nn.Module, no diffusion logic).

Encoder (AdaLN transformer) + interpretable decoder: each decoder block emits a degree-3
polynomial trend and a top-K Fourier season; the output is trend_total + season_total.
Shapes: B batch, L time steps, F features, d embedding width, n_dec decoder blocks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from flowdiff.model.config import ModelConfig


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Integer timesteps (B,) -> (B, dim) sin/cos embedding (transformer style)."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32)
                     * -(math.log(10000.0) / (half - 1)))       # (half,)
    angles = t.float()[:, None] * freq[None, :]                  # (B, half)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)       # (B, dim)


class AdaLayerNorm(nn.Module):
    """LayerNorm without affine, scaled and shifted by the timestep: x*(1+scale)+shift."""

    def __init__(self, d: int):
        super().__init__()
        self.d = d
        self.to_scale_shift = nn.Linear(d, 2 * d)
        self.norm = nn.LayerNorm(d, elementwise_affine=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.to_scale_shift(F.silu(sinusoidal_embedding(t, self.d)))  # (B, 2d)
        scale, shift = emb[:, None, :].chunk(2, dim=-1)                      # (B, 1, d) each
        return self.norm(x) * (1 + scale) + shift                           # (B, L, d)


class Attention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None, else cross-attention."""

    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.proj = nn.Linear(d, d)
        self.attn_dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.n_heads, d // self.n_heads).transpose(1, 2)  # (B, nh, n, hs)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        source = x if context is None else context                  # (B, Lk, d)
        q, k, v = self._heads(self.query(x)), self._heads(self.key(source)), self._heads(self.value(source))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)  # (B, nh, L, hs)
        b, _, n, _ = y.shape
        y = y.transpose(1, 2).reshape(b, n, -1)                     # (B, L, d)
        return self.resid_dropout(self.proj(y))


def feed_forward(d: int, hidden_times: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, hidden_times * d), nn.GELU(),
                         nn.Linear(hidden_times * d, d), nn.Dropout(dropout))


class EncoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ada_norm = AdaLayerNorm(cfg.d_model)
        self.attn = Attention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.mlp = feed_forward(cfg.d_model, cfg.mlp_hidden_times, cfg.dropout)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ada_norm(x, t))                      # (B, L, d)
        return x + self.mlp(self.norm(x))


class TrendBlock(nn.Module):
    """h1 (B, L, d) -> degree-3 polynomial trend without constant term, (B, L, F)."""

    degree = 3

    def __init__(self, seq_len: int, d: int, n_feat: int):
        super().__init__()
        self.over_time = nn.Conv1d(seq_len, self.degree, kernel_size=3, padding=1)  # channels = time
        self.over_width = nn.Conv1d(d, n_feat, kernel_size=3, padding=1)            # channels = d
        tau = torch.arange(1, seq_len + 1, dtype=torch.float32) / (seq_len + 1)     # (L,)
        powers = torch.stack([tau ** (p + 1) for p in range(self.degree)])          # (3, L)
        self.register_buffer("powers", powers, persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        c = F.gelu(self.over_time(h))                               # (B, 3, d)
        coeffs = self.over_width(c.transpose(1, 2))                 # (B, F, 3)
        return (coeffs @ self.powers).transpose(1, 2)               # (B, F, L) -> (B, L, F)


def fourier_season(h: torch.Tensor) -> torch.Tensor:
    """h2 (B, L, d) -> season (B, L, d): per sample and channel keep the top-K rFFT bins
    (DC and, for even L, Nyquist dropped; K = int(ln #bins)) and rebuild them in time.

    The rebuild sum_k 2 |c_k| cos(2 pi f_k n + angle c_k) is the inverse real FFT of the
    spectrum with only those bins kept (unnormalised, ``norm="forward"``): exact, and
    unlike evaluating the cosines in float32 at phases up to pi L it loses no precision.
    """
    length = h.shape[1]
    spectrum = torch.fft.rfft(h, dim=1)                             # (B, L//2+1, d) complex
    stop = -1 if length % 2 == 0 else None
    inner = spectrum[:, 1:stop]                                     # (B, nb, d)
    top_k = max(int(math.log(inner.shape[1])), 1)
    _, index = torch.topk(inner.abs(), top_k, dim=1)                # (B, K, d)
    kept = torch.zeros_like(spectrum).scatter(1, index + 1, torch.gather(inner, 1, index))  # bin = index + 1
    return torch.fft.irfft(kept, n=length, dim=1, norm="forward")   # (B, L, d)


class DecoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, length = cfg.d_model, cfg.seq_len
        self.ada_norm_self = AdaLayerNorm(d)
        self.ada_norm_cross = AdaLayerNorm(d)
        self.self_attn = Attention(d, cfg.n_heads, cfg.dropout)
        self.cross_attn = Attention(d, cfg.n_heads, cfg.dropout)
        self.across_time = nn.Conv1d(length, 2 * length, kernel_size=1)   # channels = time
        self.trend = TrendBlock(length, d, cfg.feature_size)
        self.norm = nn.LayerNorm(d)
        self.mlp = feed_forward(d, cfg.mlp_hidden_times, cfg.dropout)
        self.mean_to_features = nn.Linear(d, cfg.feature_size)

    def forward(self, x: torch.Tensor, encoded: torch.Tensor, t: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = x + self.self_attn(self.ada_norm_self(x, t))                    # (B, L, d)
        x = x + self.cross_attn(self.ada_norm_cross(x, t), encoded)         # (B, L, d)
        h1, h2 = self.across_time(x).chunk(2, dim=1)                        # (B, L, d) each
        trend, season = self.trend(h1), fourier_season(h2)                  # (B, L, F), (B, L, d)
        x = x + self.mlp(self.norm(x))
        mean = x.mean(dim=1, keepdim=True)                                  # (B, 1, d)
        return x - mean, self.mean_to_features(mean), trend, season


class DiffusionTSNetwork(nn.Module):
    """x_t (B, L, F) in [-1, 1], t (B,) long[, block summaries (B, L, K)] -> x0_hat (B, L, F)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, length, n_feat = cfg.d_model, cfg.seq_len, cfg.feature_size
        self.embed = nn.Conv1d(n_feat, d, kernel_size=3, padding=1)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.pos_enc = nn.Parameter(torch.empty(1, length, d).uniform_(-0.02, 0.02))
        self.pos_dec = nn.Parameter(torch.empty(1, length, d).uniform_(-0.02, 0.02))
        self.pos_dropout = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.n_layer_enc))
        self.decoder = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.n_layer_dec))
        self.to_features = nn.Conv1d(d, n_feat, kernel_size=3, padding=1)
        # block conditioning (flowdiff.model.blocks): per-step summaries (B, L, K) -> (B, L, d)
        self.block_embed = nn.Linear(cfg.block_dims, d) if cfg.block_length else None
        self.combine_means = nn.Conv1d(cfg.n_layer_dec, 1, kernel_size=1, bias=False)
        self.combine_season = nn.Conv1d(d, n_feat, kernel_size=cfg.kernel_size,
                                        padding=cfg.kernel_size // 2, padding_mode="circular",
                                        bias=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor,
                blocks: torch.Tensor | None = None) -> torch.Tensor:
        """blocks: per-step block summaries (B, L, K) of a block-conditioned network
        (None or zeros: unconditional)."""
        emb = self.embed(x.transpose(1, 2)).transpose(1, 2)          # (B, L, d)
        if self.block_embed is not None:
            if blocks is None:
                blocks = x.new_zeros(x.shape[0], x.shape[1], self.block_embed.in_features)
            emb = emb + self.block_embed(blocks)
        emb = self.embed_dropout(emb)
        h = self.pos_dropout(emb + self.pos_enc)
        for block in self.encoder:
            h = block(h, t)                                          # (B, L, d)
        y = self.pos_dropout(emb + self.pos_dec)
        season = torch.zeros_like(y)                                 # (B, L, d)
        trend = x.new_zeros(x.shape)                                 # (B, L, F)
        means = []
        for block in self.decoder:
            y, block_mean, block_trend, block_season = block(y, h, t)
            trend = trend + block_trend
            season = season + block_season
            means.append(block_mean)                                 # (B, 1, F)
        res = self.to_features(y.transpose(1, 2)).transpose(1, 2)    # (B, L, F)
        res_mean = res.mean(dim=1, keepdim=True)                     # (B, 1, F)
        trend_total = self.combine_means(torch.cat(means, dim=1)) + res_mean + trend  # (B, L, F)
        season_total = self.combine_season(season.transpose(1, 2)).transpose(1, 2) \
            + (res - res_mean)                                       # (B, L, F)
        return trend_total + season_total
