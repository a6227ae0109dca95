"""Domain-validity check: the fraction of records that break a rule of real traffic.

Rules (a record violates the check if it breaks any of them):

* ``bpp_bounds``   byt / pkt within [min_bpp, max_bpp] (an IPv4 header is 20 bytes; the
                   Ethernet MTU caps a packet at 1500 bytes unless configured otherwise).
* ``pkt_min``      pkt >= 1.
* ``td_nonneg``    td >= 0.
* ``flags_tcp``    TCP flag bits only on TCP records. Some exporters (nfdump, hence UGR'16)
                   write one fixed filler value on every non-TCP record (ACK, ``.A....``);
                   the filler value is taken from the reference trace, so a non-TCP record
                   may carry 0 or that value and nothing else.
* ``icmp_ports``   ICMP records have srcport 0 and dstport either 0 or the NetFlow encoding
                   ``type * 256 + code`` with an assigned ICMP type (0..43).
* ``time_order``   start times do not decrease from one record to the next (the first
                   record cannot violate it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from flowdiff.eval import fields
from flowdiff.schema import ICMP, TCP

MAX_ICMP_TYPE = 43


@dataclass(frozen=True)
class ValidityConfig:
    min_bpp: float = 20.0
    max_bpp: float = 1500.0


def non_tcp_flag_filler(reference: pd.DataFrame) -> int:
    """The flags value the reference trace writes on non-TCP records (0 if none/absent)."""
    if not fields.has(reference, "flags"):
        return 0
    flags = reference.loc[reference["proto"].to_numpy() != TCP, "flags"].to_numpy(np.int64)
    if len(flags) == 0:
        return 0
    return int(np.bincount(flags, minlength=256).argmax())


def rule_violations(table: pd.DataFrame, flag_filler: int = 0,
                    config: ValidityConfig = ValidityConfig()) -> dict[str, np.ndarray]:
    """Boolean (n,) mask per rule that applies to the table's columns; True = violated."""
    n = len(table)
    proto = table["proto"].to_numpy(np.int64)
    rules: dict[str, np.ndarray] = {}
    if fields.has(table, "byt", "pkt"):
        bpp = fields.bytes_per_packet(table)
        rules["bpp_bounds"] = (bpp < config.min_bpp) | (bpp > config.max_bpp)
    if fields.has(table, "pkt"):
        rules["pkt_min"] = table["pkt"].to_numpy(float) < 1
    if fields.has(table, "td"):
        rules["td_nonneg"] = table["td"].to_numpy(float) < 0
    if fields.has(table, "flags"):
        flags = table["flags"].to_numpy(np.int64)
        rules["flags_tcp"] = (proto != TCP) & (flags != 0) & (flags != flag_filler)
    if fields.has(table, "srcport", "dstport"):
        icmp = proto == ICMP
        dport = table["dstport"].to_numpy(np.int64)
        bad_type = (dport != 0) & ((dport >> 8) > MAX_ICMP_TYPE)
        rules["icmp_ports"] = icmp & ((table["srcport"].to_numpy(np.int64) != 0) | bad_type)
    order = np.zeros(n, dtype=bool)
    order[1:] = np.diff(table["ts"].to_numpy(float)) < 0
    rules["time_order"] = order
    return rules


def validity_metrics(table: pd.DataFrame, flag_filler: int = 0,
                     config: ValidityConfig = ValidityConfig()) -> dict:
    """Violation fraction overall (any rule) and per rule."""
    rules = rule_violations(table, flag_filler, config)
    any_rule = np.logical_or.reduce(list(rules.values()))
    return {"violation_fraction": float(any_rule.mean()),
            "rules": {name: float(mask.mean()) for name, mask in rules.items()}}
