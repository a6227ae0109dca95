"""The tiny Diffusion-TS the model unit tests share: its config, the model (seeded, in eval
mode) and per-row generators."""

from __future__ import annotations

import torch

from flowdiff.model import DiffusionTS, ModelConfig

TINY = ModelConfig(seq_len=12, feature_size=3, n_layer_enc=1, n_layer_dec=2, d_model=16,
                   n_heads=2, timesteps=50)


def tiny_model() -> DiffusionTS:
    torch.manual_seed(0)
    return DiffusionTS(TINY).eval()


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]
