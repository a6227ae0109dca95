"""Host reuse as a field: "same address as the record k back" (k = 1..K) or "new".

Real traffic repeats an address from the last few records very often (UGR'16 day 1:
14% of records repeat the previous record's srcip, 27% one of the last 8, 35% one of the
last 16). Regenerating 32 IP bits exactly is the hardest way to learn "same host as 3
records ago"; a small categorical is an easy one. An address field (``reuse_bits``) is
encoded as

    [one-hot of the reuse code (K + 1): 0 = new, k = same as k records back] + [32 bits]

where the code is the *smallest* k with ``ip[i - k] == ip[i]``. The bits are always the
address itself, so the network also sees which host it is. Decoding takes the arg-max
code; a record with code k takes the decoded address of the record k back in its stream
(which may itself be a reuse: chains are resolved), a record with code 0 its bits. Exact
round trip: the record k back decodes to ``ip[i - k]`` = ``ip[i]``.

Across decode calls (the daemon decodes a stream block by block) the last K decoded
addresses of each stream are its *history*; a code pointing before the known history
falls back to the record's own bits and is counted.
"""

from __future__ import annotations

import numpy as np

from flowdiff.codec.transforms import BitsTransform

UNKNOWN = -1                     # history slot with no known address


class ReuseBitsTransform:
    """IPv4 address <-> [reuse code one-hot (K + 1), 32 bits]."""

    name = "reuse_bits"

    def __init__(self, depth: int):
        if depth < 1:
            raise ValueError(f"reuse depth must be >= 1, got {depth}")
        self.depth = int(depth)                                             # K
        self.bits = BitsTransform(32)
        self.width = self.depth + 1 + self.bits.width
        self.parts = (("code", self.depth + 1), ("bits", self.bits.width))  # one-hot code, address bits

    def fit(self, column: np.ndarray) -> "ReuseBitsTransform":
        self.bits.fit(column)
        return self

    def codes(self, column: np.ndarray) -> np.ndarray:
        """(n,) address -> (n,) reuse code: the smallest k <= K with ip[i - k] == ip[i],
        0 when none (within the column: the first records have no earlier ones)."""
        values = np.asarray(column, dtype=np.int64)
        codes = np.zeros(len(values), dtype=np.int64)
        for k in range(min(self.depth, len(values) - 1), 0, -1):  # smaller k written last
            same = values[k:] == values[:-k]                                # (n - k,)
            codes[k:][same] = k
        return codes

    def encode(self, column: np.ndarray) -> np.ndarray:
        codes = self.codes(column)
        out = np.zeros((len(codes), self.width), dtype=np.float32)          # (n, K + 1 + 32)
        out[np.arange(len(codes)), codes] = 1.0
        out[:, self.depth + 1:] = self.bits.encode(column)
        return out

    def unknown(self, column: np.ndarray) -> int:
        return 0

    def decode(self, block: np.ndarray) -> tuple[np.ndarray, int]:
        """One sequence without history: (n, width) -> (n,) addresses."""
        values, _, fallbacks = self.decode_streams(np.asarray(block)[None], None)
        return values[0], fallbacks

    def decode_streams(self, block: np.ndarray, history: np.ndarray | None
                       ) -> tuple[np.ndarray, np.ndarray, int]:
        """(S, H, width) blocks and (S, K) history (oldest first, ``UNKNOWN`` where not
        known) -> (S, H) addresses, the new (S, K) history, and how many records pointed
        before the known history (decoded from their bits instead)."""
        block = np.asarray(block)
        n_streams, horizon, _ = block.shape
        codes = block[:, :, :self.depth + 1].argmax(axis=2)                 # (S, H)
        own, _ = self.bits.decode(block[:, :, self.depth + 1:].reshape(-1, self.bits.width))
        if history is None:
            history = np.full((n_streams, self.depth), UNKNOWN, dtype=np.int64)
        known = np.concatenate([history, own.reshape(n_streams, horizon)], axis=1)  # (S, K+H)
        position = np.arange(self.depth, self.depth + horizon)             # (H,) in `known`
        source = position[None, :] - codes                                  # (S, H)
        pointing_nowhere = np.take_along_axis(known, source, axis=1) == UNKNOWN
        pointing_nowhere &= codes > 0
        source = np.where(pointing_nowhere, position[None, :], source)
        # resolve reuse chains by pointer jumping over the flattened streams: parent[j] is
        # j for history and new hosts, else the record it repeats; parent = parent[parent]
        # until every record points at the start of its chain (log2(chain length) rounds)
        span = self.depth + horizon
        offsets = (np.arange(n_streams) * span)[:, None]                   # (S, 1)
        parent = np.broadcast_to(np.arange(span), known.shape) + offsets    # (S, K+H)
        parent[:, self.depth:] = source + offsets
        parent = parent.reshape(-1)                                         # (S*(K+H),)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
        resolved = known.reshape(-1)[parent].reshape(n_streams, span)       # (S, K+H)
        return resolved[:, self.depth:], resolved[:, -self.depth:], int(pointing_nowhere.sum())

    def state(self) -> dict:
        return {"depth": self.depth}

    @classmethod
    def from_state(cls, state: dict) -> "ReuseBitsTransform":
        return cls(int(state["depth"]))
