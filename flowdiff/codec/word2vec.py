"""Word2vec embedding of ports and protocol (NetShare), decoded by nearest neighbour.

The ``word2vec_nearest`` transform: flowdiff 0.1's default (codec format version 1), kept
for comparison and to load artifacts trained with it. The default ``word2vec`` transform
(``flowdiff.codec.tokens``) represents rare ports by their range and decodes by sampling.

One gensim Word2Vec model is trained on one sentence per record made of the fields that
chose ``word2vec`` (by default ``[srcport, dstport, proto]``); srcport and dstport share
the port tokens ("80"), protocols get their own tokens ("proto:6"). Each kind (ports,
protocols) then has its own vocabulary table: the vectors are min-max scaled per
dimension into [0, 1], and decoding is a nearest-neighbour query (exact for vectors equal
to a token) over that table (one index per kind, see ``flowdiff.codec.nearest``).

Exact round trip needs distinct vectors: after training, vectors that coincide in the
scaled float32 table are nudged apart (seeded) until every token is its own unique nearest
neighbour. Encoding a value never seen in training: a port maps to the nearest seen port
number (an unseen ephemeral port becomes a seen ephemeral port), a protocol to the most
frequent seen protocol; ``unknown`` counts them.

Saved as gensim's word2vec binary format (``word2vec.bin``, no pickle), token counts in
``word2vec.json`` and the nearest-neighbour index cells in ``word2vec_index.npz``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import zlib
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from flowdiff.atomic import atomic_file, write_atomic_via, write_text_atomic
from flowdiff.codec.config import Word2VecConfig
from flowdiff.codec.nearest import NearestIndex
from flowdiff.codec.transforms import nearest_rows

log = logging.getLogger(__name__)

PORT, PROTO = "port", "proto"
VALUE_RANGE = {PORT: 65536, PROTO: 256}
VECTORS_FILE, COUNTS_FILE, INDEX_FILE = "word2vec.bin", "word2vec.json", "word2vec_index.npz"
_MAX_SEPARATION_ROUNDS = 20


def token(kind: str, value: int) -> str:
    return str(value) if kind == PORT else f"proto:{value}"


def _kind_of(tok: str) -> tuple[str, int]:
    return (PROTO, int(tok[6:])) if tok.startswith("proto:") else (PORT, int(tok))


@contextlib.contextmanager
def _quiet_gensim():
    """gensim logs every training epoch and file load at INFO; keep that at DEBUG level of
    interest (shown with -vv) instead of flooding the CLI and daemon logs."""
    gensim_log = logging.getLogger("gensim")
    before = gensim_log.level
    if not log.isEnabledFor(logging.DEBUG):
        gensim_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        gensim_log.setLevel(before)


def stable_hash(text: str) -> int:
    """Seed hash for gensim's vector initialisation; Python's ``hash`` of str is salted
    per process, which would make training irreproducible."""
    return zlib.crc32(text.encode("utf-8"))


class EmbeddingTable:
    """Vocabulary of one kind (ports or protocols), ordered by value: raw vectors, their
    [0, 1] scaling, a nearest-neighbour index for decoding and a lookup table value -> row
    for encoding. Without saved ``index_arrays`` the index is built (seeded k-means)."""

    def __init__(self, kind: str, values: np.ndarray, vectors: np.ndarray,
                 counts: np.ndarray, seed: int, index_arrays=None):
        order = np.argsort(values, kind="stable")
        self.kind = kind
        self.values = np.asarray(values, dtype=np.int64)[order]            # (V,)
        self.vectors = np.asarray(vectors, dtype=np.float32)[order]        # (V, d) raw
        self.counts = np.asarray(counts, dtype=np.int64)[order]            # (V,)
        self.scaled = _scale(self.vectors)                                 # (V, d) in [0,1]
        self.index = (NearestIndex.build(self.scaled, seed) if index_arrays is None
                      else NearestIndex.from_state_arrays(self.scaled, index_arrays))
        self.lookup, self.seen = self._lookup_table()                      # (R,), (R,)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def _lookup_table(self) -> tuple[np.ndarray, np.ndarray]:
        size = VALUE_RANGE[self.kind]
        seen = np.zeros(size, dtype=bool)
        seen[self.values] = True
        if self.kind == PROTO:  # unseen protocol -> most frequent protocol
            lookup = np.full(size, int(np.argmax(self.counts)), dtype=np.int64)
        else:  # unseen port -> numerically nearest seen port (ties: the lower one)
            lookup = nearest_rows(self.values, np.arange(size))
        lookup[self.values] = np.arange(len(self.values))
        return lookup, seen

    def _rows(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.int64)
        bad = (values < 0) | (values >= VALUE_RANGE[self.kind])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"row {i}: {self.kind} {values[i]} outside "
                             f"0..{VALUE_RANGE[self.kind] - 1}")
        return self.lookup[values]

    def encode(self, values: np.ndarray) -> np.ndarray:
        return self.scaled[self._rows(values)]                             # (n, d)

    def unknown(self, values: np.ndarray) -> int:
        self._rows(values)
        return int((~self.seen[np.asarray(values, dtype=np.int64)]).sum())

    def decode(self, block: np.ndarray) -> np.ndarray:
        query = np.clip(np.asarray(block, dtype=np.float32), 0.0, 1.0)     # (n, d)
        return self.values[self.index.query(query)]                        # (n,)


def _scale(vectors: np.ndarray) -> np.ndarray:
    """Per-dimension min-max to [0, 1], in float32 (same bits at fit and at load)."""
    low = vectors.min(axis=0)
    span = vectors.max(axis=0) - low
    span = np.where(span > 0, span, np.float32(1.0)).astype(np.float32)
    return ((vectors - low) / span).astype(np.float32)


def _separate(vectors: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Nudge vectors that coincide after scaling until each is its own unique nearest
    neighbour. Returns the vectors and how many were moved."""
    vectors = vectors.copy()
    moved = 0
    for _ in range(_MAX_SEPARATION_ROUNDS):
        if len(vectors) < 2:
            return vectors, moved
        scaled = _scale(vectors)
        distance, rows = cKDTree(scaled).query(scaled, k=2)                # (V, 2)
        clash = (distance[:, 1] == 0) | (rows[:, 0] != np.arange(len(vectors)))
        if not clash.any():
            return vectors, moved
        # keep the first of each clashing group where it is, move the others
        _, first = np.unique(scaled[clash], axis=0, return_index=True)
        to_move = np.setdiff1d(np.flatnonzero(clash), np.flatnonzero(clash)[first])
        spread = np.float32(max(float(vectors.std()), 1e-3) * 1e-3)
        noise = rng.normal(0.0, 1.0, (len(to_move), vectors.shape[1])).astype(np.float32)
        vectors[to_move] += noise * spread
        moved += len(to_move)
    raise RuntimeError(f"could not make {int(clash.sum())} word2vec vectors distinct after "
                       f"{_MAX_SEPARATION_ROUNDS} rounds")


