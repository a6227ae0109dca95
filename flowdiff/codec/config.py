"""Codec configuration: which transform each field gets, and the word2vec settings.

A typed, validated view of the ``codec`` section of a config file, built by the one config
engine (``flowdiff.config``): every problem (unknown key, unknown transform, transform not
allowed for a field, bad number) is listed in one ``ConfigError``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from types import MappingProxyType

from flowdiff.config import Checked, ConfigError, field_range

__all__ = ["ALLOWED_TRANSFORMS", "CodecConfig", "ConfigError", "Word2VecConfig",
           "default_transforms"]

# Transform names a field may take. The first one is the default. "none" leaves an optional
# field out of the encoding (it is then absent from decoded records); the required fields
# (ts, srcip, dstip, proto) have no "none".
# "word2vec" is the token embedding with ranges for rare ports, decoded by sampling
# (flowdiff.codec.tokens); "word2vec_nearest" is NetShare's, one token per port, decoded by
# nearest neighbour (flowdiff.codec.word2vec), kept for comparison and for codecs saved by
# flowdiff 0.1 (format version 1). "reuse_pair_bits" (both addresses or neither) lets an
# address repeat the other address field's recent hosts too (flowdiff.codec.reuse).
# "word2vec_follow" is "word2vec" plus a code "the port of the record my address repeats"
# (flowdiff.codec.tokens.PortFollowTransform); it needs its address field (srcport: srcip,
# dstport: dstip) to be a reuse transform, and both ports when the addresses are pairs.
ALLOWED_TRANSFORMS: MappingProxyType = MappingProxyType({
    "ts": ("quantile", "log_minmax", "minmax"),   # applied to the inter-arrival time
    "td": ("quantile", "log_minmax", "minmax", "none"),
    "srcip": ("reuse_bits", "reuse_pair_bits", "bits"),
    "dstip": ("reuse_bits", "reuse_pair_bits", "bits"),
    "srcport": ("word2vec", "word2vec_follow", "word2vec_nearest", "bits", "none"),
    "dstport": ("word2vec", "word2vec_follow", "word2vec_nearest", "bits", "none"),
    "proto": ("word2vec", "word2vec_nearest", "onehot", "bits"),
    "pkt": ("quantile", "log_minmax", "minmax", "none"),
    "byt": ("quantile", "log_minmax", "minmax", "none"),
    "flags": ("bits", "onehot", "none"),
    "tos": ("onehot", "bits", "none"),
    "label": ("onehot", "none"),
})


DEFAULT_REUSE_DEPTH = 16
PORT_ADDRESS = {"srcport": "srcip", "dstport": "dstip"}   # the address a following port follows
SECTION_KEYS = ("fields", "word2vec", "reuse_depth", "conversations")   # the keys of a codec section


@dataclass(frozen=True)
class Word2VecConfig(Checked):
    """gensim Word2Vec settings for the shared port/protocol embedding (NetShare defaults),
    and how the ``word2vec`` transform builds and decodes its vocabulary:
    ``service_min_count`` (a port seen fewer times is represented by its range),
    ``temperature`` (the assumed size of the model's error in the scaled embedding space)
    and ``prior_power`` (how much a token's training frequency weighs in decoding; see
    flowdiff.codec.kernel). The ``word2vec_nearest`` transform ignores those three."""

    vector_size: int = field(default=10, metadata=field_range(1))
    window: int = field(default=5, metadata=field_range(1))
    epochs: int = field(default=5, metadata=field_range(1))
    negative: int = field(default=5, metadata=field_range(1))
    service_min_count: int = field(default=50, metadata=field_range(1))
    temperature: float = field(default=0.05, metadata=field_range(0.0, 10.0, low_open=True))
    prior_power: float = field(default=1.0, metadata=field_range(0.0, 4.0))


def default_transforms() -> dict[str, str]:
    return {name: choices[0] for name, choices in ALLOWED_TRANSFORMS.items()}


@dataclass(frozen=True)
class CodecConfig(Checked):
    """Per-field transform choice plus word2vec settings.

    ``fields`` maps canonical fields to transform names (see ``ALLOWED_TRANSFORMS``); fields
    not listed keep their default. Fields absent from the fitting table are skipped at fit
    time whatever they say here. ``from_dict`` (the config engine's) reads the ``codec``
    section or a codec-only file: ``fields``, ``word2vec`` (``vector_size``, ``window``,
    ``epochs``, ``negative``, ``service_min_count``, ``temperature``, ``prior_power``),
    ``reuse_depth`` and ``conversations``.
    """

    fields: dict[str, str] = field(default_factory=default_transforms)
    word2vec: Word2VecConfig = field(default_factory=Word2VecConfig)
    reuse_depth: int = field(default=DEFAULT_REUSE_DEPTH,  # K of the reuse_bits address fields
                             metadata=field_range(1, 256))
    # reuse_pair_bits addresses: srcip also carries one conversation code for the pair ("the
    # host pair of record k back", or reversed), decided by one arg-max (flowdiff.codec.reuse)
    conversations: bool = False

    def __post_init__(self):
        object.__setattr__(self, "fields", {**default_transforms(),
                                            **{str(k): v for k, v in self.fields.items()}})
        super().__post_init__()

    def check(self) -> list[tuple[str, str]]:
        problems = []
        for name, transform in self.fields.items():
            choices = ALLOWED_TRANSFORMS.get(name)
            if choices is None:
                problems.append((f"fields.{name}", f"unknown field; expected one of "
                                                   f"{list(ALLOWED_TRANSFORMS)}"))
            elif transform not in choices:
                problems.append((f"fields.{name}", f"transform {transform!r} not allowed; "
                                                   f"expected one of {list(choices)}"))
        pair = [f for f in ("srcip", "dstip") if self.fields.get(f) == "reuse_pair_bits"]
        if len(pair) == 1:
            other = "dstip" if pair[0] == "srcip" else "srcip"
            problems.append((f"fields.{other}", f"must be 'reuse_pair_bits' as {pair[0]} is "
                                                f"(its codes point into the other address)"))
        if self.conversations and len(pair) != 2:
            problems.append(("conversations", "needs 'reuse_pair_bits' for both srcip and dstip "
                                              "(the code names a host pair)"))
        follow = [p for p in ("srcport", "dstport") if self.fields.get(p) == "word2vec_follow"]
        for port in follow:
            address = PORT_ADDRESS[port]
            if self.fields.get(address) not in ("reuse_bits", "reuse_pair_bits"):
                problems.append((f"fields.{port}", f"'word2vec_follow' follows {address}'s reuse "
                                                   f"codes, so {address} must be 'reuse_bits' or "
                                                   f"'reuse_pair_bits', not "
                                                   f"{self.fields.get(address)!r}"))
        if len(follow) == 1 and len(pair) == 2:
            other = "dstport" if follow[0] == "srcport" else "srcport"
            problems.append((f"fields.{other}", f"must be 'word2vec_follow' as {follow[0]} is "
                                                f"(with 'reuse_pair_bits' addresses a port may "
                                                f"follow into the other side's port)"))
        return problems

    def to_dict(self) -> dict:
        return {"fields": dict(self.fields), "word2vec": asdict(self.word2vec),
                "reuse_depth": self.reuse_depth,
                **({"conversations": True} if self.conversations else {})}
