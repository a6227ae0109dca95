"""YAML run configs for time-series training (configs/dts-*.yaml): data, model, train.

Read and validated by the one config engine (``flowdiff.config``): every problem (unknown
section or key, bad type, range) is reported in one ConfigError as ``file:line: key: message``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from flowdiff.config import (ConfigError, Problems, build_dataclass, field_range,
                             read_yaml)
from flowdiff.model.config import ModelConfig, TrainConfig

SECTIONS = ("data", "model", "train")


@dataclass(frozen=True)
class CsvData:
    csv: str                    # the numeric CSV, relative to the current directory
    train_fraction: float = field(default=0.9, metadata=field_range(0.0, 1.0, low_open=True))


@dataclass(frozen=True)
class RunFile:
    """The sections of a run config file, as written."""
    data: CsvData
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class RunConfig:
    csv: Path                   # resolved relative to the current directory
    train_fraction: float
    model: ModelConfig
    train: TrainConfig


def load_run_config(path: str | os.PathLike) -> RunConfig:
    raw, lines = read_yaml(path)
    problems = Problems(str(path), lines)
    if not isinstance(raw, dict):
        problems.add("<top>", f"expected a mapping with sections {', '.join(SECTIONS)}")
        problems.raise_if_any()
    for key in raw:
        if key not in SECTIONS:
            problems.add(str(key), f"unknown section (known: {', '.join(SECTIONS)})")
    run = build_dataclass(RunFile, {k: v for k, v in raw.items() if k in SECTIONS}, "", problems)
    problems.raise_if_any()
    return RunConfig(Path(run.data.csv), float(run.data.train_fraction), run.model, run.train)


__all__ = ["ConfigError", "RunConfig", "load_run_config"]
