"""Ports and protocol as word2vec tokens, with ephemeral ports as ranges (the default).

NetShare gives every port its own word2vec token. On UGR'16 61k distinct ports appear,
most of them a handful of times: ephemeral client ports, whose vectors stay near their
random initialisation and form one dense blob where no decoder can tell them apart. Here:

* a **service port** (seen at least ``word2vec.service_min_count`` times in training, over
  srcport and dstport together; UGR'16 day 1 with 50: 535 ports, 56% of port values) is its
  own token ``"80"``;
* every other port is the token of its **range** — ``"range:0"`` .. ``"range:3"`` for
  0-1023, 1024-32767, 32768-49151 (Linux ephemeral) and 49152-65535 (IANA dynamic) —
  so 30,000 rare words become four frequent ones;
* protocols are tokens ``"proto:6"``.

One gensim Word2Vec model is trained on one sentence per record (``[srcport, dstport,
proto]`` tokens, NetShare's setting); vectors are min-max scaled per dimension into
[0, 1]. A port field is ``vector_size + 16`` wide: the embedding of its token, then the
port's 16 bits (always the port itself, as the address fields carry their bits). The
protocol field is ``vector_size`` wide. Decoding samples the token from its posterior
given the model's output (``flowdiff.codec.kernel``); a service token is its port, a range
token takes the port from the bits, folded into the range (its low bits kept) when the
bits fall outside it. Bits, not a position in the range's distribution: thresholded bits
survive small errors exactly (measured with ``benchmarks/codec_check.py``, docs/codec.md),
and a model unsure of the low bits still gives a port of the right range.

Saved as gensim's word2vec binary format (``tokens.bin``: vectors only, no pickle) and
``tokens.json`` (token counts, temperature).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from flowdiff.atomic import write_text_atomic
from flowdiff.codec.config import Word2VecConfig
from flowdiff.codec.kernel import KernelDecoder
from flowdiff.codec.transforms import BitsTransform, nearest_rows
from flowdiff.codec.word2vec import (_scale, distinct_vectors, load_vectors, save_vectors,
                                     train_word2vec)

log = logging.getLogger(__name__)

PORT_RANGES = ((0, 1024), (1024, 32768), (32768, 49152), (49152, 65536))
BUCKET_SHIFT = 6                    # ranged-port histogram buckets of 64 ports
VECTORS_FILE, TABLES_FILE = "tokens.bin", "tokens.json"
PORT, PROTO = "port", "proto"


def port_range(values: np.ndarray) -> np.ndarray:
    """(n,) ports -> (n,) index into PORT_RANGES."""
    starts = np.array([low for low, _ in PORT_RANGES])
    return np.searchsorted(starts, np.asarray(values, dtype=np.int64), side="right") - 1


class TokenTable:
    """One kind's vocabulary: token names, their scaled vectors and training counts, and
    the decoder that samples a token for a query."""

    def __init__(self, names: list[str], vectors: np.ndarray, counts: np.ndarray,
                 temperature: float, prior_power: float):
        self.names = list(names)
        self.vectors = np.asarray(vectors, dtype=np.float32)               # (V, d) raw
        self.counts = np.asarray(counts, dtype=np.int64)                   # (V,)
        self.scaled = _scale(self.vectors)                                 # (V, d) in [0, 1]
        self.decoder = KernelDecoder(self.scaled, self.counts, temperature, prior_power)
        self.row = {name: i for i, name in enumerate(self.names)}

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


class TokenEmbedding:
    """The shared word2vec model of ports and protocol, plus the port range tables."""

    def __init__(self, tables: dict[str, TokenTable]):
        self.tables = tables            # PORT / PROTO -> TokenTable

    # ------------------------------------------------------------------ fit
    @classmethod
    def fit(cls, columns: dict[str, tuple[str, np.ndarray]], config: Word2VecConfig,
            seed: int) -> "TokenEmbedding":
        """``columns``: field name -> (kind, values) for each token field."""
        ports = [np.asarray(v, np.int64) for kind, v in columns.values() if kind == PORT]
        service = _service_ports(ports, config.service_min_count)
        model = train_word2vec([_port_tokens(values, service) if kind == PORT
                                else _proto_tokens(values) for kind, values in columns.values()],
                               config, seed)
        rng = np.random.default_rng(seed)
        tables = {}
        for kind in sorted({kind for kind, _ in columns.values()}):
            names = sorted((str(k) for k in model.wv.index_to_key if _kind(k) == kind),
                           key=_order)
            counts, vectors = distinct_vectors(model, names, kind, rng)
            tables[kind] = TokenTable(names, vectors, counts, config.temperature,
                                      config.prior_power)
        if PORT in tables:
            log.info("word2vec: %d service ports (seen >= %d times) and %d port tokens in "
                     "all", len(service), config.service_min_count, len(tables[PORT].names))
        return cls(tables)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Path) -> None:
        tables = self.tables.values()
        save_vectors(directory / VECTORS_FILE, [n for t in tables for n in t.names],
                     np.concatenate([t.vectors for t in tables]),
                     np.concatenate([t.counts for t in tables]))
        info = {"tables": {kind: {"names": t.names, "counts": t.counts.tolist(),
                                  "temperature": t.decoder.temperature,
                                  "prior_power": t.decoder.prior_power}
                           for kind, t in self.tables.items()}}
        write_text_atomic(directory / TABLES_FILE, json.dumps(info))

    @classmethod
    def load(cls, directory: Path) -> "TokenEmbedding":
        keyed = load_vectors(directory / VECTORS_FILE)
        info = json.loads((directory / TABLES_FILE).read_text())
        tables = {kind: TokenTable(entry["names"], keyed[entry["names"]],
                                   np.asarray(entry["counts"]), float(entry["temperature"]),
                                   float(entry["prior_power"]))
                  for kind, entry in info["tables"].items()}
        return cls(tables)


def _kind(name: str) -> str:
    return PROTO if name.startswith("proto:") else PORT


def _order(name: str) -> tuple[int, int]:
    """Sort key: numeric tokens by value, then the range tokens."""
    if name.startswith("range:"):
        return (1, int(name[6:]))
    return (0, int(name[6:]) if name.startswith("proto:") else int(name))


def _service_ports(ports: list[np.ndarray], min_count: int) -> np.ndarray:
    """Ports seen at least ``min_count`` times over all port fields (sorted)."""
    every = np.concatenate(ports) if ports else np.zeros(0, np.int64)
    values, counts = np.unique(every, return_counts=True)
    return values[counts >= min_count]


def _port_tokens(values: np.ndarray, service: np.ndarray) -> np.ndarray:
    values = np.asarray(values, np.int64)
    ranged = np.char.add("range:", port_range(values).astype(str))
    return np.where(np.isin(values, service), values.astype(str), ranged)


def _proto_tokens(values: np.ndarray) -> np.ndarray:
    return np.char.add("proto:", np.asarray(values, np.int64).astype(str))


def _in_range(column: np.ndarray, high: int, what: str) -> np.ndarray:
    """The column as int64, or an error naming the first row outside 0..high."""
    values = np.asarray(column, dtype=np.int64)
    bad = (values < 0) | (values > high)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"row {i}: {what} {values[i]} outside 0..{high}")
    return values


class PortTokenTransform:
    """Port <-> [embedding of its token (d), the port's 16 bits] (field transform)."""

    name = "word2vec"

    def __init__(self, embedding: TokenEmbedding):
        self.table = embedding.tables[PORT]
        self.prior_offset = None            # (V,) log-prior offsets of an output calibration
        self.temperature = None             # and its kernel temperature (None: the table's)
        self.ranged_cdf = None              # range -> (ports, cumulative weights) or None
        self.bits = BitsTransform(16)
        self.dim = self.table.dim
        self.width = self.dim + self.bits.width
        self.parts = (("vector", self.dim), ("bits", self.bits.width))    # token vector, port bits
        # token row -> its port (service) or -1 (range token), and its range or -1
        self.port_of = np.array([-1 if n.startswith("range:") else int(n)
                                 for n in self.table.names], dtype=np.int64)   # (V,)
        self.range_of = np.array([int(n[6:]) if n.startswith("range:") else -1
                                  for n in self.table.names], dtype=np.int64)  # (V,)
        self.lookup, self.exact = self._lookup_table()

    @property
    def draws(self) -> int:
        """Uniform numbers per record used by decode: the token's, and the ranged port's
        when an output calibration gives the ranges' port distribution."""
        return 1 if self.ranged_cdf is None else 2

    def ranged_ports(self, ports: np.ndarray) -> np.ndarray:
        """(n,) ports -> (n,) bool: their token is a range token."""
        return self.port_of[self.lookup[np.asarray(ports, dtype=np.int64)]] < 0

    def set_range_buckets(self, counts: np.ndarray | None) -> None:
        """Decode a range token's port by drawing it from ``counts`` ((65536 >> BUCKET_SHIFT,)
        training records per bucket of ranged ports, uniform within a bucket) instead of
        from the model's port bits; None: from the bits."""
        if counts is None:
            self.ranged_cdf = None
            return
        counts = np.asarray(counts, dtype=np.float64)
        ports = np.arange(65536)
        candidate = self.ranged_ports(ports)                               # (65536,)
        per_bucket = np.bincount(ports[candidate] >> BUCKET_SHIFT, minlength=len(counts))
        weight = np.where(candidate, counts[ports >> BUCKET_SHIFT]
                          / np.maximum(per_bucket[ports >> BUCKET_SHIFT], 1), 0.0)
        self.ranged_cdf = {}
        for r, (low, high) in enumerate(PORT_RANGES):
            cumulative = np.cumsum(weight[low:high])
            if cumulative[-1] > 0:
                self.ranged_cdf[r] = (ports[low:high], cumulative / cumulative[-1])

    def _lookup_table(self) -> tuple[np.ndarray, np.ndarray]:
        """(65536,) port -> token row, and (65536,) whether that row gives the port back:
        a service port is its own token; another port is its range's token when training
        saw rare ports in that range, else the numerically nearest service port."""
        lookup = np.full(65536, -1, dtype=np.int64)
        for row in np.flatnonzero(self.range_of >= 0):
            low, high = PORT_RANGES[self.range_of[row]]
            lookup[low:high] = row
        exact = lookup >= 0
        service_rows = np.flatnonzero(self.port_of >= 0)
        order = np.argsort(self.port_of[service_rows])
        service_rows = service_rows[order]
        service_ports = self.port_of[service_rows]
        if len(service_ports):
            unmapped = lookup < 0
            nearest = service_rows[nearest_rows(service_ports, np.arange(65536))]
            lookup[unmapped] = nearest[unmapped]
            lookup[service_ports] = service_rows
            exact[service_ports] = True
        range_rows = np.flatnonzero(self.range_of >= 0)
        if (lookup < 0).any():  # no service port at all: the most frequent range token
            lookup[lookup < 0] = range_rows[np.argmax(self.table.counts[range_rows])]
        return lookup, exact

    def _checked(self, column: np.ndarray) -> np.ndarray:
        return _in_range(column, 65535, "port")

    def fit(self, column: np.ndarray) -> "PortTokenTransform":
        return self  # the shared model is fitted once by TokenEmbedding.fit

    def encode(self, column: np.ndarray) -> np.ndarray:
        values = self._checked(column)
        out = np.empty((len(values), self.dim + self.bits.width), dtype=np.float32)  # (n, d + 16)
        out[:, :self.dim] = self.table.scaled[self.lookup[values]]
        out[:, self.dim:] = self.bits.encode(values)
        return out

    def unknown(self, column: np.ndarray) -> int:
        return int((~self.exact[self._checked(column)]).sum())

    def decode(self, block: np.ndarray, uniforms: np.ndarray | None = None
               ) -> tuple[np.ndarray, int]:
        block = np.asarray(block, dtype=np.float32)
        query = np.clip(block[:, :self.dim], 0.0, 1.0)                      # (n, d)
        rows = self.table.decoder.decode(query, None if uniforms is None else uniforms[:, 0],
                                         self.prior_offset, self.temperature)
        values = self.port_of[rows]                                         # (n,) -1: range
        ranged = values < 0
        if ranged.any():
            from_bits, _ = self.bits.decode(block[ranged, self.dim:])          # (m,)
            low, high = np.asarray(PORT_RANGES)[self.range_of[rows[ranged]]].T  # (m,), (m,)
            inside = (from_bits >= low) & (from_bits < high)
            values[ranged] = np.where(inside, from_bits, low + from_bits % (high - low))
            if self.ranged_cdf is not None and uniforms is not None:
                self._draw_ranged(values, rows, np.flatnonzero(ranged), uniforms[:, 1])
        return values, 0

    def _draw_ranged(self, values: np.ndarray, rows: np.ndarray, ranged: np.ndarray,
                     uniforms: np.ndarray) -> None:
        """Ranged records' ports, in place, drawn from their range's distribution."""
        for r, (ports, cdf) in self.ranged_cdf.items():
            mine = ranged[self.range_of[rows[ranged]] == r]
            picked = np.searchsorted(cdf, uniforms[mine], side="right")
            values[mine] = ports[np.minimum(picked, len(ports) - 1)]

    def state(self) -> dict:
        return {"kind": PORT}


class PortFollowTransform(PortTokenTransform):
    """Port <-> [token embedding (d), 16 bits, follow one-hot (2)] (``word2vec_follow``).

    Conversations: when a record's address repeats an earlier record's (its reuse code
    points k records back, into its own or the peer address field), its port is very often
    that record's port too (UGR'16 day 1: 47 % of all ports; 82 % of the records that are
    the previous one reversed also reverse its ports). A ranged (ephemeral) port cannot be
    copied through its 16 bits by a model unsure of the low bits, and the ranged-port draw
    of a calibration never repeats one. The follow code says "the port of the record my
    address points at": class 1 when the address is reused and the port equals that
    record's port of the same side (srcport for a code into srcip, dstport for one into
    dstip), else class 0. Decoding takes the arg-max; following records copy the port along
    the address's pointer (``ReusePointers.follow``), chains resolved as for addresses."""

    name = "word2vec_follow"

    def __init__(self, embedding: TokenEmbedding, address: str):
        super().__init__(embedding)
        self.address = address
        self.width = self.dim + self.bits.width + 2
        self.parts = (("vector", self.dim), ("bits", self.bits.width), ("follow", 2))

    @property
    def follow_start(self) -> int:
        return self.dim + self.bits.width

    def encode(self, column: np.ndarray, follows: np.ndarray | None = None) -> np.ndarray:
        """(n,) ports and (n,) bool follow flags (None: none follow) -> (n, width)."""
        out = np.zeros((len(column), self.width), dtype=np.float32)
        out[:, :self.follow_start] = super().encode(column)
        follow = (np.zeros(len(out), dtype=bool) if follows is None
                  else np.asarray(follows, dtype=bool))
        out[np.arange(len(out)), self.follow_start + follow.astype(np.int64)] = 1.0
        return out

    def decode(self, block: np.ndarray, uniforms: np.ndarray | None = None
               ) -> tuple[np.ndarray, int]:
        """The record's own port (its token and bits); the follow code is resolved by the
        codec with the address pointers (``follows``)."""
        return super().decode(np.asarray(block)[:, :self.follow_start], uniforms)

    def follows(self, block: np.ndarray) -> np.ndarray:
        """(..., width) outputs -> (...) bool: the follow code's arg-max is 1."""
        block = np.asarray(block)
        return block[..., self.follow_start + 1] > block[..., self.follow_start]

    def state(self) -> dict:
        return {"kind": PORT, "address": self.address}


class ProtoTokenTransform:
    """Protocol number <-> embedding of its token (d) (field transform)."""

    name = "word2vec"
    draws = 1

    def __init__(self, embedding: TokenEmbedding):
        self.table = embedding.tables[PROTO]
        self.prior_offset = None            # (V,) log-prior offsets of an output calibration
        self.temperature = None             # and its kernel temperature (None: the table's)
        self.width = self.table.dim
        self.proto_of = np.array([int(n[6:]) for n in self.table.names], dtype=np.int64)
        most_frequent = int(np.argmax(self.table.counts))
        self.lookup = np.full(256, most_frequent, dtype=np.int64)  # unseen -> most frequent
        self.lookup[self.proto_of] = np.arange(len(self.proto_of))
        self.seen = np.zeros(256, dtype=bool)
        self.seen[self.proto_of] = True

    def _checked(self, column: np.ndarray) -> np.ndarray:
        return _in_range(column, 255, "protocol")

    def fit(self, column: np.ndarray) -> "ProtoTokenTransform":
        return self

    def encode(self, column: np.ndarray) -> np.ndarray:
        return self.table.scaled[self.lookup[self._checked(column)]]        # (n, d)

    def unknown(self, column: np.ndarray) -> int:
        return int((~self.seen[self._checked(column)]).sum())

    def decode(self, block: np.ndarray, uniforms: np.ndarray | None = None
               ) -> tuple[np.ndarray, int]:
        query = np.clip(np.asarray(block, dtype=np.float32), 0.0, 1.0)     # (n, d)
        rows = self.table.decoder.decode(query, None if uniforms is None else uniforms[:, 0],
                                         self.prior_offset, self.temperature)
        return self.proto_of[rows], 0

    def state(self) -> dict:
        return {"kind": PROTO}