class PortProtoEmbedding:
    """The shared word2vec model: an ``EmbeddingTable`` per kind present."""

    def __init__(self, tables: dict[str, EmbeddingTable]):
        self.tables = tables

    @classmethod
    def fit(cls, columns: dict[str, tuple[str, np.ndarray]], config: Word2VecConfig,
            seed: int) -> "PortProtoEmbedding":
        """``columns``: field name -> (kind, values) for each word2vec field."""
        token_columns = [np.char.add("proto:", values.astype(str)) if kind == PROTO
                         else values.astype(str) for kind, values in columns.values()]
        model = train_word2vec(token_columns, config, seed)
        rng = np.random.default_rng(seed)
        tables = {}
        for kind in sorted({kind for kind, _ in columns.values()}):
            keys = [k for k in model.wv.index_to_key if _kind_of(k)[0] == kind]
            values = np.array([_kind_of(k)[1] for k in keys], dtype=np.int64)
            counts, vectors = distinct_vectors(model, keys, kind, rng)
            tables[kind] = EmbeddingTable(kind, values, vectors, counts, seed)
        return cls(tables)

    def save(self, directory: Path) -> None:
        counts, arrays = {}, {}
        for kind, table in self.tables.items():
            counts[kind] = {"values": table.values.tolist(), "counts": table.counts.tolist()}
            arrays.update({f"{kind}_{k}": v for k, v in table.index.state_arrays().items()})
        save_vectors(directory / VECTORS_FILE,
                     [token(kind, int(v)) for kind, t in self.tables.items() for v in t.values],
                     np.concatenate([t.vectors for t in self.tables.values()]),
                     np.concatenate([t.counts for t in self.tables.values()]))
        write_text_atomic(directory / COUNTS_FILE, json.dumps(counts))
        with atomic_file(directory / INDEX_FILE) as handle:
            np.savez(handle, **arrays)  # a handle: np.savez would append ".npz" to a name

    @classmethod
    def load(cls, directory: Path) -> "PortProtoEmbedding":
        keyed = load_vectors(directory / VECTORS_FILE)
        counts = json.loads((directory / COUNTS_FILE).read_text())
        tables = {}
        with np.load(directory / INDEX_FILE, allow_pickle=False) as arrays:
            for kind, entry in counts.items():
                values = np.asarray(entry["values"], dtype=np.int64)
                vectors = keyed[[token(kind, int(v)) for v in values]]
                index = {k: arrays[f"{kind}_{k}"] for k in ("centroids", "cell_of", "probes")}
                tables[kind] = EmbeddingTable(kind, values, vectors,
                                              np.asarray(entry["counts"]), 0, index)
        return cls(tables)


