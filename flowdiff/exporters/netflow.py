"""``netflow`` exporter: NetFlow v9 or IPFIX over UDP to a collector (nfcapd, pmacct, ...).

Templates go in the first packet and again every ``template_every_packets`` packets or
``template_interval_s`` seconds, whichever comes first (UDP loses packets; a collector that
starts late learns the template soon). Sequence numbers: NetFlow v9 counts export packets,
IPFIX counts data records sent before the message (RFC 7011). Sends are paced to at most
``packets_per_second`` (unpaced bursts overflow collector socket buffers).

UDP gives no delivery receipts: a send the kernel refuses (e.g. ICMP port unreachable from
a connected collector address, or no route) counts the packet's records in ``errors``, is
logged, and marks the exporter unhealthy until a send succeeds again.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import pandas as pd

from flowdiff.config import parse_host_port
from flowdiff.exporters import ipfix_codec as codec
from flowdiff.exporters.base import ErrorCallback, Exporter, ExporterSettings

log = logging.getLogger(__name__)


@dataclass
class NetflowConfig(ExporterSettings):
    ADDRESS_KEYS = ("collector",)
    collector: str = "127.0.0.1:4739"       # host:port of the collector
    version: Literal[9, 10] = 10            # 9: NetFlow v9, 10: IPFIX
    source_id: int = 0                      # v9 source id / IPFIX observation domain id
    template_id: int = 256
    template_every_packets: int = 20
    template_interval_s: float = 30.0
    max_packet_bytes: int = 1400            # UDP payload per export packet
    packets_per_second: float | None = 2000.0  # pacing; null: send as fast as possible

    def check(self) -> list[tuple[str, str]]:
        errors = []
        try:
            parse_host_port(self.collector, allow_port_zero=False)
        except ValueError as exc:
            errors.append(("collector", str(exc)))
        if not 0 <= self.source_id <= 0xFFFFFFFF:
            errors.append(("source_id", f"expected 0..4294967295, got {self.source_id!r}"))
        if not 256 <= self.template_id <= 65535:
            errors.append(("template_id", f"expected 256..65535, got {self.template_id!r}"))
        if self.template_every_packets < 1:
            errors.append(("template_every_packets",
                           f"expected >= 1, got {self.template_every_packets!r}"))
        if self.template_interval_s <= 0:
            errors.append(("template_interval_s", f"expected > 0, got {self.template_interval_s!r}"))
        if not 256 <= self.max_packet_bytes <= 65507:
            errors.append(("max_packet_bytes", f"expected 256..65507, got {self.max_packet_bytes!r}"))
        if self.packets_per_second is not None and self.packets_per_second <= 0:
            errors.append(("packets_per_second",
                           f"expected > 0 or null, got {self.packets_per_second!r}"))
        return errors

    @property
    def address(self) -> tuple[str, int]:
        return parse_host_port(self.collector, allow_port_zero=False)


class NetflowExporter(Exporter):
    kind = "netflow"

    def __init__(self, name: str, config: NetflowConfig, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] | None = None,
                 on_errors: ErrorCallback | None = None):
        super().__init__(name, config, on_errors=on_errors)
        self.layout = codec.layout(config.version)
        self.template = codec.template_set(self.layout, config.template_id)
        self.per_packet = codec.records_per_packet(self.layout, config.max_packet_bytes,
                                                   config.template_id)
        # pacing waits end at once on terminate()
        self.clock, self.wall_clock = clock, wall_clock
        self.sleep = sleep if sleep is not None else self.stopping.wait
        self.packets_sent = 0
        self.records_sent = 0
        self.templates_sent = 0
        self._since_template = None   # packets since the last template; None: never sent
        self._template_at = 0.0
        self._next_send = 0.0
        self._socket = None           # opened on first use
        self._healthy = True

    @property
    def healthy(self) -> bool:
        return self._healthy

    def _template_due(self) -> bool:
        return (self._since_template is None
                or self._since_template >= self.config.template_every_packets
                or self.clock() - self._template_at >= self.config.template_interval_s)

    def _pace(self) -> None:
        if self.config.packets_per_second is None:
            return
        now = self.clock()
        if self._next_send > now:
            self.sleep(self._next_send - now)
            now = self._next_send
        self._next_send = max(now, self._next_send) + 1.0 / self.config.packets_per_second

    def submit(self, batch: pd.DataFrame) -> int:
        if len(batch) == 0:
            return 0
        if self._socket is None:
            self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._socket.connect(self.config.address)
        start_ms, end_ms = codec.flow_times_ms(batch)
        records = codec.encode_records(self.layout, batch, start_ms, end_ms)
        for lo in range(0, len(batch), self.per_packet):
            hi = min(lo + self.per_packet, len(batch))
            self._send_packet(records[lo:hi], start_ms[lo:hi], end_ms[lo:hi])
        return len(batch)

    def _send_packet(self, records: np.ndarray, start_ms: np.ndarray, end_ms: np.ndarray) -> None:
        with_template = self._template_due()
        sequence = self.packets_sent if self.config.version == codec.NETFLOW_V9 \
            else self.records_sent
        packet = codec.message(self.layout, template=self.template if with_template else None,
                               template_id=self.config.template_id, records=records,
                               start_ms=start_ms, end_ms=end_ms, sequence=sequence,
                               domain_id=self.config.source_id, export_time=int(self.wall_clock()))
        self._pace()
        try:
            self._socket.send(packet)
        except OSError as exc:
            self.count_errors(len(records))
            if self._healthy:
                log.warning("netflow exporter %s: cannot send to %s: %s (records of failed "
                            "sends are counted as errors)", self.name, self.config.collector, exc)
            self._healthy = False
            return
        if not self._healthy:
            log.info("netflow exporter %s: sending to %s again", self.name, self.config.collector)
        self._healthy = True
        self.packets_sent += 1
        self.records_sent += len(records)
        if with_template:
            self.templates_sent += 1
            self._since_template, self._template_at = 0, self.clock()
        self._since_template += 1

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


CONFIG = NetflowConfig
EXPORTER = NetflowExporter
