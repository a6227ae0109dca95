"""Codec configuration: which transform each field gets, and the word2vec settings.

A typed, validated view of the ``codec`` section of a config file. ``from_dict`` collects
every problem (unknown key, unknown transform, transform not allowed for a field, bad
number) and raises one ``CodecConfigError`` listing them all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from types import MappingProxyType

# Transform names a field may take. The first one is the default. "none" leaves an optional
# field out of the encoding (it is then absent from decoded records); the required fields
# (ts, srcip, dstip, proto) have no "none".
# "word2vec" is the token embedding with ranges for rare ports, decoded by sampling
# (flowdiff.codec.tokens); "word2vec_nearest" is NetShare's, one token per port, decoded by
# nearest neighbour (flowdiff.codec.word2vec), kept for comparison and for codecs saved by
# flowdiff 0.1 (format version 1).
ALLOWED_TRANSFORMS: MappingProxyType = MappingProxyType({
    "ts": ("quantile", "log_minmax", "minmax"),   # applied to the inter-arrival time
    "td": ("quantile", "log_minmax", "minmax", "none"),
    "srcip": ("reuse_bits", "bits"),
    "dstip": ("reuse_bits", "bits"),
    "srcport": ("word2vec", "word2vec_nearest", "bits", "none"),
    "dstport": ("word2vec", "word2vec_nearest", "bits", "none"),
    "proto": ("word2vec", "word2vec_nearest", "onehot", "bits"),
    "pkt": ("quantile", "log_minmax", "minmax", "none"),
    "byt": ("quantile", "log_minmax", "minmax", "none"),
    "flags": ("bits", "onehot", "none"),
    "tos": ("onehot", "bits", "none"),
    "label": ("onehot", "none"),
})


class CodecConfigError(ValueError):
    """An invalid codec configuration; the message lists every problem found."""

    def __init__(self, problems: list[str], source: str = "codec config"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n{lines}")


DEFAULT_REUSE_DEPTH = 16
SECTION_KEYS = ("fields", "word2vec", "reuse_depth")   # the keys of a codec section
REAL_KEYS = {"temperature": (0.0, 10.0), "prior_power": (0.0, 4.0)}  # word2vec: not integers


@dataclass(frozen=True)
class Word2VecConfig:
    """gensim Word2Vec settings for the shared port/protocol embedding (NetShare defaults),
    and how the ``word2vec`` transform builds and decodes its vocabulary:
    ``service_min_count`` (a port seen fewer times is represented by its range),
    ``temperature`` (the assumed size of the model's error in the scaled embedding space)
    and ``prior_power`` (how much a token's training frequency weighs in decoding; see
    flowdiff.codec.kernel). The ``word2vec_nearest`` transform ignores those three."""

    vector_size: int = 10
    window: int = 5
    epochs: int = 5
    negative: int = 5
    service_min_count: int = 50
    temperature: float = 0.05
    prior_power: float = 1.0

    def __post_init__(self):
        problems = [f"word2vec.{name}: expected a positive integer, got {value!r}"
                    for name, value in vars(self).items() if name not in REAL_KEYS and
                    (isinstance(value, bool) or not isinstance(value, int) or value < 1)]
        for name, (low, high) in REAL_KEYS.items():
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not low <= value <= high or (name == "temperature" and value == 0)):
                problems.append(f"word2vec.{name}: expected a number in "
                                f"{'(' if name == 'temperature' else '['}{low}, {high}], "
                                f"got {value!r}")
        if problems:
            raise CodecConfigError(problems)


def default_transforms() -> dict[str, str]:
    return {name: choices[0] for name, choices in ALLOWED_TRANSFORMS.items()}


@dataclass(frozen=True)
class CodecConfig:
    """Per-field transform choice plus word2vec settings.

    ``fields`` maps every canonical field to a transform name (see ``ALLOWED_TRANSFORMS``).
    Fields absent from the fitting table are skipped at fit time whatever they say here.
    """

    fields: dict[str, str] = field(default_factory=default_transforms)
    word2vec: Word2VecConfig = field(default_factory=Word2VecConfig)
    reuse_depth: int = DEFAULT_REUSE_DEPTH   # K of the reuse_bits address fields

    def __post_init__(self):
        problems = _field_problems(self.fields) + _reuse_problems(self.reuse_depth)
        if problems:
            raise CodecConfigError(problems)

    @classmethod
    def from_dict(cls, data: dict | None, source: str = "codec config") -> "CodecConfig":
        """Build from a plain mapping (e.g. the ``codec`` section of a YAML file).

        Keys: ``fields`` (field -> transform; unlisted fields keep their default),
        ``word2vec`` (``vector_size``, ``window``, ``epochs``, ``negative``,
        ``service_min_count``, ``temperature``) and ``reuse_depth``."""
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise CodecConfigError([f"expected a mapping, got {type(data).__name__}"], source)
        problems: list[str] = []
        for key in data:
            if key not in SECTION_KEYS:
                problems.append(f"unknown key {key!r}: expected one of {list(SECTION_KEYS)}")
        fields = default_transforms()
        given_fields = data.get("fields") or {}
        if not isinstance(given_fields, dict):
            problems.append(f"'fields' must be a mapping field -> transform, got "
                            f"{type(given_fields).__name__}")
            given_fields = {}
        fields.update({str(k): v for k, v in given_fields.items()})
        problems += _field_problems(fields)
        w2v, w2v_problems = _word2vec_from_dict(data.get("word2vec") or {})
        problems += w2v_problems
        reuse_depth = data.get("reuse_depth", DEFAULT_REUSE_DEPTH)
        problems += _reuse_problems(reuse_depth)
        if problems:
            raise CodecConfigError(problems, source)
        return cls(fields=fields, word2vec=w2v, reuse_depth=reuse_depth)

    def to_dict(self) -> dict:
        return {"fields": dict(self.fields), "word2vec": asdict(self.word2vec),
                "reuse_depth": self.reuse_depth}


def _reuse_problems(depth) -> list[str]:
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 256:
        return [f"reuse_depth: expected an integer in 1..256, got {depth!r}"]
    return []


def _field_problems(fields: dict) -> list[str]:
    problems = []
    for name, transform in fields.items():
        choices = ALLOWED_TRANSFORMS.get(name)
        if choices is None:
            problems.append(f"fields.{name}: unknown field; expected one of "
                            f"{list(ALLOWED_TRANSFORMS)}")
        elif transform not in choices:
            problems.append(f"fields.{name}: transform {transform!r} not allowed; expected "
                            f"one of {list(choices)}")
    for name in ALLOWED_TRANSFORMS:
        if name not in fields:
            problems.append(f"fields.{name}: missing")
    return problems


def _word2vec_from_dict(data) -> tuple[Word2VecConfig, list[str]]:
    if not isinstance(data, dict):
        return Word2VecConfig(), [f"'word2vec' must be a mapping, got {type(data).__name__}"]
    known = list(Word2VecConfig.__dataclass_fields__)
    problems = [f"word2vec.{key}: unknown key; expected one of {known}"
                for key in data if key not in known]
    try:
        return Word2VecConfig(**{k: v for k, v in data.items() if k in known}), problems
    except CodecConfigError as err:
        return Word2VecConfig(), problems + err.problems
