"""Checkpoints: one file that alone rebuilds the model.

Contents (only tensors and plain Python values, loadable with torch.load(weights_only=True)):
``format``, ``model_config`` (ModelConfig as a dict), ``model`` (the weights to sample with:
the EMA weights when saved by the trainer) and ``extra`` (caller's plain dict, e.g. the
scaler, the training state for --resume, metrics), and for an ``edm-prior`` model ``prior``
(its ``MarginalPrior`` as tensors), for a block-conditioned model ``blocks`` (its
``BlockConditioning``). Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from flowdiff.atomic import atomic_file
from flowdiff.model.config import ConfigError, ModelConfig
from flowdiff.model.diffusion_ts import DiffusionTS
from flowdiff.model.blocks import BlockConditioning
from flowdiff.model.prior import MarginalPrior

FORMAT = "flowdiff-diffusion-ts/1"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not a flowdiff Diffusion-TS checkpoint."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through ``flowdiff.atomic`` (temp file, fsync, rename, fsync directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as handle:
        torch.save(obj, handle)


def save_checkpoint(path: str | os.PathLike, model: DiffusionTS, extra: dict | None = None) -> None:
    """Save ``model``'s current weights, its config and ``extra`` (plain values/tensors only)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    raw = {"format": FORMAT, "model_config": model.cfg.to_dict(), "model": state,
           "extra": dict(extra or {})}
    if model.prior is not None:
        raw["prior"] = model.prior.to_state()
    if model.blocks is not None:
        raw["blocks"] = model.blocks.to_state()
    atomic_torch_save(raw, path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw checkpoint dict, validated for format (weights_only loading)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, foreign pickle, truncated write
        raise CheckpointError(f"{path}: cannot read as a weights-only torch checkpoint: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{path}: not a flowdiff Diffusion-TS checkpoint "
                              f"(format {found!r}, expected {FORMAT!r})")
    for key in ("model_config", "model", "extra"):
        if key not in raw:
            raise CheckpointError(f"{path}: checkpoint lacks the '{key}' entry")
    return raw


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"
                    ) -> tuple[DiffusionTS, dict]:
    """Rebuild the model from the checkpoint alone -> (model in eval mode on device, extra)."""
    raw = read_checkpoint(path)
    try:
        cfg = ModelConfig.from_dict(raw["model_config"], "model_config", source=str(path))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    model = DiffusionTS(cfg)
    try:
        model.load_state_dict(raw["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the stored model_config: {exc}") from exc
    if cfg.parameterization == "edm-prior":
        model.set_prior(_fitted_part(raw, "prior", MarginalPrior, "an edm-prior model", path))
    if cfg.block_length:
        model.set_blocks(_fitted_part(raw, "blocks", BlockConditioning, "a block-conditioned model", path))
    return model.to(device).eval(), raw["extra"]


def _fitted_part(raw: dict, key: str, kind, model_kind: str, path):
    """The part fitted on data that the checkpoint stores under ``key`` (``kind.from_state``),
    or a CheckpointError naming the file when it is missing or unreadable."""
    if key not in raw:
        raise CheckpointError(f"{path}: {model_kind} without its '{key}' entry")
    try:
        return kind.from_state(raw[key])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable '{key}' entry: {exc}") from exc
