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
ALLOWED_TRANSFORMS: MappingProxyType = MappingProxyType({
    "ts": ("log_minmax", "minmax"),          # applied to the inter-arrival time
    "td": ("log_minmax", "minmax", "none"),
    "srcip": ("bits",),
    "dstip": ("bits",),
    "srcport": ("word2vec", "bits", "none"),
    "dstport": ("word2vec", "bits", "none"),
    "proto": ("word2vec", "onehot", "bits"),
    "pkt": ("log_minmax", "minmax", "none"),
    "byt": ("log_minmax", "minmax", "none"),
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


@dataclass(frozen=True)
class Word2VecConfig:
    """gensim Word2Vec settings for the shared port/protocol embedding (NetShare defaults)."""

    vector_size: int = 10
    window: int = 5
    epochs: int = 5
    negative: int = 5

    def __post_init__(self):
        problems = [f"word2vec.{name}: expected a positive integer, got {value!r}"
                    for name, value in vars(self).items()
                    if isinstance(value, bool) or not isinstance(value, int) or value < 1]
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

    def __post_init__(self):
        problems = _field_problems(self.fields)
        if problems:
            raise CodecConfigError(problems)

    @classmethod
    def from_dict(cls, data: dict | None, source: str = "codec config") -> "CodecConfig":
        """Build from a plain mapping (e.g. the ``codec`` section of a YAML file).

        Keys: ``fields`` (field -> transform; unlisted fields keep their default) and
        ``word2vec`` (``vector_size``, ``window``, ``epochs``, ``negative``)."""
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise CodecConfigError([f"expected a mapping, got {type(data).__name__}"], source)
        problems: list[str] = []
        for key in data:
            if key not in ("fields", "word2vec"):
                problems.append(f"unknown key {key!r}: expected 'fields' or 'word2vec'")
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
        if problems:
            raise CodecConfigError(problems, source)
        return cls(fields=fields, word2vec=w2v)

    def to_dict(self) -> dict:
        return {"fields": dict(self.fields), "word2vec": asdict(self.word2vec)}


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