def train_word2vec(token_columns: list[np.ndarray], config: Word2VecConfig, seed: int):
    """gensim Word2Vec over one sentence per record (the i-th token of every column),
    reproducible: one worker, ``seed``, an unsalted hash for the initial vectors."""
    from gensim.models import Word2Vec  # heavy import, only when fitting

    sentences = [list(words) for words in zip(*token_columns)]
    with _quiet_gensim():
        return Word2Vec(sentences, vector_size=config.vector_size, window=config.window,
                        epochs=config.epochs, negative=config.negative, min_count=1,
                        workers=1, seed=seed, hashfxn=stable_hash)


def distinct_vectors(model, keys: list[str], kind: str,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(counts, vectors) of ``keys``, vectors nudged apart where they coincide."""
    counts = np.array([model.wv.get_vecattr(k, "count") for k in keys], dtype=np.int64)
    vectors, moved = _separate(model.wv[keys], rng)
    if moved:
        log.info("word2vec: nudged %d %s vectors apart to keep decoding exact", moved, kind)
    return counts, vectors


def save_vectors(path: Path, names: list[str], vectors: np.ndarray, counts: np.ndarray) -> None:
    """Token vectors in gensim's word2vec binary format (vectors only, no pickle)."""
    from gensim.models import KeyedVectors

    keyed = KeyedVectors(vector_size=int(vectors.shape[1]))
    keyed.add_vectors(list(names), vectors)
    # gensim sorts the saved vectors by a "count" attribute (and warns when it is absent)
    keyed.allocate_vecattrs(attrs=["count"], types=[np.int64])
    keyed.expandos["count"][:] = counts
    with _quiet_gensim():
        write_atomic_via(path, lambda f: keyed.save_word2vec_format(f, binary=True))


def load_vectors(path: Path):
    """gensim ``KeyedVectors`` from a file written by ``save_vectors``."""
    from gensim.models import KeyedVectors

    with _quiet_gensim():
        return KeyedVectors.load_word2vec_format(str(path), binary=True)



class EmbeddingTransform:
    """Per-field view of the shared embedding (the field transform interface)."""

    name = "word2vec_nearest"

    def __init__(self, table: EmbeddingTable):
        self.table = table
        self.width = table.dim

    def fit(self, column: np.ndarray) -> "EmbeddingTransform":
        return self  # the shared model is fitted once by PortProtoEmbedding.fit

    def encode(self, column: np.ndarray) -> np.ndarray:
        return self.table.encode(column)

    def unknown(self, column: np.ndarray) -> int:
        return self.table.unknown(column)

    def decode(self, block: np.ndarray) -> tuple[np.ndarray, int]:
        return self.table.decode(block), 0

    def state(self) -> dict:
        return {"kind": self.table.kind}
