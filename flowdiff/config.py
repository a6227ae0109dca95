"""YAML configuration: typed dataclasses per section, validated at load with every error listed.

One file may hold any of the sections below; ``train`` reads ``data, codec, model, train,
window``, ``serve`` reads ``serve, metrics, exporters``. Unknown keys, wrong types and values
out of range are all collected and raised together as one ``ConfigError`` whose message names
the file, the YAML line and the dotted field path, e.g.::

    configs/serve.yaml:7: serve.streams: expected an integer >= 1, got 0
    configs/serve.yaml:12: exporters[0].polcy: unknown key (known: kind, name, policy, queue)

``codec``, ``model`` and ``train`` are validated against the dataclasses of their own modules
(``flowdiff.codec.CodecConfig``, ``flowdiff.model.ModelConfig``, ``flowdiff.model.TrainConfig``),
imported lazily, with this module's engine (``build_dataclass``: types, ``field_range``
bounds, and each class's ``Checked.check()`` rules), so this module stays the one place that
turns YAML into typed objects and the one ``ConfigError``. The exporters' settings, the
time-series run configs (``flowdiff.timeseries.run_config``) and codec-only files go through the
same engine; ``parse_host_port`` is the one reader of ``host:port`` values.
"""

from __future__ import annotations

import contextvars
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from flowdiff.daemon.shard import ShardConfig

if TYPE_CHECKING:  # imported lazily at run time (torch, gensim)
    from flowdiff.codec import CodecConfig
    from flowdiff.model import ModelConfig, TrainConfig

DEFAULT_MODEL = "default"  # serve.model value meaning "the model packaged in flowdiff/default_model"


class ConfigError(ValueError):
    """Every problem found in one config file; ``errors`` holds one line per problem."""

    def __init__(self, source: str, errors: list[str]):
        self.source = source
        self.errors = errors
        super().__init__(f"{len(errors)} error(s) in {source}:\n  " + "\n  ".join(errors))


def field_range(low=None, high=None, *, low_open=False) -> dict:
    """``field(metadata=...)`` of a number the loader checks: ``low <= value <= high``
    (``low < value`` with ``low_open``); either bound may be None."""
    return {"low": low, "high": high, "low_open": low_open}


_range = field_range
_DEFERRED = contextvars.ContextVar("flowdiff_config_deferred_checks", default=False)


class Checked:
    """Mixin of every settings dataclass with rules beyond type and range (cross-field
    checks, membership, formats): ``check()`` returns ``(key, message)`` pairs. The loader
    (``build_dataclass``) reports each at its own key and YAML line together with every
    other problem; constructing the class directly raises ``ConfigError`` listing them."""

    SECTION = ""  # where the class sits in a config file (subclasses: unannotated, not a field)

    def check(self) -> list[tuple[str, str]]:
        return []

    @classmethod
    def from_dict(cls, data, where: str | None = None, source: str = "<config>",
                  lines: dict[str, int] | None = None):
        """Build from a plain mapping with ``build_dataclass``; ConfigError lists every
        problem, each named ``where.key`` (``where`` defaults to ``SECTION``)."""
        return validate(cls, data, cls.SECTION if where is None else where, source, lines)

    def __post_init__(self):
        if _DEFERRED.get():
            return
        found = [(f.name, problem) for f in dataclasses.fields(self)
                 if (problem := _range_problem(f.metadata, getattr(self, f.name)))]
        found += self.check()
        if found:
            raise ConfigError(type(self).__name__, [f"{key}: {message}" for key, message in found])


def parse_host_port(text: str, *, allow_port_zero: bool = True) -> tuple[str, int]:
    """``host:port`` (``[v6addr]:port`` for IPv6) -> (host without brackets, port); the one
    parser of addresses in configs and on the command line. ValueError says what is wrong."""
    host, sep, port = str(text).strip().rpartition(":")
    low = 0 if allow_port_zero else 1
    if not sep or not host or not port.isdigit() or not low <= int(port) <= 65535:
        raise ValueError(f"expected host:port with port {low}..65535, got {text!r}")
    return host.strip("[]"), int(port)


