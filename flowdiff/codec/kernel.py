"""Decoding an embedding vector as a distribution over the vocabulary, not a nearest point.

A diffusion model's output is never exactly on a token's vector. Nearest-neighbour
decoding then maps the many off-token outputs onto a few "hub" tokens that happen to sit
where outputs land, and the decoded distribution collapses (UGR'16, packaged model: one
port that is 0.05% of the training records became 54% of the stream). Here a query ``q``
is read as a noisy observation of a token's vector and decoded by sampling the posterior

    P(token j | q)  ~  count_j ** beta * exp(-|q - v_j|^2 / (2 tau^2))

over the tokens whose kernel is within ``CUTOFF`` (a factor 1e-3) of the nearest one's:
the training frequency is the prior (``beta`` = ``word2vec.prior_power``: 1 is the Bayes
posterior for Gaussian error, 0 ignores frequency), ``tau`` (``word2vec.temperature``) the
assumed size of the model's error. A query midway between two tokens gives both, in
proportion to their frequency, and never a token far from both. When the query is a
token's vector (every encoded record) that token is returned: exact round trip.

The draw uses one uniform number per query, supplied by the caller (the stream's own
generator), so a seeded decode is reproducible; without uniforms the most probable token
is returned.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from flowdiff.codec.nearest import ExactLookup

CUTOFF = float(np.log(1e3))   # tokens whose kernel is < 1e-3 of the nearest's are not drawn
CHUNK = 4096                  # queries per distance matrix (CHUNK x V floats)


class KernelDecoder:
    """(n, d) queries -> (n,) token rows, by sampling the posterior above."""

    def __init__(self, vectors: np.ndarray, counts: np.ndarray, temperature: float,
                 prior_power: float = 1.0):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)        # (V, d)
        self.prior_power = float(prior_power)
        self.log_prior = self.prior_power * np.log(
            np.maximum(np.asarray(counts, np.float64), 1.0))                  # (V,)
        self.temperature = float(temperature)
        self._norms = (self.vectors.astype(np.float64) ** 2).sum(axis=1)      # (V,)
        self.exact = ExactLookup(self.vectors)

    def log_weights(self, queries: np.ndarray, prior_offset: np.ndarray | None = None,
                    temperature: float | None = None) -> np.ndarray:
        """(n, d) -> (n, V) unnormalised log posterior, -inf beyond the cutoff;
        ``prior_offset`` (V,) is added to the log prior and ``temperature`` replaces the
        decoder's (both from an output calibration)."""
        q = np.asarray(queries, dtype=np.float64)
        d2 = (q ** 2).sum(axis=1)[:, None] + self._norms[None, :] - 2.0 * (q @ self.vectors.T)
        d2 = np.maximum(d2, 0.0)                                              # (n, V)
        scale = 2.0 * (temperature or self.temperature) ** 2
        near = d2 <= d2.min(axis=1, keepdims=True) + scale * CUTOFF           # (n, V)
        log_prior = self.log_prior if prior_offset is None else self.log_prior + prior_offset
        return np.where(near, log_prior[None, :] - d2 / scale, -np.inf)

    def decode(self, queries: np.ndarray, uniforms: np.ndarray | None = None,
               prior_offset: np.ndarray | None = None,
               temperature: float | None = None) -> np.ndarray:
        """(n, d) queries, (n,) uniforms in [0, 1) or None -> (n,) token rows."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        rows = self.exact.rows(queries)                                       # (n,) -1: no hit
        missing = np.flatnonzero(rows < 0)
        with threadpool_limits(limits=1, user_api="blas"):
            for start in range(0, missing.size, CHUNK):
                part = missing[start:start + CHUNK]
                logw = self.log_weights(queries[part], prior_offset, temperature)  # (b, V)
                if uniforms is None:
                    rows[part] = logw.argmax(axis=1)
                    continue
                weights = np.exp(logw - logw.max(axis=1, keepdims=True))      # (b, V)
                cumulative = np.cumsum(weights, axis=1)                       # (b, V)
                target = np.asarray(uniforms)[part, None] * cumulative[:, -1:]
                picked = (cumulative <= target).sum(axis=1)                   # (b,)
                rows[part] = np.minimum(picked, len(self.vectors) - 1)
        return rows
