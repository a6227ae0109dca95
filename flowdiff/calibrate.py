"""Artifact -> calibrated artifact: fit the codec's output calibration on the model's outputs.

``flowdiff calibrate --model DIR --data TRACE`` rolls the model out the way the daemon runs
it (an unconditional start, then predict turns with the serving sampler, several streams),
collects the raw encoded outputs, encodes the artifact's own training records (the trace
split as the artifact's training config split it: hold-out and validation parts left out),
fits ``flowdiff.codec.calibration.OutputCalibration`` and writes the codec back into the
artifact. Seeded: the same artifact, trace and settings give the same calibration.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class CalibrationReport:
    artifact: Path
    outputs: int            # model output steps the calibration was fitted on
    reference: int          # encoded training records
    seconds: float
    argmax_frequencies: dict
    regimes: dict           # correlation / persistence -> codec part -> value
    block_targets: str      # what was fitted ("N blocks of L records") or why not


def artifact_split(artifact, data_path: str | Path):
    """(training part, validation part) of the trace as the artifact's training config
    split it (hold-out dropped)."""
    from flowdiff.training import artifact_data_config, read_trace, split_trace

    data = artifact_data_config(artifact)
    _used, train_part, val_part = split_trace(data, read_trace(data, data_path), data_path)
    return train_part, val_part


def training_reference(artifact, data_path: str | Path, table=None) -> np.ndarray:
    """The artifact's training records (as its config split the trace), encoded (n, F): all
    of them, the distribution the model learned. (A latest slice is not "the model's own
    period": on UGR'16 day 1 its last 300k records carry 82 % TCP and 6.7 mean log bytes,
    the whole training part 79 % and 6.4, so a calibration towards it shifted the stream.)"""
    train_part = artifact_split(artifact, data_path)[0] if table is None else table
    return artifact.codec.encode(train_part)


def regime_windows(artifact, reference: np.ndarray, count: int) -> np.ndarray:
    """``count`` windows (count, C + H, F) of the encoded training records, evenly spaced."""
    length = artifact.context + artifact.horizon
    if len(reference) < length + 1:
        raise ValueError(f"regime fit: {len(reference)} training records, fewer than one "
                         f"window of {length}")
    starts = np.linspace(0, len(reference) - length, count).astype(int)
    return np.stack([reference[s:s + length] for s in starts])


def fit_regimes(artifact, reference: np.ndarray, sampler, windows: int, seed: int
                ) -> tuple[dict, dict]:
    """The starting noise's correlation and persistence per codec part
    (``flowdiff.model.regimes``) fitted on ``windows`` windows of the training records:
    ({"correlation": {part: rho}, "persistence": {part: phi}}, report); ({}, {}) for
    ``windows`` 0 (independent noise)."""
    from flowdiff.model.regimes import fit_horizon_noise

    if windows == 0:
        return {}, {}
    if getattr(artifact.model, "blocks", None) is not None:
        log.info("starting-noise regimes: not fitted, the model is block-conditioned (its "
                 "streams take their regimes from the bank of training block summaries)")
        return {}, {"skipped": "block-conditioned model"}
    regimes, report = fit_horizon_noise(
        artifact.model, regime_windows(artifact, reference, windows), artifact.horizon,
        artifact.codec.feature_parts, sampler, seed)
    log.info("starting-noise regimes per codec part: %s", json.dumps(regimes))
    return regimes, report


def rollout_outputs(artifact, sampler, streams: int, turns: int, seed: int,
                    regimes: dict | None = None) -> np.ndarray:
    """Raw model outputs (streams * turns * H, F) of a daemon-like rollout (with the
    starting-noise ``regimes`` of ``fit_regimes``, if given)."""
    from flowdiff.daemon.generator import StreamGenerator, horizon_noise
    from flowdiff.model import make_sampler

    gen = StreamGenerator(artifact.model, artifact.codec, sampler, context=artifact.context,
                          horizon=artifact.horizon, streams=streams, seed=seed,
                          noise=horizon_noise(artifact.codec, regimes))
    gen.start_unconditional(make_sampler("ddim", steps=sampler.steps), start_ts=0.0)
    outputs = []
    for turn in range(turns):
        outputs.append(gen.predict().reshape(-1, artifact.codec.width).numpy())
        log.info("calibration rollout: turn %d/%d", turn + 1, turns)
    return np.concatenate(outputs)


def calibrate_artifact(model_dir: str | Path, data_path: str | Path, *, sampler_kind: str,
                       sampler_steps: int, streams: int = 16, turns: int = 30,
                       seed: int = 0, regime_windows: int = 200,
                       block_length: int = 25) -> CalibrationReport:
    """regime_windows: training windows the starting-noise correlation is fitted on
    (0: independent noise, no regimes); block_length: records per block of the block
    targets (``flowdiff.codec.block_targets``; 0: none)."""
    from flowdiff.artifact import CODEC_DIR, load_artifact
    from flowdiff.codec.calibration import OutputCalibration
    from flowdiff.model import make_sampler

    started = time.perf_counter()
    artifact = load_artifact(model_dir)
    artifact.codec.set_calibration(None)       # the reference encodes without it anyway
    artifact.codec.set_block_targets(None)
    train_part = artifact_split(artifact, data_path)[0]
    reference = training_reference(artifact, data_path, train_part)
    sampler = make_sampler(sampler_kind, steps=sampler_steps)
    regimes, regime_report = fit_regimes(artifact, reference, sampler, regime_windows, seed)
    outputs = rollout_outputs(artifact, sampler, streams, turns, seed, regimes)
    calibration = OutputCalibration.fit(artifact.codec, outputs, reference, meta={
        "sampler": {"kind": sampler_kind, "steps": sampler_steps}, "streams": streams,
        "turns": turns, "seed": seed, "data_file": Path(data_path).name,
        "regime_windows": regime_windows, "regime_fit": regime_report},
        horizon=artifact.horizon)
    calibration.regimes = regimes
    artifact.codec.set_calibration(calibration)
    blocks = fit_block_targets(artifact, calibration, reference, train_part, block_length,
                               outputs)
    artifact.codec.save(Path(model_dir) / CODEC_DIR)
    report = CalibrationReport(artifact=Path(model_dir), outputs=len(outputs),
                               reference=len(reference),
                               seconds=round(time.perf_counter() - started, 1),
                               argmax_frequencies=calibration.meta["argmax_frequencies"],
                               regimes=regimes, block_targets=blocks)
    log.info("calibrated %s: %s", model_dir, json.dumps(report.argmax_frequencies))
    return report


def fit_block_targets(artifact, calibration, reference: np.ndarray, table, length: int,
                      outputs: np.ndarray) -> str:
    """Fit the codec's block targets (a bank of the training records' ``length``-record
    blocks; ``outputs``: the rollout the calibration was fitted on) and set them on the
    artifact's codec; returns what was done, for the report."""
    from flowdiff.codec.block_targets import BlockTargets

    if length == 0:
        return "none (--block-length 0)"
    why = BlockTargets.unsupported(artifact.codec, calibration)
    if why is None and artifact.horizon < length:
        why = f"the horizon ({artifact.horizon}) is shorter than a block ({length})"
    if why is not None:
        log.warning("block targets: not fitted, %s", why)
        return f"none ({why})"
    targets = BlockTargets.fit(artifact.codec, calibration, reference, table, length, outputs)
    artifact.codec.set_block_targets(targets)
    profile = ("no number profile (no conditional numbers)" if targets.number_profile is None else
               f"number profile of {len(targets.number_profile[0])} class keys x "
               f"{targets.number_profile[1].shape[1]} number bins")
    summary = (f"{targets.blocks} blocks of {length} records, {len(targets.classes)} record "
               f"classes, {profile}")
    log.info("block targets: %s", summary)
    return summary
