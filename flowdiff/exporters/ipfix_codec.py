"""NetFlow v9 (RFC 3954) and IPFIX (RFC 7011) export packets for canonical flow records.

One fixed template: addresses, ports, protocol, TCP flags, ToS, packets, octets, start and
end times. Data records are encoded vectorised (a big-endian numpy record array), so
encoding is cheap next to sending.

Times: IPFIX carries ``flowStartMilliseconds``/``flowEndMilliseconds`` (absolute, integer
ms). NetFlow v9 carries ``FIRST_SWITCHED``/``LAST_SWITCHED`` relative to the exporter's
``sysUpTime``; the header's ``unix_secs`` is set to the packet's latest flow end (rounded up
to a second) and ``sysUpTime`` so that "boot" falls at its earliest flow start, which keeps
synthetic (even years-old) times exact and every field within 32 bits.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import pandas as pd

NETFLOW_V9, IPFIX = 9, 10

# (information element id, length in bytes, record field, numpy big-endian type)
IPFIX_FIELDS = (
    (8, 4, "srcip", ">u4"),     # sourceIPv4Address
    (12, 4, "dstip", ">u4"),    # destinationIPv4Address
    (7, 2, "srcport", ">u2"),   # sourceTransportPort
    (11, 2, "dstport", ">u2"),  # destinationTransportPort
    (4, 1, "proto", "u1"),      # protocolIdentifier
    (6, 1, "flags", "u1"),      # tcpControlBits (reduced-size encoding)
    (5, 1, "tos", "u1"),        # ipClassOfService
    (2, 8, "pkt", ">u8"),       # packetDeltaCount
    (1, 8, "byt", ">u8"),       # octetDeltaCount
    (152, 8, "start", ">u8"),   # flowStartMilliseconds
    (153, 8, "end", ">u8"),     # flowEndMilliseconds
)
NETFLOW_V9_FIELDS = IPFIX_FIELDS[:9] + (
    (22, 4, "start", ">u4"),    # FIRST_SWITCHED (ms of sysUpTime)
    (21, 4, "end", ">u4"),      # LAST_SWITCHED
)

_V9_HEADER = struct.Struct("!HHIIII")      # version, count, sysUpTime, unix_secs, sequence, source id
_IPFIX_HEADER = struct.Struct("!HHIII")    # version, length, export time, sequence, domain id
_SET_HEADER = struct.Struct("!HH")         # set/flowset id, length
V9_TEMPLATE_SET, IPFIX_TEMPLATE_SET = 0, 2


@dataclass(frozen=True)
class Layout:
    version: int
    fields: tuple
    dtype: np.dtype
    header_size: int

    @property
    def record_size(self) -> int:
        return self.dtype.itemsize


def layout(version: int) -> Layout:
    fields = IPFIX_FIELDS if version == IPFIX else NETFLOW_V9_FIELDS
    dtype = np.dtype([(name, np_type) for _, _, name, np_type in fields])
    header = _IPFIX_HEADER.size if version == IPFIX else _V9_HEADER.size
    return Layout(version, fields, dtype, header)


def template_set(lay: Layout, template_id: int) -> bytes:
    body = struct.pack("!HH", template_id, len(lay.fields)) + b"".join(
        struct.pack("!HH", ie, length) for ie, length, _, _ in lay.fields)
    set_id = IPFIX_TEMPLATE_SET if lay.version == IPFIX else V9_TEMPLATE_SET
    return _SET_HEADER.pack(set_id, _SET_HEADER.size + len(body)) + body


def flow_times_ms(batch: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of each flow in integer epoch milliseconds."""
    start = np.floor(batch["ts"].to_numpy(dtype=np.float64) * 1000.0).astype(np.int64)
    td = batch["td"].to_numpy(dtype=np.float64) if "td" in batch else np.zeros(len(batch))
    return start, start + np.round(td * 1000.0).astype(np.int64)


def encode_records(lay: Layout, batch: pd.DataFrame, start_ms: np.ndarray,
                   end_ms: np.ndarray) -> np.ndarray:
    """A record array (one row per flow) in wire byte order; times still absolute ms."""
    out = np.zeros(len(batch), dtype=lay.dtype)
    for _, _, name, _ in lay.fields:
        if name == "start":
            out[name] = start_ms if lay.version == IPFIX else 0
        elif name == "end":
            out[name] = end_ms if lay.version == IPFIX else 0
        elif name in batch:
            out[name] = batch[name].to_numpy()
    return out


def data_set(template_id: int, records: bytes) -> bytes:
    pad = (-(_SET_HEADER.size + len(records))) % 4
    return _SET_HEADER.pack(template_id, _SET_HEADER.size + len(records) + pad) + records + bytes(pad)


def message(lay: Layout, *, template: bytes | None, template_id: int, records: np.ndarray,
            start_ms: np.ndarray, end_ms: np.ndarray, sequence: int, domain_id: int,
            export_time: int) -> bytes:
    """One export packet: header, the template set when given, then one data set."""
    if lay.version == NETFLOW_V9:
        export_ms = int(-(-int(end_ms.max()) // 1000)) * 1000   # latest end, rounded up to 1 s
        boot_ms = int(start_ms.min())
        records = records.copy()
        records["start"] = start_ms - boot_ms
        records["end"] = end_ms - boot_ms
        count = len(records) + (1 if template else 0)
        header = _V9_HEADER.pack(NETFLOW_V9, count, (export_ms - boot_ms) & 0xFFFFFFFF,
                                 export_ms // 1000, sequence & 0xFFFFFFFF, domain_id)
        return header + (template or b"") + data_set(template_id, records.tobytes())
    body = (template or b"") + data_set(template_id, records.tobytes())
    return _IPFIX_HEADER.pack(IPFIX, _IPFIX_HEADER.size + len(body), export_time,
                              sequence & 0xFFFFFFFF, domain_id) + body


def records_per_packet(lay: Layout, max_packet_bytes: int, template_id: int) -> int:
    """Data records that fit one packet that also carries the template."""
    fixed = lay.header_size + len(template_set(lay, template_id)) + _SET_HEADER.size + 3
    return max(1, (max_packet_bytes - fixed) // lay.record_size)
