"""The canonical flow record: one place that defines columns, dtypes and text forms.

A flow table is a ``pandas.DataFrame`` with (a subset of) these columns, sorted by ``ts``.
Inside the table values are numeric; text forms are for the outside world (CSV, JSON).

============  ===========  ================================================================
column        dtype        meaning
============  ===========  ================================================================
ts            float64      flow start, epoch seconds (float64: float32 loses precision)
td            float64      duration, seconds (>= 0)
srcip, dstip  uint32       IPv4 address as an integer (dotted text outside)
srcport       int32        0..65535 (0 for protocols without ports)
dstport       int32        0..65535
proto         uint8        IANA protocol number (names such as ``TCP`` accepted on input)
pkt           int64        packets (>= 1)
byt           int64        bytes
flags         uint8        TCP flags bitmask, bits FIN=1 SYN=2 RST=4 PSH=8 ACK=16 URG=32
                           (text ``.AP.SF`` / UGR'16 order ``UAPRSF`` outside)
tos           uint8        IP type of service
label         object(str)  traffic label, e.g. ``background``
============  ===========  ================================================================

Required: ``ts, srcip, dstip, proto``. The others are optional: a source without them
produces a table without those columns (missing stays missing, never invented).
Generated output adds ``stream_id`` (int32) and ``seq`` (int64).
"""

from __future__ import annotations

import ipaddress

import numpy as np
import pandas as pd

COLUMNS: tuple[str, ...] = (
    "ts", "td", "srcip", "dstip", "srcport", "dstport", "proto",
    "pkt", "byt", "flags", "tos", "label",
)
REQUIRED: tuple[str, ...] = ("ts", "srcip", "dstip", "proto")
OUTPUT_COLUMNS: tuple[str, ...] = ("stream_id", "seq")

DTYPES: dict[str, str] = {
    "ts": "float64", "td": "float64",
    "srcip": "uint32", "dstip": "uint32",
    "srcport": "int32", "dstport": "int32",
    "proto": "uint8", "pkt": "int64", "byt": "int64",
    "flags": "uint8", "tos": "uint8", "label": "object",
    "stream_id": "int32", "seq": "int64",
}

PROTO_NUMBERS: dict[str, int] = {
    "HOPOPT": 0, "ICMP": 1, "IGMP": 2, "IPIP": 4, "IPV4": 4, "TCP": 6, "EGP": 8, "UDP": 17,
    "IPV6": 41, "RSVP": 46, "GRE": 47, "ESP": 50, "AH": 51, "ICMP6": 58, "IPV6-ICMP": 58,
    "ICMPV6": 58, "OSPF": 89, "PIM": 103, "SCTP": 132,
}
PROTO_NAMES: dict[int, str] = {
    0: "HOPOPT", 1: "ICMP", 2: "IGMP", 4: "IPIP", 6: "TCP", 8: "EGP", 17: "UDP", 41: "IPv6",
    46: "RSVP", 47: "GRE", 50: "ESP", 51: "AH", 58: "ICMP6", 89: "OSPF", 103: "PIM", 132: "SCTP",
}
TCP, UDP, ICMP = 6, 17, 1
PORTED_PROTOS = frozenset({TCP, UDP, 132})  # protocols whose records carry ports

# UGR'16 prints flags as 6 positions "UAPRSF"; nfdump 1.7 adds ECE/CWR as "CEUAPRSF".
# "." means unset. Text output uses 6 positions unless ECE/CWR are set.
FLAG_LETTERS = "UAPRSF"
FLAG_LETTERS_ECN = "CEUAPRSF"
FLAG_BITS = {"F": 1, "S": 2, "R": 4, "P": 8, "A": 16, "U": 32, "E": 64, "C": 128}


