"""Packets out of pcap and pcapng files (container formats only; no protocol decoding).

Written against the file formats directly so that every truncation or corruption is
reported with the packet number and byte offset, instead of ending the iteration quietly."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from flowdiff.ingest.errors import IngestError

PCAP_MAGICS = {  # magic as read little-endian -> (byte order, ticks per second)
    0xA1B2C3D4: ("<", 1_000_000), 0xD4C3B2A1: (">", 1_000_000),
    0xA1B23C4D: ("<", 1_000_000_000), 0x4D3CB2A1: (">", 1_000_000_000),
}
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BYTE_ORDER = 0x1A2B3C4D
PCAPNG_IDB, PCAPNG_PB, PCAPNG_SPB, PCAPNG_EPB = 1, 2, 3, 6
IF_TSRESOL = 9


@dataclass
class Packet:
    number: int       # 1-based position among the packets of the file
    ts: float         # epoch seconds
    data: bytes       # captured bytes, starting at the link layer
    linktype: int     # LINKTYPE_* of the interface (1 Ethernet, 101 raw IP, ...)


class TruncatedCapture(IngestError):
    """The file ends inside a packet record (a capture cut short)."""


def is_capture(head: bytes) -> bool:
    if len(head) < 4:
        return False
    magic = struct.unpack("<I", head[:4])[0]
    return magic in PCAP_MAGICS or magic == PCAPNG_SHB


def read_packets(path: Path) -> Iterator[Packet]:
    with open(path, "rb") as f:
        head = f.read(4)
        if len(head) < 4:
            raise IngestError(path, 1, None, "file is empty or shorter than a capture "
                                                "header: expected a pcap or pcapng file")
        magic = struct.unpack("<I", head)[0]
        if magic == PCAPNG_SHB:
            yield from _pcapng(path, f)
        elif magic in PCAP_MAGICS:
            yield from _pcap(path, f, *PCAP_MAGICS[magic])
        else:
            raise IngestError(path, None, None, f"not a capture file: magic {head.hex()} is "
                                                "neither pcap nor pcapng")


def _read_exact(path: Path, f: BinaryIO, size: int, number: int, what: str) -> bytes:
    """``size`` bytes, or TruncatedCapture saying that ``what`` is cut short."""
    data = f.read(size)
    if len(data) < size:
        raise TruncatedCapture(path, number, None,
                               f"truncated capture: {what} is cut short, the file ends "
                               f"{size - len(data)} bytes too early", where="packet")
    return data


def _pcap(path: Path, f: BinaryIO, order: str, ticks: int) -> Iterator[Packet]:
    header = _read_exact(path, f, 20, 0, "the pcap file header")
    linktype = struct.unpack(order + "I", header[16:20])[0] & 0x0FFFFFFF
    record = struct.Struct(order + "IIII")
    number = 0
    while True:
        number += 1
        first = f.read(1)
        if not first:
            return
        f.seek(-1, 1)
        offset = f.tell()
        sec, frac, caplen, _origlen = record.unpack(_read_exact(
            path, f, 16, number, f"the packet record at byte offset {offset}"))
        data = _read_exact(path, f, caplen, number,
                           f"the packet record at byte offset {offset} ({caplen} bytes)")
        yield Packet(number, sec + frac / ticks, data, linktype)


def _pcapng(path: Path, f: BinaryIO) -> Iterator[Packet]:
    order = "<"
    interfaces: list[tuple[int, float]] = []     # (linktype, ticks per second)
    number = 0
    f.seek(0)
    while True:
        offset = f.tell()
        head = f.read(8)
        if not head:
            return
        if len(head) < 8:
            raise TruncatedCapture(path, number + 1, None, f"truncated capture: block header "
                                   f"at byte offset {offset} cut short", where="packet")
        block_type = struct.unpack("<I", head[:4])[0]
        if block_type == PCAPNG_SHB:
            bom = _read_exact(path, f, 4, number + 1,
                              f"the section header at byte offset {offset}")
            order = "<" if struct.unpack("<I", bom)[0] == PCAPNG_BYTE_ORDER else ">"
            f.seek(-4, 1)
            interfaces = []
        block_type, length = struct.unpack(order + "II", head)
        if length < 12 or length % 4:
            raise IngestError(path, number + 1, None, f"corrupt pcapng block at byte offset "
                              f"{offset}: length {length}", where="packet")
        body = _read_exact(path, f, length - 8, number + 1,
                           f"the pcapng block at byte offset {offset} ({length} bytes)")[:-4]
        if block_type == PCAPNG_IDB:
            interfaces.append(_interface(body, order))
        elif block_type in (PCAPNG_EPB, PCAPNG_PB):
            number += 1
            if block_type == PCAPNG_EPB:
                iface, high, low, caplen = struct.unpack(order + "IIII", body[:16])
                data = body[20:20 + caplen]
            else:
                iface, high, low, caplen = struct.unpack(order + "HxxIII", body[:16])
                data = body[20:20 + caplen]
            if iface >= len(interfaces) or len(data) < caplen:
                raise IngestError(path, number, None, f"corrupt pcapng packet block at byte "
                                  f"offset {offset}", where="packet")
            linktype, ticks = interfaces[iface]
            yield Packet(number, ((high << 32) | low) / ticks, data, linktype)
        elif block_type == PCAPNG_SPB:
            number += 1
            raise IngestError(path, number, None, "simple packet block without a timestamp: "
                              "flows need packet times", where="packet")


def _interface(body: bytes, order: str) -> tuple[int, float]:
    linktype = struct.unpack(order + "H", body[:2])[0]
    ticks = 1e6
    pos = 8
    while pos + 4 <= len(body):
        code, size = struct.unpack(order + "HH", body[pos:pos + 4])
        if code == 0:
            break
        if code == IF_TSRESOL and size >= 1:
            value = body[pos + 4]
            ticks = float(2 ** (value & 0x7F)) if value & 0x80 else float(10 ** value)
        pos += 4 + size + (-size % 4)
    return linktype, ticks
