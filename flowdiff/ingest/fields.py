"""Vectorised parsers from file columns to canonical values, with every problem as a mask.

A parser takes one column of a chunk (a pandas Series: text from CSV, or typed from
Parquet) and returns :class:`Parsed`: the values (numpy, canonical dtype) and a list of
:class:`Issue` — a boolean row mask, a short reason for the skip counts and a function that
words the problem for one row. Nothing here raises on bad data and nothing loops over rows:
text is checked with pyarrow's RE2 regexes and casts, categorical fields (protocol, flags)
by validating their few distinct values with the ``flowdiff.schema`` helpers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from flowdiff import schema

INT_TEXT = r"^[+-]?\d{1,18}(\.0*)?$"                      # 12, -3, 12.0 (integral)
REAL_TEXT = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d{1,3})?$"  # 1, 1.5, .5, 1e9
DOTTED_TEXT = r"^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$"
UINT32_TEXT = r"^\d{1,10}$"
UINT32_MAX = 2**32 - 1
NFDUMP_FLAGS = re.compile(r"[C.][E.][UAPRSF.]{6}")
EPOCH = pd.Timestamp(0, tz="UTC")


@dataclass
class Issue:
    mask: np.ndarray                   # (n,) bool: rows with this problem
    reason: str                        # short, for skip counts: "out of range"
    describe: Callable[[int], str]     # row position -> full wording of the problem


@dataclass
class Parsed:
    values: np.ndarray                 # (n,) canonical values (junk where an issue is set)
    issues: list[Issue] = field(default_factory=list)


Parser = Callable[[pd.Series], Parsed]


# ---------------------------------------------------------------- helpers
def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(
        series.dtype)


def _text(series: pd.Series) -> pa.Array:
    """The column as a pyarrow string array, whitespace trimmed, empty text as null."""
    if not isinstance(series.dtype, pd.StringDtype):
        series = series.astype("str")
    arr = pc.utf8_trim_whitespace(pa.array(series, type=pa.large_string()))
    return pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.large_string()), arr)


def _matches(text: pa.Array, pattern: str) -> np.ndarray:
    return pc.fill_null(pc.match_substring_regex(text, pattern), False).to_numpy(
        zero_copy_only=False)


def _missing(text: pa.Array) -> np.ndarray:
    return pc.is_null(text).to_numpy(zero_copy_only=False)


def _raw(series: pd.Series, row: int) -> str:
    """The value as it stood in the file, quoted (numbers parsed natively included)."""
    value = series.iloc[row]
    return "(empty)" if pd.isna(value) else repr(str(value))


def _missing_issue(mask: np.ndarray) -> Issue:
    return Issue(mask, "missing value", lambda row: "missing value (empty)")


def _bad_issue(series: pd.Series, mask: np.ndarray, reason: str, expected: str) -> Issue:
    return Issue(mask, reason, lambda row: f"{_raw(series, row)} {reason}: expected {expected}")


def _range_issue(series: pd.Series, mask: np.ndarray, what: str, lo, hi) -> Issue:
    return Issue(mask, "out of range",
                 lambda row: f"{what} {series.iloc[row]} out of range {lo}..{hi}")


def _finish(parsed: Parsed) -> Parsed:
    parsed.issues = [i for i in parsed.issues if i.mask.any()]
    return parsed


# ---------------------------------------------------------------- numbers
def integer(what: str, lo: int, hi: int) -> Parser:
    """Integers lo..hi (``12`` or integral ``12.0``); anything else is a problem."""

    def parse(series: pd.Series) -> Parsed:
        if _is_numeric(series):
            raw = series.to_numpy(dtype=np.float64, na_value=np.nan)
            missing = series.isna().to_numpy()
            finite = np.isfinite(raw)
            bad = ~missing & (~finite | (raw != np.floor(np.where(finite, raw, 0))))
            values = np.where(missing | bad, 0, raw).astype(np.int64)
        else:
            text = _text(series)
            missing = _missing(text)
            ok = _matches(text, INT_TEXT)
            bad = ~missing & ~ok
            cleaned = pc.replace_substring_regex(                # "+12.0" -> "12"
                pc.if_else(pa.array(ok), text, "0"), r"^\+|\.0*$", "")
            values = pc.cast(cleaned, pa.int64()).to_numpy(zero_copy_only=False)
        out_of_range = ~missing & ~bad & ((values < lo) | (values > hi))
        return _finish(Parsed(values, [
            _missing_issue(missing),
            _bad_issue(series, bad, "is not an integer", f"an integer {what} {lo}..{hi}"),
            _range_issue(series, out_of_range, what, lo, hi)]))

    return parse


def real(what: str, lo: float, hi: float = np.inf, divisor: float = 1.0) -> Parser:
    """Finite decimal numbers, divided by ``divisor`` (unit -> seconds), checked lo..hi."""

    def parse(series: pd.Series) -> Parsed:
        if _is_numeric(series):
            values = series.to_numpy(dtype=np.float64, na_value=np.nan)
            missing = series.isna().to_numpy()
            bad = ~missing & ~np.isfinite(values)
        else:
            text = _text(series)
            missing = _missing(text)
            ok = _matches(text, REAL_TEXT)
            bad = ~missing & ~ok
            cleaned = pc.replace_substring_regex(pc.if_else(pa.array(ok), text, "0"),
                                                 r"^\+", "")
            values = pc.cast(cleaned, pa.float64()).to_numpy(zero_copy_only=False)
            bad |= ~missing & ~np.isfinite(values)
        values = np.where(missing | bad, 0.0, values)
        if divisor != 1.0:
            values = values / divisor
        out_of_range = ~missing & ~bad & ((values < lo) | (values > hi))
        bounds = f"{lo}..{hi}" if np.isfinite(hi) else f">= {lo}"
        return _finish(Parsed(values, [
            _missing_issue(missing),
            _bad_issue(series, bad, "is not a number", f"a finite decimal number {bounds}"),
            Issue(out_of_range, "out of range",
                  lambda row: f"{what} {series.iloc[row]} out of range {bounds}")]))

    return parse


def datetime_text(fmt: str) -> Parser:
    """Calendar times in ``fmt`` (no zone means UTC) -> epoch seconds (float64)."""

    def parse(series: pd.Series) -> Parsed:
        missing = series.isna().to_numpy()
        stamps = pd.to_datetime(series, format=fmt, errors="coerce", utc=True)
        bad = ~missing & stamps.isna().to_numpy()
        micros = (stamps - EPOCH) / pd.Timedelta(microseconds=1)     # float, NaN for bad
        values = np.where(missing | bad, 0.0, micros.to_numpy(dtype=np.float64,
                                                                na_value=np.nan)) / 1e6
        return _finish(Parsed(values, [
            _missing_issue(missing),
            _bad_issue(series, bad, "is not a time",
                       f"a time formatted {fmt!r} (e.g. 2016-04-11 00:01:38)")]))

    return parse


# ---------------------------------------------------------------- addresses
def ipv4(allow_integer: bool) -> Parser:
    """Dotted quads (and, if allowed, integers 0..2**32-1) -> uint32."""
    expected = "a dotted-quad IPv4 address a.b.c.d with parts 0..255"
    if allow_integer:
        expected += f" or an integer 0..{UINT32_MAX}"

    def parse(series: pd.Series) -> Parsed:
        if _is_numeric(series):
            raw = series.to_numpy(dtype=np.float64, na_value=np.nan)
            missing = series.isna().to_numpy()
            finite = np.isfinite(raw)
            bad = ~missing & (~finite | (raw != np.floor(np.where(finite, raw, 0)))
                              | (raw < 0) | (raw > UINT32_MAX) | (not allow_integer))
            values = np.where(missing | bad, 0, raw).astype(np.uint32)
            return _finish(Parsed(values, [
                _missing_issue(missing),
                _bad_issue(series, bad, "is not an IPv4 address", expected)]))
        text = _text(series)
        missing = _missing(text)
        dotted = _matches(text, DOTTED_TEXT)
        parts = pc.split_pattern(pc.if_else(pa.array(dotted), text, "0.0.0.0"), ".")
        octets = pc.cast(pc.list_flatten(parts), pa.uint32()).to_numpy(
            zero_copy_only=False).reshape(-1, 4)                           # (n, 4)
        bad = dotted & (octets > 255).any(axis=1)
        values = ((octets[:, 0] << 24) | (octets[:, 1] << 16) | (octets[:, 2] << 8)
                  | octets[:, 3]).astype(np.uint64)
        known = dotted
        if allow_integer:
            whole = _matches(text, UINT32_TEXT)
            numbers = pc.cast(pc.if_else(pa.array(whole), text, "0"), pa.uint64()).to_numpy(
                zero_copy_only=False)
            bad |= whole & (numbers > UINT32_MAX)
            values = np.where(whole, numbers, values)
            known = dotted | whole
        bad |= ~missing & ~known
        values = np.where(bad, 0, values).astype(np.uint32)
        return _finish(Parsed(values, [
            _missing_issue(missing),
            _bad_issue(series, bad, "is not an IPv4 address", expected)]))

    return parse


# ---------------------------------------------------------------- categorical fields
def _by_distinct(convert: Callable[[np.ndarray], np.ndarray], dtype) -> Parser:
    """Validate the distinct values of a column with a schema helper, then map back."""

    def parse(series: pd.Series) -> Parsed:
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        distinct = np.asarray(uniques, dtype=object)
        converted = np.zeros(len(distinct), dtype=dtype)
        messages: dict[int, str] = {}
        try:
            converted[:] = convert(distinct)
        except schema.SchemaError:
            for k, value in enumerate(distinct):  # few distinct values: find every bad one
                try:
                    converted[k] = convert(np.array([value], dtype=object))[0]
                except schema.SchemaError as exc:
                    messages[k] = str(exc)
        missing = codes < 0
        bad_distinct = np.zeros(len(distinct) + 1, dtype=bool)
        bad_distinct[list(messages)] = True
        bad = bad_distinct[codes]                   # code -1 indexes the trailing False
        values = np.where(missing | bad, 0, converted[np.where(missing, 0, codes)]
                          if len(distinct) else 0).astype(dtype)
        return _finish(Parsed(values, [
            _missing_issue(missing),
            Issue(bad, "invalid value", lambda row: messages[int(codes[row])])]))

    return parse


def _text_values(values: np.ndarray) -> np.ndarray:
    # integral floats from typed files (6.0) must read as their integer text (6)
    return np.array([str(int(v)) if isinstance(v, float) and v.is_integer() else v
                     for v in values], dtype=object)


def protocol() -> Parser:
    """Protocol names (TCP) or IANA numbers -> uint8."""
    return _by_distinct(lambda v: schema.proto_to_int(_text_values(v)), np.uint8)


def _without_ecn(values: np.ndarray) -> np.ndarray:
    """nfdump 1.7 prints 8 positions ``CEUAPRSF``; CWR and ECE have no canonical bit."""
    return np.array([v[2:] if isinstance(v, str) and NFDUMP_FLAGS.fullmatch(v) else v
                     for v in values], dtype=object)


def tcp_flags() -> Parser:
    """Flags as ``.AP.SF`` text (or nfdump's ``CEUAPRSF``) or a bitmask 0..255 -> uint8."""
    return _by_distinct(lambda v: schema.flags_to_int(_without_ecn(_text_values(v))),
                        np.uint8)


def label() -> Parser:
    """Free text labels (trimmed); only a missing value is a problem. Rows share one string
    object per distinct label (few distinct values, many rows)."""

    def parse(series: pd.Series) -> Parsed:
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        distinct = np.array([str(v).strip() for v in np.asarray(uniques, dtype=object)]
                            + [""], dtype=object)           # trailing "" for code -1
        values = distinct[codes]
        missing = values == ""
        return _finish(Parsed(values, [_missing_issue(missing)]))

    return parse
