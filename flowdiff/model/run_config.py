"""YAML run configs for time-series training (configs/dts-*.yaml): data, model, train.

Loaded with yaml.safe_load; every problem (unknown section or key, bad type, range) is
collected and reported in one ConfigError that names the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from flowdiff.model.config import ConfigError, ModelConfig, TrainConfig

SECTIONS = ("data", "model", "train")
DATA_KEYS = ("csv", "train_fraction")


@dataclass(frozen=True)
class RunConfig:
    csv: Path                   # resolved relative to the current directory
    train_fraction: float
    model: ModelConfig
    train: TrainConfig


def load_run_config(path: str | os.PathLike) -> RunConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with sections {', '.join(SECTIONS)}")
    problems = [f"{path}: {key}: unknown section (expected one of {', '.join(SECTIONS)})"
                for key in raw if key not in SECTIONS]
    data = raw.get("data") or {}
    problems += [f"{path}: data.{key}: unknown key (expected one of {', '.join(DATA_KEYS)})"
                 for key in data if key not in DATA_KEYS]
    if not isinstance(data.get("csv"), str):
        problems.append(f"{path}: data.csv: expected a path string, got {data.get('csv')!r}")
    fraction = data.get("train_fraction", 0.9)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        problems.append(f"{path}: data.train_fraction: expected a number in (0, 1], got {fraction!r}")
    model = train = None
    for section, cls in (("model", ModelConfig), ("train", TrainConfig)):
        try:
            built = cls.from_dict(raw.get(section) or {}, where=f"{path}: {section}")
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        if section == "model":
            model = built
        else:
            train = built
    if problems:
        raise ConfigError("; ".join(problems))
    return RunConfig(Path(data["csv"]), float(fraction), model, train)
