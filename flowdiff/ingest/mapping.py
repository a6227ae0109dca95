"""The column mapping of the generic format: a YAML file, loaded with ``yaml.safe_load`` into
a typed dataclass; every problem in it is collected and reported at once."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from flowdiff import schema
from flowdiff.ingest.errors import IngestError

UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}   # unit -> units per second
EPOCH = "epoch"


@dataclass(frozen=True)
class Mapping:
    """How a generic CSV/Parquet file maps onto canonical fields (see docs/ingest.md)."""
    columns: dict[str, str]                 # canonical field -> column in the file
    time_format: str = EPOCH                # "epoch" (a number), "ISO8601" or a strftime
    time_unit: str = "s"                    # unit of epoch numbers: s, ms, us, ns
    time_is_end: bool = False               # the time column is the flow END (start = end - td)
    duration_unit: str = "s"
    delimiter: str = ","
    header: bool = True                     # CSV has a header line
    names: list[str] = field(default_factory=list)  # column names when header is false

    @property
    def ts_divisor(self) -> float:
        return UNITS[self.time_unit]

    @property
    def td_divisor(self) -> float:
        return UNITS[self.duration_unit]

    @classmethod
    def from_dict(cls, data: object, source: str | Path = "<mapping>") -> "Mapping":
        errors = _problems(data)
        if errors:
            raise IngestError(source, None, None, "invalid column mapping:\n  - "
                              + "\n  - ".join(errors))
        return cls(**{k: (dict(v) if k == "columns" else list(v) if k == "names" else v)
                      for k, v in data.items()})


def load_mapping(path: str | Path) -> Mapping:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise IngestError(path, None, None, f"cannot read the mapping: {exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise IngestError(path, mark.line + 1 if mark else None, None,
                          f"not valid YAML: {exc}") from exc
    return Mapping.from_dict(data, path)


def _problems(data: object) -> list[str]:
    if not isinstance(data, dict):
        return [f"expected a mapping with a 'columns' key, got {type(data).__name__}"]
    known = {f.name for f in fields(Mapping)}
    errors = [f"unknown key {k!r}: expected one of {sorted(known)}" for k in data
              if k not in known]
    columns = data.get("columns")
    if not isinstance(columns, dict) or not columns:
        errors.append("'columns' must map canonical fields to file columns, e.g. "
                      "{ts: start, srcip: src, dstip: dst, proto: protocol}")
        columns = {}
    for name, source in columns.items():
        if name not in schema.COLUMNS + schema.OUTPUT_COLUMNS:
            errors.append(f"columns.{name}: not a canonical field; expected one of "
                          f"{list(schema.COLUMNS)}")
        if not isinstance(source, str):
            errors.append(f"columns.{name}: expected a column name, got {source!r}")
    errors += [f"columns.{name}: required field is not mapped" for name in schema.REQUIRED
               if name not in columns]
    for key in ("time_unit", "duration_unit"):
        if key in data and data[key] not in UNITS:
            errors.append(f"{key}: {data[key]!r} is not a unit; expected one of {list(UNITS)}")
    if "time_format" in data and (not isinstance(data["time_format"], str)
                                  or not data["time_format"]):
        errors.append(f"time_format: expected 'epoch', 'ISO8601' or a strftime format, got "
                      f"{data['time_format']!r}")
    for key in ("time_is_end", "header"):
        if key in data and not isinstance(data[key], bool):
            errors.append(f"{key}: expected true or false, got {data[key]!r}")
    if data.get("time_is_end") is True and "td" not in columns:
        errors.append("time_is_end: true needs columns.td (start = end - duration)")
    delimiter = data.get("delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        errors.append(f"delimiter: expected one character, got {delimiter!r}")
    names = data.get("names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        errors.append(f"names: expected a list of column names, got {names!r}")
        names = []
    if data.get("header", True) is False:
        if not names:
            errors.append("header: false needs 'names', the file's columns in order")
        errors += [f"columns.{name}: {source!r} is not among names {names}"
                   for name, source in columns.items() if names and source not in names]
    elif names:
        errors.append("names: only used with header: false (the header names the columns)")
    return errors
