"""Domain rules every decoded record must satisfy, and the repairs that enforce them.

Rules (each repair is counted under its name):

- ``pkt_below_1``: ``pkt >= 1``.
- ``byt_below_20_per_pkt`` / ``byt_above_65535_per_pkt``: an IPv4 packet has 20..65535
  bytes, so ``20 * pkt <= byt <= 65535 * pkt``.
- ``bytes_per_packet_outside_training``: ``byt / pkt`` within the range seen in training
  (UGR'16: no flow averages more than an Ethernet MTU per packet). A model that generates
  ``pkt`` and ``byt`` a little apart otherwise gives flows of impossible packet sizes for
  the network it learned; ``byt`` is clamped into ``[low * pkt, high * pkt]``.
- ``ports_on_portless_proto``: protocols without ports (anything but TCP, UDP, SCTP) may
  only carry the port values seen with that protocol in training, by default only 0.
  Real collectors put other things there: nfdump/UGR'16 stores ICMP ``type << 8 | code``
  in ``dstport`` (e.g. 771 = port unreachable) and keeps ``srcport`` 0, and UGR'16 ESP
  records carry values in both. A value outside the allowed set becomes the protocol's
  most frequent allowed value.
- ``tcp_flags_on_non_tcp``: non-TCP records may only carry the flag masks seen with that
  protocol in training, by default only 0 (nfdump marks every non-TCP flow ``.A....``,
  which UGR'16 shows on 99.99 % of its UDP records); otherwise the most frequent allowed
  mask.

Deriving the allowed sets from the training data keeps the round trip exact on training
data while still rejecting what the collector never produces.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from flowdiff.schema import PORTED_PROTOS, TCP

MIN_IPV4_PACKET, MAX_IPV4_PACKET = 20, 65535


def _by_frequency(values: np.ndarray) -> list[int]:
    counts = pd.Series(values).value_counts(sort=False)
    return [int(v) for v, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


class ProtocolProfile:
    """Allowed port values and flag masks per protocol, learned from training records."""

    def __init__(self, ports: dict[str, dict[int, list[int]]], flags: dict[int, list[int]],
                 bytes_per_packet: tuple[float, float] = (MIN_IPV4_PACKET, MAX_IPV4_PACKET)):
        self.ports = ports    # port field -> protocol -> allowed values, most frequent first
        self.flags = flags    # non-TCP protocol -> allowed flag masks, most frequent first
        self.bytes_per_packet = (float(bytes_per_packet[0]), float(bytes_per_packet[1]))

    @classmethod
    def fit(cls, table: pd.DataFrame) -> "ProtocolProfile":
        proto = table["proto"].to_numpy()
        ports: dict[str, dict[int, list[int]]] = {}
        for field in ("srcport", "dstport"):
            if field in table:
                values = table[field].to_numpy()
                ports[field] = {int(p): _by_frequency(values[proto == p])
                                for p in np.unique(proto) if int(p) not in PORTED_PROTOS}
        flags: dict[int, list[int]] = {}
        if "flags" in table:
            values = table["flags"].to_numpy()
            flags = {int(p): _by_frequency(values[proto == p])
                     for p in np.unique(proto) if int(p) != TCP}
        bounds = (MIN_IPV4_PACKET, MAX_IPV4_PACKET)
        if "pkt" in table and "byt" in table:
            pkt = table["pkt"].to_numpy(np.float64)
            bpp = table["byt"].to_numpy(np.float64)[pkt >= 1] / pkt[pkt >= 1]
            if bpp.size:
                bounds = (max(float(bpp.min()), MIN_IPV4_PACKET),
                          min(float(bpp.max()), MAX_IPV4_PACKET))
        return cls(ports, flags, bounds)

    def state(self) -> dict:
        return {"ports": {f: {str(p): v for p, v in per.items()} for f, per in self.ports.items()},
                "flags": {str(p): v for p, v in self.flags.items()},
                "bytes_per_packet": list(self.bytes_per_packet)}

    @classmethod
    def from_state(cls, state: dict) -> "ProtocolProfile":
        ports = {f: {int(p): list(v) for p, v in per.items()}
                 for f, per in state["ports"].items()}
        bounds = state.get("bytes_per_packet", (MIN_IPV4_PACKET, MAX_IPV4_PACKET))  # 0.1: none
        return cls(ports, {int(p): list(v) for p, v in state["flags"].items()}, tuple(bounds))

    def repair(self, columns: dict[str, np.ndarray]) -> dict[str, int]:
        """Enforce the rules in place on decoded ``columns``; return counts per rule."""
        repairs: dict[str, int] = {}
        if "pkt" in columns:
            pkt = columns["pkt"]
            low = pkt < 1
            repairs["pkt_below_1"] = int(low.sum())
            pkt[low] = 1
            if "byt" in columns:
                byt = columns["byt"]
                too_few, too_many = byt < MIN_IPV4_PACKET * pkt, byt > MAX_IPV4_PACKET * pkt
                repairs["byt_below_20_per_pkt"] = int(too_few.sum())
                repairs["byt_above_65535_per_pkt"] = int(too_many.sum())
                byt[:] = np.clip(byt, MIN_IPV4_PACKET * pkt, MAX_IPV4_PACKET * pkt)
                repairs["bytes_per_packet_outside_training"] = self._clamp_bpp(byt, pkt)
        proto = columns["proto"]
        fixed_ports = sum(self._restrict(columns[field], proto, self.ports.get(field, {}),
                                         PORTED_PROTOS)
                          for field in ("srcport", "dstport") if field in columns)
        if any(f in columns for f in ("srcport", "dstport")):
            repairs["ports_on_portless_proto"] = int(fixed_ports)
        if "flags" in columns:
            repairs["tcp_flags_on_non_tcp"] = self._restrict(columns["flags"], proto, self.flags,
                                                            frozenset({TCP}))
        return repairs

    def _clamp_bpp(self, byt: np.ndarray, pkt: np.ndarray) -> int:
        """Clamp ``byt`` in place into the training range of bytes per packet; the bounds
        are widened by float noise so that training records stay exactly as they are."""
        low, high = self.bytes_per_packet
        lowest = np.ceil(low * pkt * (1 - 1e-12))                           # (n,)
        highest = np.floor(high * pkt * (1 + 1e-12))                        # (n,)
        outside = (byt < lowest) | (byt > highest)
        byt[:] = np.clip(byt, lowest, highest).astype(byt.dtype)
        return int(outside.sum())

    @staticmethod
    def _restrict(values: np.ndarray, proto: np.ndarray, allowed: dict[int, list[int]],
                  unrestricted: frozenset[int]) -> int:
        """Values of restricted protocols outside their allowed set -> the most frequent
        allowed one. ``allowed`` lists the restricted protocols seen in training; a
        restricted protocol never seen (possible when proto is bit-encoded) allows only 0."""
        fixed = 0
        for p in np.unique(proto):
            p = int(p)
            if p in unrestricted:
                continue
            permitted = allowed.get(p, [0])
            rows = np.flatnonzero(proto == p)
            bad = rows[~np.isin(values[rows], permitted)]
            values[bad] = permitted[0]
            fixed += len(bad)
        return fixed
