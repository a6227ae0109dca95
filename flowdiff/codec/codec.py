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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import pandas as pd

from flowdiff import __version__
from flowdiff.atomic import write_text_atomic
from flowdiff.codec.block_targets import FAR as BLOCK_HISTORY
from flowdiff.codec.block_targets import LAGGED as BLOCK_FIELDS
from flowdiff.codec.block_targets import FILE as BLOCK_FILE
from flowdiff.codec.block_targets import BlockTargets, copy_fields
from flowdiff.codec.calibration import OutputCalibration
from flowdiff.codec.config import PORT_ADDRESS, CodecConfig
from flowdiff.codec.quantile import QuantileTransform
from flowdiff.codec.repair import ProtocolProfile
from flowdiff.codec.reuse import (PEERS, UNKNOWN, ReuseBitsTransform, ReusePairBitsTransform,
                                  conversation_codes, effective_codes, follow_flags,
                                  reuse_pointers)
from flowdiff.codec.tokens import (PortFollowTransform, PortTokenTransform, ProtoTokenTransform,
                                   TokenEmbedding)
from flowdiff.codec.transforms import (FIELD_BITS, BitsTransform, MinMaxTransform,
                                       OneHotTransform, resolution)
from flowdiff.codec.word2vec import EmbeddingTransform, PortProtoEmbedding
from flowdiff.schema import COLUMNS, conform

log = logging.getLogger(__name__)

CODEC_FORMAT = "flowdiff-codec"
CODEC_VERSION = 2
READABLE_VERSIONS = (1, 2)              # version 1: flowdiff 0.1 (NetShare's embedding)
STATE_FILE = "codec.json"
ADDRESS_PORT = {address: port for port, address in PORT_ADDRESS.items()}
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


TOKEN_TRANSFORMS = ("word2vec", "word2vec_follow")   # the transforms sharing TokenEmbedding


def _ports_or_proto(field_name: str) -> str:
    return "proto" if field_name == "proto" else "port"


class _Embeddings:
    """The shared word2vec models a codec's fields use, by transform name."""

    def __init__(self, tokens: TokenEmbedding | None = None,
                 nearest: PortProtoEmbedding | None = None):
        self.tokens = tokens          # "word2vec": tokens with port ranges, sampled decoding
        self.nearest = nearest        # "word2vec_nearest": NetShare's, nearest neighbour

    @classmethod
    def fit(cls, columns: dict[str, np.ndarray], config: CodecConfig,
            seed: int) -> "_Embeddings":
        def fit_one(transforms: tuple[str, ...], model):
            chosen = {f: (_ports_or_proto(f), columns[f]) for f in columns
                      if config.fields[f] in transforms}
            return model.fit(chosen, config.word2vec, seed) if chosen else None
        return cls(fit_one(TOKEN_TRANSFORMS, TokenEmbedding),
                   fit_one(("word2vec_nearest",), PortProtoEmbedding))

    def save(self, directory: Path) -> None:
        for embedding in (self.tokens, self.nearest):
            if embedding is not None:
                embedding.save(directory)

    @classmethod
    def load(cls, directory: Path, transforms: set[str]) -> "_Embeddings":
        return cls(TokenEmbedding.load(directory) if transforms & set(TOKEN_TRANSFORMS) else None,
                   PortProtoEmbedding.load(directory) if "word2vec_nearest" in transforms
                   else None)


class Transform(Protocol):
    """What every field transform offers (``flowdiff/codec/transforms.py``, ``reuse.py``,
    ``quantile.py``, ``tokens.py``, ``word2vec.py``): ``width`` features per record, fitted
    on a column, exact on what it saw, and its state as plain JSON values."""

    width: int

    def fit(self, column: np.ndarray) -> "Transform": ...
    def encode(self, column: np.ndarray) -> np.ndarray: ...          # (n,) -> (n, width)
    def unknown(self, column: np.ndarray) -> int: ...                # values it cannot encode
    def decode(self, block: np.ndarray) -> tuple[np.ndarray, int]: ...  # -> (values, repaired)
    def state(self) -> dict: ...


