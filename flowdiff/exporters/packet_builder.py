"""Flow record -> packet train (Ethernet/IPv4 frames), built with ``struct`` for speed.

A record's ``pkt`` packets all travel src -> dst (NetFlow records are unidirectional) and
their IP total lengths sum to ``byt``; they are spread evenly over ``[ts, ts + td]``.

* TCP: the OR of the packets' flags equals the record's flags. SYN set: the first packet is
  the SYN; with ACK also set the handshake completes — the reply SYN-ACK (one extra packet,
  dst -> src, not counted in the record) follows it and the later packets acknowledge it.
  SYN without ACK: every packet is a SYN (retransmissions, no reply). FIN / RST: the last
  packet (FIN before RST when both). The others carry ACK (and PSH/URG when set) and the
  payload, split evenly; SYN and RST packets carry payload only when the others cannot hold
  it all within the MTU.
* UDP: ``pkt`` datagrams. ICMP: ``pkt`` echo requests (identifier from ``srcport``).
* Other protocols are not turned into packets (counted as ``skipped``).

Payload bytes are zeros, so checksums need only the headers (zeros add nothing to a
ones'-complement sum): each checksum is a handful of integer additions. When ``byt`` cannot
be met (fewer than a header's worth per packet, or more than ``mtu`` per packet) packets
are clamped to the smallest/largest size and the record is counted as ``adjusted``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

FIN, SYN, RST, PSH, ACK, URG = 1, 2, 4, 8, 16, 32
TCP, UDP, ICMP = 6, 17, 1
IP_HEADER, TCP_HEADER, UDP_HEADER, ICMP_HEADER = 20, 20, 8, 8
ETHERTYPE_IPV4 = 0x0800
TTL = 64
WINDOW = 64240

_ETH = struct.Struct("!6s6sH")
_IP = struct.Struct("!BBHHHBBHII")
_TCP = struct.Struct("!HHIIHHHH")
_UDP = struct.Struct("!HHHH")
_ICMP = struct.Struct("!BBHHH")


def mac_bytes(text: str) -> bytes:
    """``02:00:00:00:00:01`` -> 6 bytes; ValueError naming the value otherwise."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"invalid MAC address {text!r}: expected six hex pairs like 02:00:00:00:00:01")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"invalid MAC address {text!r}: expected hex digits") from None


def _fold(total: int) -> int:
    """Ones'-complement checksum from a sum of 16-bit words."""
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _addr_words(addr: int) -> int:
    return (addr >> 16) + (addr & 0xFFFF)


@dataclass
class BuildStats:
    records: int = 0
    packets: int = 0
    skipped: int = 0    # records of protocols without a packet form here
    adjusted: int = 0   # records whose byte count could not be met exactly


