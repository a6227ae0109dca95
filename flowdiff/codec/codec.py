"""FlowCodec: canonical flow table <-> (n, F) float32 array, one record per row (time step).

Fitted on training records only. Each encoded field owns a slice of the feature axis
(``feature_slices``); every encoded value lies in [0, 1]. ``ts`` is encoded as the
inter-arrival time to the previous record and rebuilt on decode by a float64 cumulative
sum from ``start_ts``. Decoding accepts any float array, clamps, repairs records that break
a domain rule (see ``flowdiff.codec.repair``) and reports what it repaired.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from flowdiff import __version__
from flowdiff.codec.config import CodecConfig
from flowdiff.codec.repair import ProtocolProfile
from flowdiff.codec.transforms import (FIELD_BITS, BitsTransform, MinMaxTransform,
                                       OneHotTransform, resolution)
from flowdiff.codec.word2vec import PORT, PROTO, EmbeddingTransform, PortProtoEmbedding
from flowdiff.schema import COLUMNS, conform

log = logging.getLogger(__name__)

CODEC_FORMAT = "flowdiff-codec"
CODEC_VERSION = 1
STATE_FILE = "codec.json"
INTEGER_FIELDS = ("srcip", "dstip", "srcport", "dstport", "proto", "pkt", "byt", "flags", "tos")


class CodecVersionError(ValueError):
    """A saved codec written in another format version than this code reads."""


class CodecFileError(ValueError):
    """A codec directory that is missing, incomplete or not a flowdiff codec."""


@dataclass
class DecodeResult:
    table: pd.DataFrame                          # conformed canonical flow table
    repairs: dict[str, int] = field(default_factory=dict)  # rule/field -> records fixed

    @property
    def total_repairs(self) -> int:
        return sum(self.repairs.values())


@dataclass
class EncodeResult:
    array: np.ndarray                            # (n, F) float32 in [0, 1]
    unknown: dict[str, int] = field(default_factory=dict)  # field -> values not seen in fit


def _time_column(ts: np.ndarray, prev_ts: float | None) -> np.ndarray:
    """Inter-arrival times (n,) float64; the first is ts[0] - prev_ts, or 0 without it."""
    ts = np.asarray(ts, dtype=np.float64)
    first = 0.0 if prev_ts is None or ts.size == 0 else ts[0] - float(prev_ts)
    iat = np.diff(ts, prepend=ts[0] - first if ts.size else 0.0)
    if (iat < 0).any():
        i = int(np.flatnonzero(iat < 0)[0])
        before = f"row {i - 1}" if i > 0 else f"prev_ts {prev_ts}"
        raise ValueError(f"ts must not decrease: row {i} has ts {float(ts[i])!r} < {before} "
                         f"(records must be sorted by ts)")
    return iat


def _new_transform(field_name: str, transform: str, embedding: PortProtoEmbedding | None):
    if transform == "bits":
        return BitsTransform(FIELD_BITS[field_name])
    if transform in ("minmax", "log_minmax"):
        return MinMaxTransform(log=transform == "log_minmax")
    if transform == "onehot":
        return OneHotTransform()
    if transform == "word2vec" and embedding is not None:
        return EmbeddingTransform(embedding.tables[PROTO if field_name == "proto" else PORT])
    raise ValueError(f"field {field_name}: no transform named {transform!r}")


def _transform_from_state(field_name: str, transform: str, state: dict,
                          embedding: PortProtoEmbedding | None):
    if transform == "bits":
        return BitsTransform.from_state(state)
    if transform in ("minmax", "log_minmax"):
        return MinMaxTransform.from_state(state)
    if transform == "onehot":
        return OneHotTransform.from_state(state)
    if transform == "word2vec" and embedding is not None:
        return EmbeddingTransform(embedding.tables[state["kind"]])
    raise CodecFileError(f"field {field_name}: unknown transform {transform!r} in codec file")


class FlowCodec:
    """Use ``FlowCodec.fit`` or ``FlowCodec.load``; the constructor only assembles parts."""

    def __init__(self, config: CodecConfig, transforms: dict, profile: ProtocolProfile,
                 embedding: PortProtoEmbedding | None, seed: int):
        self.config = config
        self.transforms = transforms                 # field -> transform, in feature order
        self.profile = profile
        self.embedding = embedding
        self.seed = seed
        self.fields: tuple[str, ...] = tuple(transforms)
        self.feature_slices: dict[str, slice] = {}
        start = 0
        for name, transform in transforms.items():
            self.feature_slices[name] = slice(start, start + transform.width)
            start += transform.width
        self.width = start

    # ------------------------------------------------------------------ fit
    @classmethod
    def fit(cls, table: pd.DataFrame, config: CodecConfig | None = None,
            seed: int = 0) -> "FlowCodec":
        config = config or CodecConfig()
        table = conform(table)
        if len(table) == 0:
            raise ValueError("cannot fit a codec on an empty flow table")
        fields = [f for f in COLUMNS if f in table.columns and config.fields[f] != "none"]
        skipped = [f for f in COLUMNS if f not in table.columns and config.fields[f] != "none"]
        if skipped:
            log.info("codec: fields absent from the training table, not encoded: %s", skipped)
        columns = {f: cls._column(table, f, None) for f in fields}
        w2v = {f: (PROTO if f == "proto" else PORT, columns[f]) for f in fields
               if config.fields[f] == "word2vec"}
        embedding = PortProtoEmbedding.fit(w2v, config.word2vec, seed) if w2v else None
        transforms = {}
        for f in fields:
            try:
                transforms[f] = _new_transform(f, config.fields[f], embedding).fit(columns[f])
            except ValueError as err:
                raise ValueError(f"field {f}: {err}") from err
        # the time field rounds to the resolution of the timestamps themselves: differences
        # of epoch seconds carry noise of their magnitude (2.4e-7 s near 1.5e9)
        transforms["ts"].decimals = resolution(table["ts"].to_numpy())
        codec = cls(config, transforms, ProtocolProfile.fit(table), embedding, seed)
        log.info("codec fitted on %d records: %d features over fields %s",
                 len(table), codec.width, list(codec.fields))
        return codec

    @staticmethod
    def _column(table: pd.DataFrame, field_name: str, prev_ts: float | None) -> np.ndarray:
        if field_name == "ts":
            return _time_column(table["ts"].to_numpy(), prev_ts)
        return table[field_name].to_numpy()

    # ------------------------------------------------------------------ encode
    def encode(self, table: pd.DataFrame, prev_ts: float | None = None) -> np.ndarray:
        """Records -> (n, F) float32 in [0, 1]. ``prev_ts``: ts of the record before the
        first one (its inter-arrival time); without it the first inter-arrival is 0."""
        result = self.encode_report(table, prev_ts)
        unknown = {f: n for f, n in result.unknown.items() if n}
        if unknown:
            log.warning("codec: values not seen in training were mapped to known ones "
                        "(count per field): %s", unknown)
        return result.array

    def encode_report(self, table: pd.DataFrame, prev_ts: float | None = None) -> EncodeResult:
        """Like ``encode`` and also counts, per field, values not seen at fit time (unseen
        category/port/protocol mapped to a known one, number clipped to the fitted range)."""
        missing = [f for f in self.fields if f not in table.columns]
        if missing:
            raise ValueError(f"flow table lacks column(s) {missing} that the codec was "
                             f"fitted with (fields {list(self.fields)})")
        table = conform(table[[f for f in COLUMNS if f in self.fields]])
        out = np.empty((len(table), self.width), dtype=np.float32)         # (n, F)
        unknown = {}
        for name, transform in self.transforms.items():
            try:
                column = self._column(table, name, prev_ts)
                out[:, self.feature_slices[name]] = transform.encode(column)
                unknown[name] = transform.unknown(column)
            except ValueError as err:
                raise ValueError(f"field {name}: {err}") from err
        return EncodeResult(out, unknown)

    # ------------------------------------------------------------------ decode
    def decode(self, array: np.ndarray, start_ts: float) -> DecodeResult:
        """(n, F) floats -> valid canonical records. ``start_ts`` is the ts of the record
        before the first one (for ``encode(table)`` without ``prev_ts``: ``table.ts[0]``);
        ts = start_ts + cumsum(inter-arrival), in float64."""
        array = np.asarray(array)
        if array.ndim != 2 or array.shape[1] != self.width:
            raise ValueError(f"decode expects an array of shape (n, {self.width}), got "
                             f"{array.shape}")
        repairs: dict[str, int] = {}
        finite = np.isfinite(array)
        repairs["non_finite"] = int((~finite.all(axis=1)).sum())
        if repairs["non_finite"]:
            array = np.where(finite, array, 0.0)
        columns: dict[str, np.ndarray] = {}
        for name, transform in self.transforms.items():
            columns[name], outside = transform.decode(array[:, self.feature_slices[name]])
            if outside:
                repairs[f"{name}_out_of_range"] = outside
        columns["ts"] = self._rebuild_time(columns["ts"], start_ts)
        for name in INTEGER_FIELDS:
            if name in columns and columns[name].dtype.kind == "f":
                columns[name] = np.rint(columns[name]).astype(np.int64)
        repairs.update(self.profile.repair(columns))
        return DecodeResult(conform(pd.DataFrame(columns)), repairs)

    def _rebuild_time(self, iat: np.ndarray, start_ts: float) -> np.ndarray:
        ts = float(start_ts) + np.cumsum(iat, dtype=np.float64)           # (n,)
        decimals = self.transforms["ts"].decimals
        return ts if decimals is None else np.round(ts, decimals)

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict:
        return {
            "format": CODEC_FORMAT, "version": CODEC_VERSION, "flowdiff": __version__,
            "seed": self.seed, "config": self.config.to_dict(),
            "fields": [{"name": name, "transform": t.name, "width": t.width, "state": t.state()}
                       for name, t in self.transforms.items()],
            "profile": self.profile.state(),
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``codec.json`` (+ ``word2vec.bin``/``.json``) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.embedding is not None:
            self.embedding.save(directory)
        _write_atomic(directory / STATE_FILE, json.dumps(self.state(), indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "FlowCodec":
        path = Path(directory) / STATE_FILE
        if not path.is_file():
            raise CodecFileError(f"{path}: no codec file here (expected the output of "
                                 f"`flowdiff codec fit` or FlowCodec.save)")
        try:
            state = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CodecFileError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(state, dict) or state.get("format") != CODEC_FORMAT:
            raise CodecFileError(f"{path}: not a flowdiff codec file (expected \"format\": "
                                 f"\"{CODEC_FORMAT}\")")
        if state.get("version") != CODEC_VERSION:
            raise CodecVersionError(
                f"{path}: codec format version {state.get('version')!r}, but this flowdiff "
                f"({__version__}) reads version {CODEC_VERSION}; refit the codec with "
                f"`flowdiff codec fit`")
        try:
            return cls._from_state(state, path.parent)
        except (KeyError, TypeError, ValueError, OSError) as err:
            raise CodecFileError(f"{path}: incomplete or corrupt codec ({err!r})") from err

    @classmethod
    def _from_state(cls, state: dict, directory: Path) -> "FlowCodec":
        config = CodecConfig.from_dict(state["config"], source=str(directory / STATE_FILE))
        uses_w2v = any(f["transform"] == "word2vec" for f in state["fields"])
        embedding = PortProtoEmbedding.load(directory) if uses_w2v else None
        transforms = {}
        for entry in state["fields"]:
            transform = _transform_from_state(entry["name"], entry["transform"],
                                              entry["state"], embedding)
            if transform.width != entry["width"]:
                raise CodecFileError(f"field {entry['name']}: width {transform.width} "
                                     f"differs from the saved {entry['width']}")
            transforms[entry["name"]] = transform
        return cls(config, transforms, ProtocolProfile.from_state(state["profile"]),
                   embedding, int(state["seed"]))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