class SchemaError(ValueError):
    """A value that does not fit the canonical schema (message says what; ``index`` is the
    0-based position of the first offending value when known, so callers can name the line)."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


# ---------------------------------------------------------------- IPv4 text <-> uint32
def ip_to_int(values) -> np.ndarray:
    """Dotted-quad strings -> uint32 array. Raises SchemaError naming the first bad value."""
    arr = np.asarray(values, dtype=object)
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint32)
    parts = pd.Series(arr).astype(str).str.split(".", expand=True)
    ok = parts.shape[1] == 4
    if ok:
        nums = parts.apply(pd.to_numeric, errors="coerce")
        bad = nums.isna().any(axis=1) | (nums < 0).any(axis=1) | (nums > 255).any(axis=1)
        bad |= ~pd.Series(arr).astype(str).str.fullmatch(r"\d{1,3}(\.\d{1,3}){3}")
    if not ok or bad.any():
        idx = 0 if not ok else int(np.flatnonzero(bad.to_numpy())[0])
        if not ok:  # find the first value without four parts
            counts = pd.Series(arr).astype(str).str.count(r"\.")
            idx = int(np.flatnonzero((counts != 3).to_numpy())[0])
        raise SchemaError(f"invalid IPv4 address {arr[idx]!r}: expected dotted quad a.b.c.d "
                          f"with each part 0..255", idx)
    n = nums.to_numpy(dtype=np.uint64)
    return ((n[:, 0] << 24) | (n[:, 1] << 16) | (n[:, 2] << 8) | n[:, 3]).astype(np.uint32)


def int_to_ip(values) -> np.ndarray:
    """uint32 array -> array of dotted-quad strings (converts each distinct value once)."""
    v = np.asarray(values, dtype=np.uint32)
    if v.size == 0:
        return np.zeros(0, dtype=object)
    distinct, inverse = np.unique(v, return_inverse=True)
    text = np.array([str(ipaddress.IPv4Address(int(x))) for x in distinct], dtype=object)
    return text[inverse.reshape(v.shape)]


# ---------------------------------------------------------------- protocol name <-> number
def proto_to_int(values) -> np.ndarray:
    """Protocol names (``TCP``) or numbers (``6``) -> uint8 array; SchemaError on unknown."""
    s = pd.Series(np.asarray(values, dtype=object)).astype(str).str.strip()
    nums = pd.to_numeric(s, errors="coerce")
    named = s.str.upper().map(PROTO_NUMBERS)
    out = nums.where(nums.notna(), named)
    bad = out.isna() | (out < 0) | (out > 255) | (out != np.floor(out.fillna(0)))
    if bad.any():
        idx = int(np.flatnonzero(bad.to_numpy())[0])
        raise SchemaError(f"unknown protocol {s.iloc[idx]!r}: expected an IANA number 0..255 "
                          f"or one of {sorted(set(PROTO_NUMBERS))}", idx)
    return out.to_numpy().astype(np.uint8)


def proto_name(number: int) -> str:
    return PROTO_NAMES.get(int(number), str(int(number)))


# ---------------------------------------------------------------- TCP flags text <-> bits
def flags_to_int(values) -> np.ndarray:
    """``.AP.SF`` style strings, or integer bitmasks, -> uint8 bitmask array."""
    s = pd.Series(np.asarray(values, dtype=object)).astype(str).str.strip()
    out = np.zeros(len(s), dtype=np.int64)
    numeric = pd.to_numeric(s, errors="coerce")
    is_num = numeric.notna().to_numpy()
    out[is_num] = numeric[is_num].to_numpy().astype(np.int64)
    text = s[~is_num]
    if len(text):
        bad = ~text.str.fullmatch(r"[CEUAPRSF.]{1,8}")
        if bad.any():
            pos = int(np.flatnonzero(~is_num)[np.flatnonzero(bad.to_numpy())[0]])
            raise SchemaError(f"invalid TCP flags {s.iloc[pos]!r}: expected letters of "
                              f"'{FLAG_LETTERS_ECN}' with '.' for unset, or a bitmask 0..255", pos)
        bits = np.zeros(len(text), dtype=np.int64)
        for letter, bit in FLAG_BITS.items():
            bits |= np.where(text.str.contains(letter, regex=False).to_numpy(), bit, 0)
        out[~is_num] = bits
    if ((out < 0) | (out > 255)).any():
        pos = int(np.flatnonzero((out < 0) | (out > 255))[0])
        raise SchemaError(f"invalid TCP flags {s.iloc[pos]!r}: bitmask must be 0..255", pos)
    return out.astype(np.uint8)


def _flag_text(bits: int) -> str:
    letters = FLAG_LETTERS_ECN if bits & 0xC0 else FLAG_LETTERS
    return "".join(c if bits & FLAG_BITS[c] else "." for c in letters)


_FLAG_TEXT = np.array([_flag_text(b) for b in range(256)], dtype=object)


def flags_to_text(values) -> np.ndarray:
    """uint8 bitmask -> UGR'16 six-position text, e.g. 0x1B -> ``.AP.SF`` (eight positions
    ``CEUAPRSF`` when ECE/CWR are set)."""
    return _FLAG_TEXT[np.asarray(values, dtype=np.uint8)]


# ---------------------------------------------------------------- tables
def empty_table(columns=COLUMNS) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=DTYPES[c]) for c in columns})


def conform(table: pd.DataFrame) -> pd.DataFrame:
    """Cast present canonical columns to their dtypes and order them canonically.
    Unknown columns are dropped; required ones must be present."""
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise SchemaError(f"flow table lacks required column(s) {missing}")
    order = [c for c in COLUMNS + OUTPUT_COLUMNS if c in table.columns]
    return table[order].astype({c: DTYPES[c] for c in order})


def to_text(table: pd.DataFrame) -> pd.DataFrame:
    """A copy with the outside text forms: dotted IPs, flags as ``.AP.SF``."""
    out = table.copy()
    for c in ("srcip", "dstip"):
        if c in out:
            out[c] = int_to_ip(out[c].to_numpy())
    if "flags" in out:
        out["flags"] = flags_to_text(out["flags"].to_numpy())
    return out


def to_json_records(table: pd.DataFrame) -> list[dict]:
    """Records as plain dicts (text IPs/flags, numbers as Python numbers) for JSON sinks."""
    return to_text(table).to_dict(orient="records")
