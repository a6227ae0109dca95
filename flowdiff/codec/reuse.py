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

``reuse_pair_bits`` (``ReusePairBitsTransform``, srcip and dstip together) adds K codes
that point into the *other* address field: code K + k = "the peer field's address k
records back". Real traffic is conversations: NetFlow exports both directions of a
connection, so 22 % of UGR'16 records are the previous record reversed (srcip = the
previous dstip and dstip = the previous srcip), which per-field codes cannot say at all;
with the peer codes it is one code per field (K + 1, K + 1). The code is the smallest k
over both fields, the field's own history first on a tie. Both fields are decoded together
(``decode_reuse``): chains may cross between them, and each keeps its own (S, K) history.
"""

from __future__ import annotations

import numpy as np

from flowdiff.codec.transforms import BitsTransform

UNKNOWN = -1                     # history slot with no known address
PEERS = {"srcip": "dstip", "dstip": "srcip"}   # the address field a pair code points into


class ReuseBitsTransform:
    """IPv4 address <-> [reuse code one-hot (K + 1), 32 bits]."""

    name = "reuse_bits"
    peer: str | None = None          # the field peer codes point into (reuse_pair_bits)

    def __init__(self, depth: int):
        if depth < 1:
            raise ValueError(f"reuse depth must be >= 1, got {depth}")
        self.depth = int(depth)                                             # K
        self.bits = BitsTransform(32)
        self.code_width = self.depth + 1 + (self.depth if self.peer else 0)
        self.width = self.code_width + self.bits.width
        self.parts = (("code", self.code_width), ("bits", self.bits.width))  # one-hot code, address bits

    def fit(self, column: np.ndarray) -> "ReuseBitsTransform":
        self.bits.fit(column)
        return self

    def codes(self, column: np.ndarray, peer_column: np.ndarray | None = None) -> np.ndarray:
        """(n,) address -> (n,) reuse code: the smallest k <= K with ip[i - k] == ip[i]
        (code k), or with peer[i - k] == ip[i] (code K + k; only with a ``peer_column``, and
        the own field first on a tie); 0 when none (within the column: the first records
        have no earlier ones)."""
        values = np.asarray(column, dtype=np.int64)
        peer = None if peer_column is None else np.asarray(peer_column, dtype=np.int64)
        codes = np.zeros(len(values), dtype=np.int64)
        for k in range(min(self.depth, len(values) - 1), 0, -1):  # smaller k written last
            if peer is not None:
                codes[k:][values[k:] == peer[:-k]] = self.depth + k
            codes[k:][values[k:] == values[:-k]] = k                        # (n - k,)
        return codes

    def encode(self, column: np.ndarray, peer_column: np.ndarray | None = None) -> np.ndarray:
        codes = self.codes(column, peer_column)
        out = np.zeros((len(codes), self.width), dtype=np.float32)          # (n, code + 32)
        out[np.arange(len(codes)), codes] = 1.0
        out[:, self.code_width:] = self.bits.encode(column)
        return out

    def unknown(self, column: np.ndarray) -> int:
        return 0

    def decode(self, block: np.ndarray) -> tuple[np.ndarray, int]:
        """One sequence without history (and without its peer field: peer codes fall back
        to the record's own bits): (n, width) -> (n,) addresses."""
        values, _, fallbacks = self.decode_streams(np.asarray(block)[None], None)
        return values[0], fallbacks

    def decode_streams(self, block: np.ndarray, history: np.ndarray | None
                       ) -> tuple[np.ndarray, np.ndarray, int]:
        """(S, H, width) blocks and (S, K) history (oldest first, ``UNKNOWN`` where not
        known) -> (S, H) addresses, the new (S, K) history, and how many records pointed
        before the known history (decoded from their bits instead)."""
        values, histories, fallbacks = decode_reuse((self,), (block,), (history,))
        return values[0], histories[0], fallbacks[0]

    def state(self) -> dict:
        return {"depth": self.depth}

    @classmethod
    def from_state(cls, state: dict) -> "ReuseBitsTransform":
        return cls(int(state["depth"]))


class ReusePairBitsTransform(ReuseBitsTransform):
    """IPv4 address <-> [reuse code one-hot (2K + 1): own field k back, or the peer field
    k back (K + k), 32 bits]; decoded with its peer (``decode_reuse``)."""

    name = "reuse_pair_bits"

    def __init__(self, depth: int, peer: str):
        if peer not in PEERS.values():
            raise ValueError(f"reuse_pair_bits: peer must be one of {sorted(PEERS.values())}, "
                             f"got {peer!r}")
        self.peer = peer
        super().__init__(depth)

    def state(self) -> dict:
        return {"depth": self.depth, "peer": self.peer}

    @classmethod
    def from_state(cls, state: dict) -> "ReusePairBitsTransform":
        return cls(int(state["depth"]), str(state["peer"]))


def decode_reuse(transforms: tuple, blocks: tuple, histories: tuple
                 ) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """One reuse field, or two peer fields at once: their transforms, (S, H, width) blocks
    and (S, K) histories (None: none known) -> per field the (S, H) addresses, the new
    (S, K) history and the number of records that pointed before the known history."""
    if len(transforms) == 2 and (transforms[0].peer is None
                                 or transforms[0].depth != transforms[1].depth):
        raise ValueError("decode_reuse: two fields must be reuse_pair_bits of one depth")
    if len(transforms) not in (1, 2):
        raise ValueError(f"decode_reuse: one field or a peer pair, got {len(transforms)}")
    return _resolve(list(transforms), [np.asarray(b) for b in blocks], list(histories))


def _resolve(transforms: list, blocks: list, histories: list
             ) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Reuse codes -> addresses for one field or a peer pair (field f's peer is 1 - f).

    ``known`` (fields, S, K + H) holds each field's history and then its records' own
    decoded bits; every record points at the slot it copies (its own for code 0 and for a
    code reaching before the known history), and pointer jumping over all fields' slots at
    once (parent = parent[parent], log2(chain length) rounds) resolves chains, across the
    two fields too."""
    depth = transforms[0].depth
    n_fields = len(transforms)
    n_streams, horizon, _ = blocks[0].shape
    span = depth + horizon
    known = np.empty((n_fields, n_streams, span), dtype=np.int64)
    field_of, back = [], []
    for f, (transform, block, history) in enumerate(zip(transforms, blocks, histories)):
        codes = block[:, :, :transform.code_width].argmax(axis=2)          # (S, H)
        own, _ = transform.bits.decode(
            block[:, :, transform.code_width:].reshape(-1, transform.bits.width))
        known[f, :, :depth] = (np.full((n_streams, depth), UNKNOWN, dtype=np.int64)
                               if history is None else history)
        known[f, :, depth:] = own.reshape(n_streams, horizon)
        peer_code = codes > depth                                           # (S, H)
        field_of.append(np.where(peer_code, 1 - f, f))
        back.append(np.where(peer_code, codes - depth, codes))             # 0: itself
    position = np.arange(depth, span)                                       # (H,) in `known`
    offsets = (np.arange(n_streams) * span)[:, None]                       # (S, 1)
    parent = np.arange(n_fields * n_streams * span).reshape(n_fields, n_streams, span)
    fallbacks = []
    for f in range(n_fields):
        source = position[None, :] - back[f]                                # (S, H)
        target = field_of[f] * (n_streams * span) + offsets + source        # flat slot
        nowhere = (known.reshape(-1)[target] == UNKNOWN) & (back[f] > 0)
        own_slot = f * (n_streams * span) + offsets + position[None, :]
        parent[f, :, depth:] = np.where(nowhere, own_slot, target)
        fallbacks.append(int(nowhere.sum()))
    parent = parent.reshape(-1)
    while True:
        jumped = parent[parent]
        if np.array_equal(jumped, parent):
            break
        parent = jumped
    resolved = known.reshape(-1)[parent].reshape(n_fields, n_streams, span)
    return ([resolved[f, :, depth:] for f in range(n_fields)],
            [resolved[f, :, -depth:] for f in range(n_fields)], fallbacks)