@dataclass(frozen=True)
class TransformKind:
    """How a transform name of the config (``ALLOWED_TRANSFORMS``) becomes a transform:
    ``new(field, config, embeddings, seed)`` unfitted (embeddings fitted already), and
    ``load(field, state, embeddings)`` from a saved codec."""
    new: Callable[[str, CodecConfig, _Embeddings, int], Transform]
    load: Callable[[str, dict, _Embeddings], Transform]


def _embedding_transform(field_name: str, transform: str, embeddings: _Embeddings) -> Transform:
    if transform == "word2vec":
        kind = _ports_or_proto(field_name)
        return (ProtoTokenTransform if kind == "proto" else PortTokenTransform)(embeddings.tokens)
    return EmbeddingTransform(embeddings.nearest.tables[_ports_or_proto(field_name)])


def _embedding_kind(transform: str) -> TransformKind:
    return TransformKind(new=lambda f, config, emb, seed: _embedding_transform(f, transform, emb),
                         load=lambda f, state, emb: _embedding_transform(f, transform, emb))


# The one registry of transform names; ``flowdiff.codec.config.ALLOWED_TRANSFORMS`` says
# which field may take which, and every name there has an entry here (tested).
TRANSFORM_KINDS: dict[str, TransformKind] = {
    "bits": TransformKind(new=lambda f, config, emb, seed: BitsTransform(FIELD_BITS[f]),
                          load=lambda f, state, emb: BitsTransform.from_state(state)),
    "reuse_bits": TransformKind(
        new=lambda f, config, emb, seed: ReuseBitsTransform(config.reuse_depth),
        load=lambda f, state, emb: ReuseBitsTransform.from_state(state)),
    "reuse_pair_bits": TransformKind(
        new=lambda f, config, emb, seed: ReusePairBitsTransform(
            config.reuse_depth, PEERS[f], conversation=config.conversations and f == "srcip"),
        load=lambda f, state, emb: ReusePairBitsTransform.from_state(state)),
    "minmax": TransformKind(new=lambda f, config, emb, seed: MinMaxTransform(log=False),
                            load=lambda f, state, emb: MinMaxTransform.from_state(state)),
    "log_minmax": TransformKind(new=lambda f, config, emb, seed: MinMaxTransform(log=True),
                                load=lambda f, state, emb: MinMaxTransform.from_state(state)),
    "quantile": TransformKind(
        new=lambda f, config, emb, seed: QuantileTransform(seed=seed + COLUMNS.index(f)),
        load=lambda f, state, emb: QuantileTransform.from_state(state)),
    "onehot": TransformKind(new=lambda f, config, emb, seed: OneHotTransform(),
                            load=lambda f, state, emb: OneHotTransform.from_state(state)),
    "word2vec": _embedding_kind("word2vec"),
    "word2vec_nearest": _embedding_kind("word2vec_nearest"),
    "word2vec_follow": TransformKind(
        new=lambda f, config, emb, seed: PortFollowTransform(emb.tokens, PORT_ADDRESS[f]),
        load=lambda f, state, emb: PortFollowTransform(emb.tokens, str(state["address"]))),
}


def _new_transform(field_name: str, transform: str, config: CodecConfig,
                   embeddings: _Embeddings, seed: int) -> Transform:
    """An unfitted transform (fit it on the column; the embeddings are fitted already)."""
    if transform not in TRANSFORM_KINDS:
        raise ValueError(f"field {field_name}: no transform named {transform!r}")
    return TRANSFORM_KINDS[transform].new(field_name, config, embeddings, seed)


def _transform_from_state(field_name: str, transform: str, state: dict,
                          embeddings: _Embeddings) -> Transform:
    if transform not in TRANSFORM_KINDS:
        raise CodecFileError(f"field {field_name}: unknown transform {transform!r} in codec file")
    return TRANSFORM_KINDS[transform].load(field_name, state, embeddings)


