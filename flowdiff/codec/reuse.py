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
    conversation = False             # carries the pair's conversation code (srcip of a pair)

    def __init__(self, depth: int):
        if depth < 1:
            raise ValueError(f"reuse depth must be >= 1, got {depth}")
        self.depth = int(depth)                                             # K
        self.bits = BitsTransform(32)
        self.code_width = self.depth + 1 + (self.depth if self.peer else 0)
        self.conversation_width = self.code_width if self.conversation else 0
        self.bits_start = self.code_width + self.conversation_width
        self.width = self.bits_start + self.bits.width
        self.parts = (("code", self.code_width),                          # one-hot code
                      *((("conversation", self.conversation_width),) if self.conversation_width
                        else ()),
                      ("bits", self.bits.width))                          # address bits

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
        if self.conversation_width:
            conversations = conversation_codes(column, peer_column, self.depth)
            out[np.arange(len(codes)), self.code_width + conversations] = 1.0
        out[:, self.bits_start:] = self.bits.encode(column)
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
    k back (K + k), (the conversation code, 2K + 1, on srcip with ``conversation``),
    32 bits]; decoded with its peer (``decode_reuse``).

    The conversation code says "this record's host pair is record k's" (code k) or "record
    k's reversed" (K + k), smallest k, the same pair first on a tie; 0: neither. Decoding
    gives both fields that code when it is not 0, whatever their own codes say. The two
    fields' own codes are two one-hots that a sampler commits to separately, and a few-step
    sampler commits to them nearly independently (the packaged pair model wrote "srcip =
    previous dstip" with "dstip new" as often as a whole reversal); the conversation code is
    one categorical for the pair, so one arg-max decides it."""

    name = "reuse_pair_bits"

    def __init__(self, depth: int, peer: str, conversation: bool = False):
        if peer not in PEERS.values():
            raise ValueError(f"reuse_pair_bits: peer must be one of {sorted(PEERS.values())}, "
                             f"got {peer!r}")
        self.peer = peer
        self.conversation = bool(conversation)
        super().__init__(depth)

    def state(self) -> dict:
        return {"depth": self.depth, "peer": self.peer,
                **({"conversation": True} if self.conversation else {})}

    @classmethod
    def from_state(cls, state: dict) -> "ReusePairBitsTransform":
        return cls(int(state["depth"]), str(state["peer"]), bool(state.get("conversation", False)))


def conversation_codes(column: np.ndarray, peer_column: np.ndarray, depth: int) -> np.ndarray:
    """(n,) addresses and (n,) their peers -> (n,) conversation code: the smallest k <= K
    whose record k back has the same (address, peer) (code k) or the two swapped (K + k),
    the same pair first on a tie; 0 when none."""
    values = np.asarray(column, dtype=np.int64)
    peer = np.asarray(peer_column, dtype=np.int64)
    codes = np.zeros(len(values), dtype=np.int64)
    for k in range(min(depth, len(values) - 1), 0, -1):                     # smaller k last
        swapped = (values[k:] == peer[:-k]) & (peer[k:] == values[:-k])
        codes[k:][swapped] = depth + k
        same = (values[k:] == values[:-k]) & (peer[k:] == peer[:-k])
        codes[k:][same] = k
    return codes


def effective_codes(codes: np.ndarray, conversations: np.ndarray | None) -> np.ndarray:
    """The code a field is decoded with: the conversation code where it is not 0, else the
    field's own (conversation code c means own/peer field c back for both fields)."""
    return codes if conversations is None else np.where(conversations > 0, conversations, codes)


def decode_reuse(transforms: tuple, blocks: tuple, histories: tuple
                 ) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """One reuse field, or two peer fields at once: their transforms, (S, H, width) blocks
    and (S, K) histories (None: none known) -> per field the (S, H) addresses, the new
    (S, K) history and the number of records that pointed before the known history."""
    pointers = reuse_pointers(transforms, blocks, histories)
    values, new_histories = pointers.resolve()
    return values, new_histories, pointers.fallbacks


class ReusePointers:
    """Where each record of one reuse field, or of a peer pair, copies its address from.

    ``known`` (fields, S, K + H) holds each field's history and then its records' own
    decoded bits; ``target`` (fields, S, H) is the flat slot of ``known`` a record copies:
    the slot its code points at, or its own (code 0, or a code reaching before the known
    history: a *fallback*). ``reused`` (fields, S, H) says which records copy an earlier
    slot. ``follow`` resolves another field of the same records (the ports) along the same
    pointers."""

    def __init__(self, known: np.ndarray, target: np.ndarray, reused: np.ndarray,
                 fallbacks: list[int]):
        self.known, self.target, self.reused, self.fallbacks = known, target, reused, fallbacks
        self.depth = known.shape[2] - target.shape[2]

    def resolve(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """-> per field the (S, H) addresses and the new (S, K) history."""
        return _jump(self.known, self.target, self.depth)

    def follow(self, own: np.ndarray, histories: list, follows: np.ndarray
               ) -> tuple[list[np.ndarray], list[np.ndarray], int]:
        """Another field of the same records (one per address field, in the same order):
        own (fields, S, H) decoded values, per field its (S, K) history (None: none known)
        and follows (fields, S, H) bool -> per field the (S, H) values, where a record that
        follows and whose address copies an earlier record takes that record's value of
        this field (the port of the address field its code points into), the new (S, K)
        histories, and how many records followed a slot with no known value (they keep their
        own)."""
        known = np.empty_like(self.known)
        for f in range(own.shape[0]):
            known[f, :, :self.depth] = (UNKNOWN if histories[f] is None else histories[f])
        known[:, :, self.depth:] = own
        wanted = follows & self.reused
        nowhere = wanted & (known.reshape(-1)[self.target] == UNKNOWN)
        own_slot = self._own_slots()
        values, new_histories = _jump(known, np.where(wanted & ~nowhere, self.target, own_slot),
                                      self.depth)
        return values, new_histories, int(nowhere.sum())

    def _own_slots(self) -> np.ndarray:
        n_fields, n_streams, span = self.known.shape
        return np.arange(n_fields * n_streams * span).reshape(n_fields, n_streams, span)[
            :, :, self.depth:]


def reuse_pointers(transforms: tuple, blocks: tuple, histories: tuple) -> ReusePointers:
    """The pointers of ``decode_reuse`` (its arguments), before resolving chains."""
    if len(transforms) == 2 and (transforms[0].peer is None
                                 or transforms[0].depth != transforms[1].depth):
        raise ValueError("decode_reuse: two fields must be reuse_pair_bits of one depth")
    if len(transforms) not in (1, 2):
        raise ValueError(f"decode_reuse: one field or a peer pair, got {len(transforms)}")
    blocks = [np.asarray(b) for b in blocks]
    depth = transforms[0].depth
    n_fields = len(transforms)
    n_streams, horizon, _ = blocks[0].shape
    span = depth + horizon
    known = np.empty((n_fields, n_streams, span), dtype=np.int64)
    field_of, back = [], []
    leader = transforms[0]
    conversations = (blocks[0][:, :, leader.code_width:leader.bits_start].argmax(axis=2)
                     if n_fields == 2 and leader.conversation_width else None)   # (S, H)
    for f, (transform, block, history) in enumerate(zip(transforms, blocks, histories)):
        codes = effective_codes(block[:, :, :transform.code_width].argmax(axis=2),
                                conversations)                              # (S, H)
        own, _ = transform.bits.decode(
            block[:, :, transform.bits_start:].reshape(-1, transform.bits.width))
        known[f, :, :depth] = UNKNOWN if history is None else history
        known[f, :, depth:] = own.reshape(n_streams, horizon)
        peer_code = codes > depth                                           # (S, H)
        field_of.append(np.where(peer_code, 1 - f, f))
        back.append(np.where(peer_code, codes - depth, codes))             # 0: itself
    position = np.arange(depth, span)                                       # (H,) in `known`
    offsets = (np.arange(n_streams) * span)[:, None]                       # (S, 1)
    target = np.empty((n_fields, n_streams, horizon), dtype=np.int64)
    reused = np.empty((n_fields, n_streams, horizon), dtype=bool)
    fallbacks = []
    for f in range(n_fields):
        source = position[None, :] - back[f]                                # (S, H)
        pointed = field_of[f] * (n_streams * span) + offsets + source      # flat slot
        nowhere = (known.reshape(-1)[pointed] == UNKNOWN) & (back[f] > 0)
        own_slot = f * (n_streams * span) + offsets + position[None, :]
        target[f] = np.where(nowhere, own_slot, pointed)
        reused[f] = (back[f] > 0) & ~nowhere
        fallbacks.append(int(nowhere.sum()))
    return ReusePointers(known, target, reused, fallbacks)


def _jump(known: np.ndarray, target: np.ndarray, depth: int
          ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every record copies the slot ``target`` names (its own: itself); pointer jumping over
    all fields' slots at once (parent = parent[parent], log2(chain length) rounds) resolves
    chains, across fields too -> per field the (S, H) values and the new (S, K) history."""
    n_fields, n_streams, span = known.shape
    parent = np.arange(known.size).reshape(known.shape)
    parent[:, :, depth:] = target
    parent = parent.reshape(-1)
    while True:
        jumped = parent[parent]
        if np.array_equal(jumped, parent):
            break
        parent = jumped
    resolved = known.reshape(-1)[parent].reshape(n_fields, n_streams, span)
    return ([resolved[f, :, depth:] for f in range(n_fields)],
            [resolved[f, :, -depth:] for f in range(n_fields)])


def follow_flags(codes: np.ndarray, depth: int, own: np.ndarray,
                 peer: np.ndarray | None = None) -> np.ndarray:
    """Whether each record's value of another field (a port) equals that field's value in the
    record its address code points at: codes (n,) of an address field (``codes``), own (n,)
    this field's values, peer (n,) the peer address field's companion (its port; needed for
    peer codes K + k) -> (n,) bool (False for code 0)."""
    codes = np.asarray(codes, dtype=np.int64)
    own = np.asarray(own, dtype=np.int64)
    index = np.arange(len(codes))
    peer_code = codes > depth
    back = np.where(peer_code, codes - depth, codes)
    source = np.maximum(index - back, 0)
    if peer_code.any() and peer is None:
        raise ValueError("follow_flags: peer codes need the peer field's values")
    pointed = np.where(peer_code, (own if peer is None else np.asarray(peer, np.int64))[source],
                       own[source])
    return (back > 0) & (pointed == own)