@dataclass
class PacketBuilder:
    """Turns records into frames. ``seed`` drives the TCP initial sequence numbers and IP
    identifiers (reproducible output)."""

    src_mac: bytes
    dst_mac: bytes
    mtu: int = 1500
    seed: int = 0
    stats: BuildStats = field(default_factory=BuildStats)

    def __post_init__(self):
        self._rng = np.random.default_rng(self.seed)
        self._zeros = bytes(self.mtu)
        self._eth_fwd = _ETH.pack(self.dst_mac, self.src_mac, ETHERTYPE_IPV4)
        self._eth_rev = _ETH.pack(self.src_mac, self.dst_mac, ETHERTYPE_IPV4)

    # ------------------------------------------------------------- headers
    def _ip(self, src: int, dst: int, proto: int, tos: int, total: int, ident: int) -> bytes:
        words = ((0x45 << 8) | tos) + total + ident + 0x4000 + ((TTL << 8) | proto) \
            + _addr_words(src) + _addr_words(dst)
        return _IP.pack(0x45, tos, total, ident, 0x4000, TTL, proto, _fold(words), src, dst)

    def _tcp(self, src, dst, sport, dport, seq, ack, flags, payload) -> bytes:
        length = TCP_HEADER + payload
        words = _addr_words(src) + _addr_words(dst) + TCP + length + sport + dport \
            + (seq >> 16) + (seq & 0xFFFF) + (ack >> 16) + (ack & 0xFFFF) \
            + ((5 << 12) | flags) + WINDOW
        return _TCP.pack(sport, dport, seq, ack, (5 << 12) | flags, WINDOW, _fold(words), 0)

    def _udp(self, src, dst, sport, dport, payload) -> bytes:
        length = UDP_HEADER + payload
        words = _addr_words(src) + _addr_words(dst) + UDP + length + sport + dport + length
        return _UDP.pack(sport, dport, length, _fold(words) or 0xFFFF)

    def _icmp(self, ident, seq) -> bytes:
        return _ICMP.pack(8, 0, _fold((8 << 8) + ident + seq), ident, seq)

    # ------------------------------------------------------------- sizes and times
    def _payloads(self, n: int, header: int, byt: int, capable: list[bool]) -> list[int]:
        """Payload per packet so that sum(header + payload) == byt where possible."""
        payload = byt - n * header
        room = self.mtu - header
        slots = [i for i in range(n) if capable[i]]
        if payload > room * len(slots):  # too much for the data packets: SYN/RST carry some
            slots = list(range(n))
        sizes = [0] * n
        if payload <= 0 or room <= 0:
            if payload < 0:
                self.stats.adjusted += 1
            return sizes
        if payload > room * len(slots):
            self.stats.adjusted += 1
            payload = room * len(slots)
        each, extra = divmod(payload, len(slots))
        for k, i in enumerate(slots):
            sizes[i] = each + (1 if k < extra else 0)
        return sizes

    @staticmethod
    def _times(ts: float, td: float, n: int) -> list[float]:
        if n == 1 or td <= 0:
            return [ts] * n
        step = td / (n - 1)
        return [ts + i * step for i in range(n)]

    # ------------------------------------------------------------- per protocol
    def _tcp_train(self, r, out: list) -> None:
        n, flags = r["pkt"], r["flags"]
        syn, ack = bool(flags & SYN), bool(flags & ACK)
        data_flags = (ACK if ack else 0) | (flags & (PSH | URG))
        pkt_flags = [data_flags] * n
        if syn and not ack:
            pkt_flags = [SYN | (flags & (PSH | URG))] * n
        elif syn:
            pkt_flags[0] = SYN
        last = n - 1
        if flags & RST and last >= (1 if syn else 0):
            pkt_flags[last] = RST | (ACK if ack and not (syn and not ack) else 0)
            last -= 1
        if flags & FIN and last >= (1 if syn else 0):
            pkt_flags[last] = FIN | (ACK if ack else 0) | (flags & PSH)
        if n == 1:
            pkt_flags[0] = flags  # a single packet carries every flag of the record
        capable = [not (f & (SYN | RST)) for f in pkt_flags]
        sizes = self._payloads(n, IP_HEADER + TCP_HEADER, r["byt"], capable)
        times = self._times(r["ts"], r["td"], n)
        src, dst, sport, dport, tos = r["srcip"], r["dstip"], r["srcport"], r["dstport"], r["tos"]
        isn, server_isn, ident = (int(x) for x in self._rng.integers(0, 2**32, size=3))
        ident &= 0xFFFF
        handshake = syn and ack and n >= 2 and pkt_flags[0] == SYN
        ack_no = (server_isn + 1) & 0xFFFFFFFF
        seq = isn
        for i in range(n):
            f, size = pkt_flags[i], sizes[i]
            this_seq = isn if f & SYN else seq
            frame = (self._eth_fwd + self._ip(src, dst, TCP, tos, IP_HEADER + TCP_HEADER + size,
                                              (ident + i) & 0xFFFF)
                     + self._tcp(src, dst, sport, dport, this_seq, ack_no if f & ACK else 0, f, size)
                     + self._zeros[:size])
            out.append((times[i], frame))
            if f & SYN:
                seq = (isn + 1 + size) & 0xFFFFFFFF
            else:
                seq = (seq + size + (1 if f & FIN else 0)) & 0xFFFFFFFF
            if i == 0 and handshake:  # the reply, halfway to the next packet
                reply = SYN | ACK
                frame = (self._eth_rev + self._ip(dst, src, TCP, tos, IP_HEADER + TCP_HEADER, 0)
                         + self._tcp(dst, src, dport, sport, server_isn, (isn + 1 + size) & 0xFFFFFFFF,
                                     reply, 0))
                out.append((times[0] + (times[1] - times[0]) / 2, frame))

    def _udp_train(self, r, out: list) -> None:
        n = r["pkt"]
        sizes = self._payloads(n, IP_HEADER + UDP_HEADER, r["byt"], [True] * n)
        ident = int(self._rng.integers(0, 2**16))
        src, dst, sport, dport, tos = r["srcip"], r["dstip"], r["srcport"], r["dstport"], r["tos"]
        for i, t in enumerate(self._times(r["ts"], r["td"], n)):
            size = sizes[i]
            frame = (self._eth_fwd + self._ip(src, dst, UDP, tos, IP_HEADER + UDP_HEADER + size,
                                              (ident + i) & 0xFFFF)
                     + self._udp(src, dst, sport, dport, size) + self._zeros[:size])
            out.append((t, frame))

    def _icmp_train(self, r, out: list) -> None:
        n = r["pkt"]
        sizes = self._payloads(n, IP_HEADER + ICMP_HEADER, r["byt"], [True] * n)
        ident = int(self._rng.integers(0, 2**16))
        echo_id = r["srcport"] & 0xFFFF
        src, dst, tos = r["srcip"], r["dstip"], r["tos"]
        for i, t in enumerate(self._times(r["ts"], r["td"], n)):
            size = sizes[i]
            frame = (self._eth_fwd + self._ip(src, dst, ICMP, tos, IP_HEADER + ICMP_HEADER + size,
                                              (ident + i) & 0xFFFF)
                     + self._icmp(echo_id, (i + 1) & 0xFFFF) + self._zeros[:size])
            out.append((t, frame))

    # ------------------------------------------------------------- batches
    def build(self, batch: pd.DataFrame) -> list[tuple[float, bytes]]:
        """Frames of every record in ``batch``, ordered by time (stable: a record's own
        packets keep their order at equal times). Returns ``(time, frame)`` pairs."""
        n = len(batch)
        columns = {
            "ts": batch["ts"].to_numpy(dtype=np.float64),
            "td": batch["td"].to_numpy(dtype=np.float64) if "td" in batch else np.zeros(n),
            "srcip": batch["srcip"].to_numpy(dtype=np.int64),
            "dstip": batch["dstip"].to_numpy(dtype=np.int64),
            "srcport": _ints(batch, "srcport", 0), "dstport": _ints(batch, "dstport", 0),
            "proto": _ints(batch, "proto", 0),
            "pkt": np.maximum(_ints(batch, "pkt", 1), 1),
            "byt": _ints(batch, "byt", 0), "flags": _ints(batch, "flags", 0),
            "tos": _ints(batch, "tos", 0),
        }
        rows = [dict(zip(columns, values)) for values in zip(*(c.tolist() for c in columns.values()))]
        out: list[tuple[float, bytes]] = []
        trains = {TCP: self._tcp_train, UDP: self._udp_train, ICMP: self._icmp_train}
        for r in rows:
            train = trains.get(r["proto"])
            if train is None:
                self.stats.skipped += 1
                continue
            before = len(out)
            train(r, out)
            self.stats.records += 1
            self.stats.packets += len(out) - before
        out.sort(key=lambda p: p[0])  # list.sort is stable
        return out


def _ints(batch: pd.DataFrame, name: str, fill: int) -> np.ndarray:
    return batch[name].to_numpy(dtype=np.int64) if name in batch else np.full(len(batch), fill)