def parse_address_list(text: str) -> list[tuple[str, int]]:
    """Comma-separated ``host:port`` list (e.g. Kafka bootstrap servers), ports 1..65535."""
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise ValueError(f"expected host:port[,host:port...], got {text!r}")
    return [parse_host_port(item, allow_port_zero=False) for item in items]


# ---------------------------------------------------------------- sections
@dataclass
class DataConfig:
    """Which trace to learn from and how to split it (time order: train part first)."""
    path: str | None = None  # trace file; `flowdiff train --data` overrides it
    format: str = "auto"  # ingest format (auto-detected by default)
    skip_bad: bool = False  # drop and count bad rows instead of stopping at the first
    max_rows: int | None = field(default=None, metadata=_range(1))  # first N records (file order)
    val_fraction: float = field(default=0.1, metadata=_range(0.0, 1.0))  # last part, by time
    # the last N records by time are held out: neither trained on nor used for validation,
    # so `flowdiff eval` against them judges the artifact on traffic it never saw
    holdout_records: int = field(default=0, metadata=_range(0))


@dataclass
class WindowConfig:
    """Window geometry: the model sees context + horizon steps; predict mode fills the horizon."""
    context: int = field(default=400, metadata=_range(1))
    horizon: int = field(default=100, metadata=_range(1))
    stride: int = field(default=1, metadata=_range(1))  # training windows start every `stride` records

    @property
    def length(self) -> int:
        return self.context + self.horizon


# The sampler kinds, listed once; flowdiff.model.samplers registers a class under each name.
SAMPLER_KINDS = ("ddpm", "ddim", "guided", "replacement", "conditional")


@dataclass
class SamplerConfig:
    # predict-mode samplers: conditional (the context enters clean, as predict-mode training
    # shows it), replacement (the context re-noised each step), guided (gradient refinement,
    # ~3x slower); ddim and ddpm as well
    kind: Literal[SAMPLER_KINDS] = "conditional"
    steps: int = field(default=10, metadata=_range(1))
    eta: float = field(default=0.0, metadata=_range(0.0, 1.0))  # DDIM stochasticity (0: deterministic)
    churn: float = field(default=0.0, metadata=_range(0.0))     # EDM S_churn noise added per step (0: off)

    def make(self):
        """The model sampler these settings describe."""
        from flowdiff.model import make_sampler
        return make_sampler(self.kind, steps=self.steps, eta=self.eta, churn=self.churn)


@dataclass
class ServeConfig:
    """The generation loop: streams, start, sampler, pacing, state and shutdown."""
    model: str = DEFAULT_MODEL  # artifact directory, or "default" for the packaged model
    streams: int = field(default=16, metadata=_range(1, 4096))  # parallel streams = batch size
    seed: int = field(default=0, metadata=_range(0))  # stream i uses seed + i
    start: Literal["unconditional", "real"] = "unconditional"  # how contexts are first filled
    seed_data: str | None = None  # trace for start: real (a window per stream)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    # shared: the streams are slices of one network on one clock (merged output at one
    # network's rate); per_stream: each stream its own clock (S networks, S times the rate)
    timeline: Literal["shared", "per_stream"] = "shared"
    pace: Literal["realtime", "fast"] = "realtime"
    speed: float = field(default=1.0, metadata=_range(0.0, low_open=True))  # realtime x speed
    lag_warning_seconds: float = field(default=1.0, metadata=_range(0.0))
    state_dir: str | None = None  # where state.pt lives; None = no state (no resume)
    state_every: int = field(default=50, metadata=_range(1))  # turns between periodic saves
    shutdown_timeout: float = field(default=30.0, metadata=_range(0.0, low_open=True))
    health_stale_seconds: float = field(default=60.0, metadata=_range(0.0, low_open=True))
    max_records: int | None = field(default=None, metadata=_range(1))  # stop after N (None: run forever)
    device: str = "cpu"  # cpu | cuda[:N] | auto (CUDA when present)
    # torch.set_num_threads; None: the CPUs this process may run on (on an idle 2-core
    # machine 2 threads predict 1.6x faster than 1; on cores busy with other jobs set 1:
    # torch's waiting threads then cost more than they give, docs/daemon.md)
    threads: int | None = field(default=None, metadata=_range(1))
    # this daemon's shard of a multi-daemon setup (flowdiff.daemon.shard; docs/scaling.md)
    shard: ShardConfig = field(default_factory=ShardConfig)


