"""``pcap`` exporter: each record becomes a packet train (see ``packet_builder``), written to
rotating pcap files (Ethernet link type, microsecond timestamps, ``*.part`` until complete)
and, only when ``interface`` is named, also sent live on that interface.

Packets of one batch are written in time order; batches follow each other in the order the
fan-out delivers them. Live sending uses a raw ``AF_PACKET`` socket (needs CAP_NET_RAW) and
sends each batch at once, in time order (the daemon paces records; packets within a record
are not delayed).
"""

from __future__ import annotations

import logging
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pandas as pd

from flowdiff.exporters.base import ErrorCallback, Exporter, ExporterError, ExporterSettings
from flowdiff.exporters.packet_builder import BuildStats, PacketBuilder, mac_bytes
from flowdiff.exporters.rotation import RotatingFiles, RotationPolicy

log = logging.getLogger(__name__)

PCAP_MAGIC = 0xA1B2C3D4        # microsecond timestamps
LINKTYPE_ETHERNET = 1
SNAPLEN = 65535
_GLOBAL_HEADER = struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET)
_RECORD_HEADER = struct.Struct("<IIII")


@dataclass
class PcapConfig(ExporterSettings):
    DIRECTORY_KEYS = ("directory",)
    directory: str | None = "out"         # pcap files go here; null: live sending only
    prefix: str = "flows"
    interface: str | None = None          # send live on this interface; null (default): never
    src_mac: str = "02:00:00:00:00:01"    # source MAC of src -> dst packets
    dst_mac: str = "02:00:00:00:00:02"
    mtu: int = 1500                       # largest IP packet built
    seed: int = 0                         # TCP sequence numbers and IP identifiers
    rotate_packets: int | None = 1_000_000
    rotate_bytes: int | None = None
    rotate_seconds: float | None = 3600.0
    fsync: bool = True

    def check(self) -> list[tuple[str, str]]:
        errors = []
        if self.directory is None and self.interface is None:
            errors.append(("directory", "null needs an interface to send on (nothing to do)"))
        for name in ("src_mac", "dst_mac"):
            try:
                mac_bytes(getattr(self, name))
            except ValueError as exc:
                errors.append((name, str(exc)))
        if not 68 <= self.mtu <= 65535:
            errors.append(("mtu", f"expected 68..65535, got {self.mtu!r}"))
        if not self.prefix or "/" in self.prefix:
            errors.append(("prefix", f"expected a file name prefix without '/', got {self.prefix!r}"))
        for name in ("rotate_packets", "rotate_bytes", "rotate_seconds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                errors.append((name, f"expected a value > 0 or null (no limit), got {value!r}"))
        if self.seed < 0:
            errors.append(("seed", f"expected an integer >= 0, got {self.seed!r}"))
        return errors


class PcapSegment:
    resumable = True

    def __init__(self, stream: BinaryIO):
        self.stream = stream

    def begin(self) -> None:
        self.stream.write(_GLOBAL_HEADER)

    def write(self, packets: list[tuple[float, bytes]]) -> None:
        self.stream.write(encode_records(packets))

    def end(self) -> None:
        pass


def encode_records(packets: list[tuple[float, bytes]]) -> bytes:
    """pcap record headers + frames, microsecond timestamps."""
    pack = _RECORD_HEADER.pack
    parts = []
    for t, frame in packets:
        us = round(t * 1_000_000)
        parts.append(pack(us // 1_000_000, us % 1_000_000, len(frame), len(frame)))
        parts.append(frame)
    return b"".join(parts)


class PcapExporter(Exporter):
    kind = "pcap"

    def __init__(self, name: str, config: PcapConfig, *, on_errors: ErrorCallback | None = None):
        super().__init__(name, config, on_errors=on_errors)
        self.builder = PacketBuilder(mac_bytes(config.src_mac), mac_bytes(config.dst_mac),
                                     mtu=config.mtu, seed=config.seed)
        self.files = None if config.directory is None else RotatingFiles(
            Path(config.directory), config.prefix, ".pcap",
            RotationPolicy(config.rotate_packets, config.rotate_bytes, config.rotate_seconds),
            PcapSegment, fsync=config.fsync)
        self.sent = 0            # frames sent live
        self._socket = None      # opened on first use: the constructor touches no device
        self._healthy = True
        # (failed batch, its packets, packets already in files): the fan-out retries the same
        # batch object; the retry continues it instead of building and writing it again
        self._retry: tuple[pd.DataFrame, list, int] | None = None

    @property
    def stats(self) -> BuildStats:
        """Records turned into packets, packets built, records skipped / adjusted."""
        return self.builder.stats

    @property
    def completed(self) -> list[Path]:
        return [] if self.files is None else list(self.files.completed)

    @property
    def healthy(self) -> bool:
        return self._healthy

    def submit(self, batch: pd.DataFrame) -> int:
        if self._retry is not None and self._retry[0] is batch:
            _, packets, start = self._retry
        else:
            before = (self.builder.stats.skipped, self.builder.stats.adjusted)
            packets, start = self.builder.build(batch), 0
            self._note_inexact(before)
        if self.files is not None:
            try:
                start = self._write(batch, packets, start)
            except ExporterError as exc:
                self._healthy = False
                raise ExporterError(f"pcap exporter {self.name}: {exc}") from exc
            self._healthy = True
        if self.config.interface is not None:
            self._retry = (batch, packets, len(packets))  # files done: a retry only sends
            self._send(packets)
        self._retry = None
        return len(batch)

    def _note_inexact(self, before: tuple[int, int]) -> None:
        """Log (warning the first time, debug after) records not rendered exactly."""
        skipped = self.builder.stats.skipped - before[0]
        adjusted = self.builder.stats.adjusted - before[1]
        if skipped or adjusted:
            first = before == (0, 0)
            log.log(logging.WARNING if first else logging.DEBUG,
                    "pcap exporter %s: %d record(s) skipped (protocol without a packet form: "
                    "only TCP, UDP, ICMP), %d with sizes clamped to 1 header..mtu per packet "
                    "(totals in .stats)", self.name, skipped, adjusted)

    def _write(self, batch: pd.DataFrame, packets: list[tuple[float, bytes]], start: int) -> int:
        """Write ``packets[start:]`` across rotations; on a failure remember how far it got."""
        while start < len(packets):
            room = self.files.room()
            stop = len(packets) if room is None else min(len(packets), start + room)
            try:
                self.files.write(packets[start:stop], stop - start)
            except ExporterError:
                self._retry = (batch, packets, start)
                raise
            start = stop
        return start

    def _send(self, packets: list[tuple[float, bytes]]) -> None:
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
                self._socket.bind((self.config.interface, 0))
            for _, frame in packets:
                self._socket.send(frame)
                self.sent += 1
            self._healthy = True
        except OSError as exc:
            self._healthy = False
            if self._socket is not None:
                self._socket.close()
                self._socket = None
            raise ExporterError(f"pcap exporter {self.name}: cannot send on interface "
                                f"{self.config.interface!r}: {exc}") from exc

    def flush(self) -> None:
        if self.files is not None:
            self.files.rotate_if_old()
            self.files.flush()

    def close(self) -> None:
        if self.files is not None:
            self.files.finish()
        if self._socket is not None:
            self._socket.close()
            self._socket = None


CONFIG = PcapConfig
EXPORTER = PcapExporter
