"""Diffusion-TS: network, diffusion process, samplers, trainer. Independent of network data.

Public API (see docs/model.md)::

    from flowdiff.model import (ModelConfig, DiffusionTS, TrainConfig, train, make_sampler,
                                save_checkpoint, load_checkpoint, randn_like_rows)
"""

from flowdiff.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from flowdiff.model.config import ConfigError, ModelConfig, TrainConfig
from flowdiff.model.diffusion_ts import DiffusionTS
from flowdiff.model.rng import randn_like_rows, seeded_generators
from flowdiff.model.samplers import SAMPLER_KINDS, Sampler, SamplerError, make_sampler
from flowdiff.model.trainer import TrainResult, train

__all__ = [
    "CheckpointError", "ConfigError", "DiffusionTS", "ModelConfig", "SAMPLER_KINDS", "Sampler",
    "SamplerError", "TrainConfig", "TrainResult", "load_checkpoint", "make_sampler",
    "randn_like_rows", "save_checkpoint", "seeded_generators", "train",
]