def _upgrade_version_1(state: dict) -> dict:
    """Codec files of format version 1 (flowdiff 0.1) named NetShare's nearest-neighbour
    embedding "word2vec"; it is "word2vec_nearest" now. Nothing else changed."""
    rename = lambda t: "word2vec_nearest" if t == "word2vec" else t
    config = dict(state["config"])
    config["fields"] = {f: rename(t) for f, t in config["fields"].items()}
    fields = [dict(entry, transform=rename(entry["transform"])) for entry in state["fields"]]
    return dict(state, config=config, fields=fields, version=CODEC_VERSION)


class FlowCodec:
    """Use ``FlowCodec.fit`` or ``FlowCodec.load``; the constructor only assembles parts."""

    def __init__(self, config: CodecConfig, transforms: dict, profile: ProtocolProfile,
                 embeddings: _Embeddings, seed: int):
        self.config = config
        self.transforms = transforms                 # field -> transform, in feature order
        self.profile = profile
        self.embeddings = embeddings
        self.seed = seed
        self.fields: tuple[str, ...] = tuple(transforms)
        self.feature_slices: dict[str, slice] = {}
        start = 0
        for name, transform in transforms.items():
            self.feature_slices[name] = slice(start, start + transform.width)
            start += transform.width
        self.width = start
        self.feature_parts: dict[str, slice] = {}    # fields split where a transform has parts
        for name, transform in transforms.items():
            start = self.feature_slices[name].start
            for part, width in getattr(transform, "parts", ((None, transform.width),)):
                key = name if part is None else f"{name}.{part}"
                self.feature_parts[key] = slice(start, start + width)
                start += width
        self.calibration = None                      # OutputCalibration, set by calibrate()
        self.block_targets = None                    # BlockTargets, set by calibrate()
        self._layout_draws()
        self.reuse_fields = tuple(n for n, t in transforms.items()
                                  if isinstance(t, ReuseBitsTransform))
        self.follow_fields = tuple(n for n, t in transforms.items()
                                   if isinstance(t, PortFollowTransform))
        # the address fields decoded together (a peer pair, or one field alone)
        self.reuse_groups = tuple(dict.fromkeys(
            (n,) if transforms[n].peer is None else tuple(sorted((n, transforms[n].peer),
                                                                 key=COLUMNS.index))
            for n in self.reuse_fields))

    def _layout_draws(self) -> None:
        """Decoding randomness: uniform numbers per record, a column range per sampled
        field, then the calibration's."""
        self.draw_slices: dict[str, slice] = {}
        draws = 0
        for name, transform in self.transforms.items():
            if getattr(transform, "draws", 0):
                self.draw_slices[name] = slice(draws, draws + transform.draws)
                draws += transform.draws
        self.transform_draws = draws
        self.draws = draws + (self.calibration.draws if self.calibration else 0)

    def set_calibration(self, calibration) -> None:
        """Decode through ``calibration`` (an ``OutputCalibration`` fitted on this codec's
        model's outputs; None removes it). It draws uniforms after the transforms' own.
        Block targets fitted with the previous calibration are removed."""
        self.calibration = calibration
        self.block_targets = None
        for name, transform in self.transforms.items():
            if hasattr(transform, "prior_offset"):
                offset, temperature = (calibration.tokens.get(name, (None, None))
                                       if calibration else (None, None))
                transform.prior_offset, transform.temperature = offset, temperature
            if hasattr(transform, "set_range_buckets"):
                transform.set_range_buckets(calibration.ports.get(name) if calibration else None)
        self._layout_draws()

    def set_block_targets(self, targets) -> None:
        """Decode the streams of ``decode_streams(..., walk=...)`` with ``targets`` (a
        ``flowdiff.codec.block_targets.BlockTargets`` fitted with this codec's calibration;
        None removes them)."""
        if targets is not None and self.calibration is None:
            raise ValueError("block targets need the calibration they were fitted with")
        self.block_targets = targets

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
        embeddings = _Embeddings.fit(columns, config, seed)
        # the time field rounds to the resolution of the timestamps themselves: differences
        # of epoch seconds carry noise of their magnitude (2.4e-7 s near 1.5e9)
        time_decimals = resolution(table["ts"].to_numpy())
        transforms = {}
        for f in fields:
            try:
                transform = _new_transform(f, config.fields[f], config, embeddings, seed)
                if f == "ts" and isinstance(transform, QuantileTransform):
                    transforms[f] = transform.fit(columns[f], decimals=time_decimals)
                else:
                    transforms[f] = transform.fit(columns[f])
            except ValueError as err:
                raise ValueError(f"field {f}: {err}") from err
        transforms["ts"].decimals = time_decimals
        codec = cls(config, transforms, ProtocolProfile.fit(table), embeddings, seed)
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
                if getattr(transform, "peer", None):   # reuse_pair_bits: codes into the peer too
                    encoded = transform.encode(column, self._column(table, transform.peer, prev_ts))
                elif name in self.follow_fields:
                    encoded = transform.encode(column, self._follow_flags(table, name))
                else:
                    encoded = transform.encode(column)
                out[:, self.feature_slices[name]] = encoded
                unknown[name] = transform.unknown(column)
            except ValueError as err:
                raise ValueError(f"field {name}: {err}") from err
        return EncodeResult(out, unknown)

    def _follow_flags(self, table: pd.DataFrame, port: str) -> np.ndarray:
        """(n,) bool: each record's ``port`` equals the port of the record its address's
        reuse code points at (``word2vec_follow``)."""
        address = self.transforms[port].address
        reuse = self.transforms[address]
        peer = reuse.peer
        codes = reuse.codes(table[address].to_numpy(),
                            None if peer is None else table[peer].to_numpy())
        leader = self.transforms.get("srcip")
        if peer is not None and getattr(leader, "conversation", False):  # decoded by that code
            codes = effective_codes(codes, conversation_codes(
                table["srcip"].to_numpy(), table["dstip"].to_numpy(), reuse.depth))
        return follow_flags(codes, reuse.depth, table[port].to_numpy(),
                            None if peer is None else table[ADDRESS_PORT[peer]].to_numpy())

    # ------------------------------------------------------------------ decode
    def decode(self, array: np.ndarray, start_ts: float,
               rng: np.random.Generator | None = None) -> DecodeResult:
        """(n, F) floats -> valid canonical records. ``start_ts`` is the ts of the record
        before the first one (for ``encode(table)`` without ``prev_ts``: ``table.ts[0]``);
        ts = start_ts + cumsum(inter-arrival), in float64. ``rng`` draws the sampled
        fields (ports, protocol); without it a generator seeded with the codec's seed is
        used, so the same array always decodes to the same records."""
        array = np.asarray(array)
        if array.ndim != 2 or array.shape[1] != self.width:
            raise ValueError(f"decode expects an array of shape (n, {self.width}), got "
                             f"{array.shape}")
        rng = np.random.default_rng(self.seed) if rng is None else rng
        return self.decode_streams(array[None], np.array([start_ts]), [rng]).result

    def decode_streams(self, steps: np.ndarray, start_ts: np.ndarray,
                       rngs: list[np.random.Generator],
                       history: dict[str, np.ndarray] | None = None,
                       chain: bool = False,
                       walk: list[tuple[int, int]] | None = None) -> "StreamsDecoded":
        """S streams at once: (S, H, F) floats, (S,) start times (the ts of each stream's
        record before its first one), one generator per stream for the sampled fields, and
        each reuse field's (S, K) history of earlier addresses (None: none known). Records
        come stream-major (stream 0's H records, then stream 1's, ...); stream s's records
        are what ``decode(steps[s], start_ts[s], rngs[s])`` gives when it has no history.
        ``chain``: the streams' blocks are consecutive stretches of one timeline: stream 0
        starts at ``start_ts[0]``, stream s right after stream s - 1's last record (the
        other start times are ignored), so the records come in time order. ``walk`` (each
        stream's (walk seed, walk turn)) decodes with the block targets, if the codec has
        them (``flowdiff.codec.block_targets``): each whole block of a stream's H steps gets
        the make-up of the bank block its walk reaches."""
        steps = np.asarray(steps)
        if steps.ndim != 3 or steps.shape[2] != self.width:
            raise ValueError(f"decode_streams expects an array of shape (S, H, {self.width}),"
                             f" got {steps.shape}")
        n_streams, horizon, _ = steps.shape
        if len(rngs) != n_streams or np.shape(start_ts) != (n_streams,):
            raise ValueError(f"decode_streams: {n_streams} streams need {n_streams} start "
                             f"times and generators, got {np.shape(start_ts)} and {len(rngs)}")
        array = steps.reshape(n_streams * horizon, self.width)              # (S*H, F)
        repairs: dict[str, int] = {}
        finite = np.isfinite(array)
        repairs["non_finite"] = int((~finite.all(axis=1)).sum())
        if repairs["non_finite"]:
            array = np.where(finite, array, 0.0)
        uniforms = (np.concatenate([rng.random((horizon, self.draws)) for rng in rngs])
                    if self.draws else None)                                # (S*H, draws)
        plan = None
        if self.calibration is not None:
            uniforms = self.calibration.correlate(uniforms, self.draw_slices, n_streams)
            raw, array = array, self.calibration.apply(array, uniforms[:, self.transform_draws:])
            if self.block_targets is not None and walk is not None:
                plan = self.block_targets.apply(self, self.calibration, array,
                                                np.asarray(raw, np.float64), walk, rngs)
        history = dict(history or {})
        columns: dict[str, np.ndarray] = {}
        for names in self.reuse_groups:
            pointers = reuse_pointers(
                tuple(self.transforms[f] for f in names),
                tuple(array[:, self.feature_slices[f]].reshape(n_streams, horizon, -1)
                      for f in names),
                tuple(history.get(f) for f in names))
            values, histories = pointers.resolve()
            for field_name, field_values, field_history, outside in zip(
                    names, values, histories, pointers.fallbacks):
                columns[field_name], history[field_name] = field_values.reshape(-1), field_history
                if outside:
                    repairs[f"{field_name}_reuse_before_history"] = outside
            ports = [ADDRESS_PORT[f] for f in names if ADDRESS_PORT[f] in self.follow_fields]
            if ports:
                self._decode_following(ports, pointers, array, uniforms, history, columns,
                                       repairs, (n_streams, horizon))
        for name, transform in self.transforms.items():
            block = array[:, self.feature_slices[name]]                     # (S*H, width)
            if name in columns:          # an address, or a port decoded with its address
                continue
            if name in self.draw_slices:
                columns[name], outside = transform.decode(block, uniforms[:, self.draw_slices[name]])
            else:
                columns[name], outside = transform.decode(block)
            if outside:
                repairs[f"{name}_out_of_range"] = outside
        iat = columns["ts"].reshape(n_streams, horizon)                     # (S, H)
        starts = np.asarray(start_ts, dtype=np.float64)                    # (S,)
        if chain:  # one timeline: (1, S*H) from the first start
            iat, starts = iat.reshape(1, -1), starts[:1]
        columns["ts"] = self._rebuild_time(iat, starts).reshape(-1)
        for name in INTEGER_FIELDS:
            if name in columns and columns[name].dtype.kind == "f":
                columns[name] = np.rint(columns[name]).astype(np.int64)
        repairs.update(self.profile.repair(columns))
        if plan is not None:   # addresses and ports copied along the blocks' lag codes
            copy_fields(columns, plan, history, rngs, n_streams, chain)
        return StreamsDecoded(DecodeResult(conform(pd.DataFrame(columns)), repairs), history)

    def _decode_following(self, ports: list[str], pointers, array: np.ndarray,
                          uniforms: np.ndarray | None, history: dict, columns: dict,
                          repairs: dict, shape: tuple[int, int]) -> None:
        """The ``word2vec_follow`` ports of one address group: each port's own value from
        its token and bits, then copied along the address pointers where its follow code
        says so (into ``columns`` and ``history``)."""
        own, follows = [], []
        for port in ports:
            transform, block = self.transforms[port], array[:, self.feature_slices[port]]
            draws = None if uniforms is None else uniforms[:, self.draw_slices[port]]
            values, _ = transform.decode(block, draws)
            own.append(values.reshape(shape))
            follows.append(transform.follows(block).reshape(shape))
        values, histories, outside = pointers.follow(
            np.stack(own), [history.get(p) for p in ports], np.stack(follows))
        for port, port_values, port_history in zip(ports, values, histories):
            columns[port], history[port] = port_values.reshape(-1), port_history
        if outside:
            repairs["port_follow_before_history"] = outside

    def _rebuild_time(self, iat: np.ndarray, start_ts: np.ndarray) -> np.ndarray:
        """(S, H) inter-arrival times, (S,) start times -> (S, H) float64 timestamps."""
        ts = start_ts[:, None] + np.cumsum(iat, axis=1, dtype=np.float64)   # (S, H)
        decimals = self.transforms["ts"].decimals
        return ts if decimals is None else np.round(ts, decimals)

    def empty_history(self, streams: int) -> dict[str, np.ndarray]:
        """Each reuse field's (S, K) history with no known address (and each following
        port's, with no known port)."""
        depth = {name: self.transforms[name].depth for name in self.reuse_fields}
        depth.update({name: depth[self.transforms[name].address] for name in self.follow_fields})
        if self.block_targets is not None:
            depth.update({f"block.{name}": BLOCK_HISTORY for name in BLOCK_FIELDS + ("proto",)})
        return {name: np.full((streams, k), UNKNOWN, dtype=np.int64) for name, k in depth.items()}

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict:
        return {
            "format": CODEC_FORMAT, "version": CODEC_VERSION, "flowdiff": __version__,
            "seed": self.seed, "config": self.config.to_dict(),
            "fields": [{"name": name, "transform": t.name, "width": t.width, "state": t.state()}
                       for name, t in self.transforms.items()],
            "profile": self.profile.state(),
            **({"calibration": self.calibration.state()} if self.calibration else {}),
            **({"block_targets": {"file": BLOCK_FILE, "blocks": self.block_targets.blocks,
                                  "length": self.block_targets.length}}
               if self.block_targets is not None else {}),
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``codec.json`` (+ the word2vec files) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.embeddings.save(directory)
        if self.block_targets is not None:
            self.block_targets.save(directory / BLOCK_FILE)
        write_text_atomic(directory / STATE_FILE, json.dumps(self.state(), indent=1))
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
        if state.get("version") not in READABLE_VERSIONS:
            raise CodecVersionError(
                f"{path}: codec format version {state.get('version')!r}, but this flowdiff "
                f"({__version__}) reads versions {list(READABLE_VERSIONS)}; refit the codec "
                f"with `flowdiff codec fit` (or retrain the model with `flowdiff train`)")
        try:
            if state["version"] == 1:
                state = _upgrade_version_1(state)
            return cls._from_state(state, path.parent)
        except (KeyError, TypeError, ValueError, OSError) as err:
            raise CodecFileError(f"{path}: incomplete or corrupt codec ({err!r})") from err

    @classmethod
    def _from_state(cls, state: dict, directory: Path) -> "FlowCodec":
        config = CodecConfig.from_dict(state["config"], source=str(directory / STATE_FILE))
        embeddings = _Embeddings.load(directory, {f["transform"] for f in state["fields"]})
        transforms = {}
        for entry in state["fields"]:
            transform = _transform_from_state(entry["name"], entry["transform"],
                                              entry["state"], embeddings)
            if transform.width != entry["width"]:
                raise CodecFileError(f"field {entry['name']}: width {transform.width} "
                                     f"differs from the saved {entry['width']}")
            transforms[entry["name"]] = transform
        codec = cls(config, transforms, ProtocolProfile.from_state(state["profile"]),
                    embeddings, int(state["seed"]))
        if state.get("calibration"):
            codec.set_calibration(OutputCalibration.from_state(state["calibration"]))
        if state.get("block_targets"):
            path = directory / state["block_targets"]["file"]
            if not path.is_file():
                raise CodecFileError(f"{path}: missing (codec.json names it as the block targets; "
                                     f"rerun `flowdiff calibrate`)")
            codec.set_block_targets(BlockTargets.load(path))
        return codec


@dataclass
class StreamsDecoded:
    """What ``decode_streams`` gives: the records and each reuse field's new history."""
    result: DecodeResult
    history: dict[str, np.ndarray]        # reuse field -> (S, K) last K addresses