@dataclass
class MetricsConfig:
    enabled: bool = True
    listen: str = "127.0.0.1:9108"  # host:port of /metrics, /healthz, /readyz


@dataclass
class ExporterConfig:
    """One sink. ``options`` holds the kind-specific keys, validated by the exporter registry
    against the dataclass the exporter module declares (``CONFIG``)."""
    kind: str
    name: str = ""  # defaults to the kind
    policy: Literal["block", "drop"] = "block"  # when the queue is full
    queue: int = field(default=8, metadata=_range(1))  # queue bound, in batches (turns)
    # the exporter's own settings (an ``ExporterSettings`` subclass instance, the dataclass its
    # module declares as ``CONFIG``), set by the loader; Any so that this module imports no
    # exporter code
    options: Any = None


@dataclass
class Config:
    source: str = "<defaults>"
    data: DataConfig = field(default_factory=DataConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    codec: CodecConfig | None = None  # None: the trainer's defaults
    model: ModelConfig | None = None
    train: TrainConfig | None = None
    serve: ServeConfig = field(default_factory=ServeConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    exporters: list[ExporterConfig] = field(default_factory=lambda: [ExporterConfig(kind="stdout")])
    lines: dict[str, int] = field(default_factory=dict, repr=False)  # dotted path -> YAML line


_OWN_SECTIONS = {"data": DataConfig, "window": WindowConfig, "serve": ServeConfig,
                 "metrics": MetricsConfig}


def _foreign_section(name: str) -> type:
    if name == "codec":
        from flowdiff.codec import CodecConfig
        return CodecConfig
    from flowdiff import model
    return model.ModelConfig if name == "model" else model.TrainConfig


# Set by the training pipeline from `window` and the fitted codec, never by hand.
DERIVED_MODEL_KEYS = ("seq_len", "feature_size")


def _build_foreign(name: str, data, problems: "Problems"):
    """Build a section whose dataclass lives in its own module (codec, model, train) with the
    same engine as ours; the derived model keys are refused here."""
    if name == "model" and isinstance(data, dict):
        for key in DERIVED_MODEL_KEYS:
            if key in data:
                problems.add(f"model.{key}", "set automatically (seq_len = window.context + "
                                             "window.horizon, feature_size = codec width); "
                                             "remove it")
        data = {k: v for k, v in data.items() if k not in DERIVED_MODEL_KEYS}
    return build_dataclass(_foreign_section(name), data, name, problems)


SECTIONS = ("data", "window", "codec", "model", "train", "serve", "metrics", "exporters")


# ---------------------------------------------------------------- YAML line numbers
def _line_index(node: yaml.Node | None, path: str = "", out: dict | None = None) -> dict[str, int]:
    """Map dotted paths (``serve.sampler.steps``, ``exporters[0].kind``) to 1-based YAML lines."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = f"{path}.{key.value}" if path else str(key.value)
            out[sub] = key.start_mark.line + 1
            _line_index(value, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            sub = f"{path}[{i}]"
            out[sub] = value.start_mark.line + 1
            _line_index(value, sub, out)
    return out


class Problems:
    """Collects errors as ``file:line: path: message`` (``command line --option: path:
    message`` for a value given on the command line)."""

    def __init__(self, source: str, lines: dict[str, int] | None = None,
                 origins: dict[str, str] | None = None):
        self.source = source
        self.lines = lines or {}
        self.origins = origins or {}  # dotted path -> command-line option that set it
        self.errors: list[str] = []
        self.paths: list[str] = []

    def add(self, path: str, message: str) -> None:
        probe = path
        while probe and probe not in self.lines and probe not in self.origins:
            probe = probe.rpartition(".")[0] if "." in probe else probe.rpartition("[")[0]
        if probe in self.origins:
            where = f"command line {self.origins[probe]}"
        else:
            where = f"{self.source}:{self.lines[probe]}" if probe in self.lines else self.source
        self.errors.append(f"{where}: {path}: {message}")
        self.paths.append(path)

    def has(self, prefix: str) -> bool:
        """True when a problem was recorded at ``prefix`` or below it."""
        return any(p == prefix or p.startswith((prefix + ".", prefix + "["))
                   for p in self.paths)

    def raise_if_any(self) -> None:
        if self.errors:
            raise ConfigError(self.source, self.errors)


# ---------------------------------------------------------------- typed conversion
def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None))
    return getattr(tp, "__name__", str(tp))


_MISSING = object()


def _convert(tp, value, path: str, problems: Problems):
    """Return ``value`` as type ``tp`` or ``_MISSING`` after recording a problem."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            trial = Problems(problems.source)
            out = _convert(arg, value, path, trial)
            if not trial.errors:
                return out
        problems.add(path, f"expected {_describe(tp)}, got {value!r}")
        return _MISSING
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        problems.add(path, f"expected {_describe(tp)}, got {value!r}")
        return _MISSING
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple):
        if isinstance(value, list):
            (item_tp, *_rest) = typing.get_args(tp) or (Any,)
            items = [_convert(item_tp, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
    elif origin is dict or tp is dict:
        if isinstance(value, dict):
            return dict(value)
    elif dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, path, problems)
    else:
        return value
    problems.add(path, f"expected {_describe(tp)}, got {value!r}")
    return _MISSING


def _range_problem(meta, value) -> str | None:
    """The message when ``value`` is outside the ``field_range`` bounds in ``meta``."""
    if "low" not in meta or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    low, high, low_open = meta.get("low"), meta.get("high"), meta.get("low_open", False)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if not (too_low or too_high):
        return None
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        bounds.append(f"<= {high}")
    return f"expected a value {' and '.join(bounds)}, got {value!r}"


def _check_range(meta, value, path: str, problems: Problems) -> None:
    problem = _range_problem(meta, value)
    if problem:
        problems.add(path, problem)


def build_dataclass(cls: type, data, path: str, problems: Problems):
    """Build ``cls`` from a mapping: unknown keys, wrong types, ranges (``field_range``) and
    the class's ``Checked.check()`` rules all become problems, each at its own key. The
    rules run on the well-typed values (defaults for the others), so one run reports
    everything. Returns the instance, or ``_MISSING`` when the section had problems."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.add(path, f"expected a mapping, got {data!r}")
        return _MISSING
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    before = len(problems.errors)
    for key in data:
        if key not in fields:
            problems.add(f"{path}.{key}" if path else str(key),
                         f"unknown key (known: {', '.join(sorted(fields))})")
    kwargs, complete = {}, True
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.add(sub, f"required key missing (expected {_describe(hints[name])})")
                complete = False
            continue
        value = _convert(hints[name], data[name], sub, problems)
        if value is _MISSING:
            complete = complete and not (f.default is dataclasses.MISSING
                                         and f.default_factory is dataclasses.MISSING)
            continue
        _check_range(f.metadata, value, sub, problems)
        kwargs[name] = value
    if not complete:
        return _MISSING
    token = _DEFERRED.set(True)
    try:
        instance = cls(**kwargs)
    except (ValueError, TypeError) as exc:
        problems.add(path or cls.__name__, str(exc))
        return _MISSING
    finally:
        _DEFERRED.reset(token)
    if isinstance(instance, Checked):
        for key, message in instance.check():
            problems.add(f"{path}.{key}" if path else key, message)
    return _MISSING if len(problems.errors) > before else instance


def validate(cls: type, data, path: str = "", source: str = "<config>",
             lines: dict[str, int] | None = None):
    """``cls`` built from ``data`` by ``build_dataclass``, or ConfigError listing every problem."""
    problems = Problems(source, lines)
    instance = build_dataclass(cls, data, path, problems)
    problems.raise_if_any()
    return instance


# ---------------------------------------------------------------- loading
def parse_config(raw, source: str, lines: dict[str, int] | None = None, *,
                 problems: Problems | None = None) -> Config:
    """Validate an already parsed YAML document (a mapping) into a ``Config``. With
    ``problems`` given, the errors are added there (the sections that had none are usable)
    instead of raised."""
    own = problems is None
    problems = Problems(source, lines) if own else problems
    if raw is None:
        raw = {}
    cfg = Config(source=source, lines=dict(lines or {}))
    if not isinstance(raw, dict):
        problems.add("<top>", f"expected a mapping of sections ({', '.join(SECTIONS)}), "
                              f"got {type(raw).__name__}")
        if own:
            problems.raise_if_any()
        return cfg
    for key in raw:
        if key not in SECTIONS:
            problems.add(str(key), f"unknown section (known: {', '.join(SECTIONS)})")
    for name, cls in _OWN_SECTIONS.items():
        if name in raw:
            value = build_dataclass(cls, raw[name], name, problems)
            if value is not _MISSING:
                setattr(cfg, name, value)
    for name in ("codec", "model", "train"):  # absent: None, the trainer uses the defaults
        if name in raw:
            value = _build_foreign(name, raw[name], problems)
            if value is not _MISSING:
                setattr(cfg, name, value)
    cfg.exporters = _parse_exporters(raw.get("exporters", [{"kind": "stdout"}]), problems)
    _cross_checks(cfg, raw, problems)
    if own:
        problems.raise_if_any()
    return cfg


def _parse_exporters(raw, problems: Problems) -> list[ExporterConfig]:
    from flowdiff.exporters.registry import exporter_config_type

    if not isinstance(raw, list) or not raw:
        problems.add("exporters", f"expected a non-empty list of exporters, got {raw!r}")
        return []
    out, names = [], set()
    common = {f.name for f in dataclasses.fields(ExporterConfig)} - {"options"}
    for i, item in enumerate(raw):
        path = f"exporters[{i}]"
        if not isinstance(item, dict):
            problems.add(path, f"expected a mapping with at least 'kind', got {item!r}")
            continue
        kind = item.get("kind")
        if "kind" in item and kind is None:
            problems.add(f"{path}.kind", "is empty: write kind: \"null\" in quotes for the null "
                                         "exporter (bare null means nothing in YAML)")
            continue
        base = build_dataclass(ExporterConfig, {k: v for k, v in item.items() if k in common},
                               path, problems)
        try:
            options_cls = exporter_config_type(kind) if isinstance(kind, str) else None
        except (KeyError, ImportError) as exc:
            problems.add(f"{path}.kind", str(exc.args[0] if exc.args else exc))
            continue
        if options_cls is None:
            continue
        own = {f.name for f in dataclasses.fields(options_cls) if f.init}
        unknown = [k for k in item if k not in common and k not in own]
        for key in unknown:
            problems.add(f"{path}.{key}", f"unknown key for a {kind} exporter (known: "
                                          f"{', '.join(sorted(common | own))})")
        specific = {k: v for k, v in item.items() if k in own}
        options = build_dataclass(options_cls, specific, path, problems)
        if unknown:
            continue
        if base is _MISSING or options is _MISSING:
            continue
        base.name = base.name or base.kind
        if base.name in names:
            problems.add(f"{path}.name", f"duplicate exporter name {base.name!r} "
                                         "(names label metrics; give each a distinct name)")
        names.add(base.name)
        base.options = options
        out.append(base)
    return out


def _cross_checks(cfg: Config, raw: dict, problems: Problems) -> None:
    """Rules across sections and fields: what the daemon or the trainer would refuse later."""
    serve = raw.get("serve") if isinstance(raw.get("serve"), dict) else {}
    if serve.get("start") == "real" and not serve.get("seed_data"):
        problems.add("serve.seed_data", "required when serve.start is 'real' (a trace file)")
    if not problems.has("metrics.listen"):
        try:
            parse_host_port(cfg.metrics.listen)
        except ValueError as exc:
            problems.add("metrics.listen", str(exc))
    if cfg.train is not None and not problems.has("window") and not problems.has("train"):
        for key, message in cfg.train.predict_problems(cfg.window.length):
            problems.add(f"train.{key}", message)
    block = cfg.model.block_length if cfg.model is not None else 0
    if block and not problems.has("window") and not problems.has("model") \
            and (cfg.window.context % block or cfg.window.horizon % block):
        problems.add("model.block_length", f"a divisor of window.context ({cfg.window.context}) "
                     f"and window.horizon ({cfg.window.horizon}), got {block}")


def read_yaml(path: str | Path) -> tuple[Any, dict[str, int]]:
    """(document, dotted path -> line) of a YAML file read with ``yaml.safe_load``; unreadable,
    non-UTF-8 or malformed files raise ConfigError naming the file and line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [f"{path}: cannot read: {exc.strerror}"]) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(str(path), [f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} "
                                      f"at offset {exc.start}); save the file as UTF-8"]) from None
    try:
        raw = yaml.safe_load(text)
        lines = _line_index(yaml.compose(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(str(path), [f"{where}: invalid YAML: {exc}"]) from exc
    return raw, lines


def apply_overrides(raw, overrides: dict[str, tuple[str, Any]] | None,
                    lines: dict[str, int]) -> dict[str, str]:
    """Put command-line values into the parsed document before validation, so they pass the
    same checks as the file's; ``overrides`` maps a dotted path (``serve.streams``) to
    (option, value). Returns path -> option, for ``Problems`` to name the option."""
    origins = {}
    for dotted, (option, value) in (overrides or {}).items():
        if value is None or not isinstance(raw, dict):
            continue
        *parents, key = dotted.split(".")
        node = raw
        for name in parents:  # serve.sampler.steps: create the mappings on the way
            if not isinstance(node.get(name), dict):
                node[name] = {}
            node = node[name]
        node[key] = value
        origins[dotted] = option
        lines.pop(dotted, None)
    return origins


def load_config(path: str | Path | None,
                overrides: dict[str, tuple[str, Any]] | None = None, *,
                problems: Problems | None = None) -> Config:
    """Read and validate a YAML config (``yaml.safe_load``); raise ConfigError listing all errors.
    ``path`` None: the built-in defaults. ``overrides`` (see ``apply_overrides``) are checked
    with the file's values; a bad one is named by its option. Relative paths inside the file
    (data, model, state_dir, seed_data) stay as written."""
    if path is None:  # the defaults, with what the command line set
        given = any(value is not None for _option, value in (overrides or {}).values())
        raw, lines, source = {}, {}, "command line" if given else "<defaults>"
    else:
        raw, lines = read_yaml(path)
        source = str(path)
        if raw is None:  # an empty file (or only comments) is a mistake more often than a choice
            raise ConfigError(source, [f"{path}: no settings (the file is empty or only "
                                       "comments); write `serve: {}` for all the defaults"])
    origins = apply_overrides(raw, overrides, lines)
    if problems is None:
        problems = Problems(source, lines, origins)
        cfg = parse_config(raw, source, lines, problems=problems)
        problems.raise_if_any()
        return cfg
    problems.source, problems.lines, problems.origins = source, lines, origins
    return parse_config(raw, source, lines, problems=problems)


def default_config() -> Config:
    """The built-in defaults (packaged model, stdout exporter), validated like a file."""
    return load_config(None)
