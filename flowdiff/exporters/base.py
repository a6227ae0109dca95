"""The exporter interface: small on purpose (submit a batch, flush, close, health).

The daemon's fan-out owns one bounded queue and one worker thread per exporter; an exporter
itself is called from that single worker thread only, so it needs no locking of its own.
A batch is a canonical flow table (see ``flowdiff.schema``) with ``stream_id`` and ``seq``.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Callable

import pandas as pd

from flowdiff.config import Checked


ErrorCallback = Callable[[int], None]  # called with each count of failed deliveries


class ExporterError(RuntimeError):
    """An exporter could not deliver and cannot recover by itself (message names the target)."""


class OutputClosed(ExporterError):
    """The reader of the output went away for good (a pipe whose reader exited: EPIPE).
    Nothing more can be delivered there; the daemon stops quietly, as Unix tools do."""


class ExporterSettings(Checked):
    """Base of every exporter's settings dataclass (the ``CONFIG`` of its module), validated
    by the one config engine (``flowdiff.config``): ``check()`` returns ``(key, message)``
    for each problem; the loader reports each at its key and line, and constructing a
    settings object with any problem raises ``ConfigError`` listing them all.

    ``ADDRESS_KEYS`` (``host:port[,host:port...]`` values) and ``DIRECTORY_KEYS`` name the
    keys ``flowdiff config check`` and ``serve`` check against the world before starting
    (names resolve, directories usable; see ``flowdiff.daemon.preflight``)."""

    ADDRESS_KEYS: tuple[str, ...] = ()  # unannotated in subclasses, so not dataclass fields
    DIRECTORY_KEYS: tuple[str, ...] = ()


class Exporter(ABC):
    #: short kind name used in configs and metric labels, e.g. "stdout", "kafka"
    kind: str = "exporter"

    def __init__(self, name: str, config: ExporterSettings | None = None, *,
                 on_errors: ErrorCallback | None = None):
        self.name = name  # instance name from the config (metric label ``exporter``)
        self.config = config  # the validated settings (the module's ``CONFIG``), if any
        # Delivery failures the exporter detected itself (e.g. asynchronous Kafka send
        # errors), counted with ``count_errors``; count, log, never swallow.
        self.errors = 0
        # Called with each new count as it happens (the daemon passes the metric's ``inc``),
        # so failures show while a ``submit`` is still retrying, not only after it returns.
        self.on_errors = on_errors
        # Set by ``terminate``: every wait and retry of the exporter ends at once.
        self.stopping = threading.Event()

    def count_errors(self, n: int) -> None:
        """Record ``n`` failed deliveries (records or attempts) now."""
        self.errors += n
        if self.on_errors is not None:
            self.on_errors(n)

    @abstractmethod
    def submit(self, batch: pd.DataFrame) -> int:
        """Deliver (or buffer for delivery) a batch; return the number of records accepted.
        Raise ExporterError on a failure that loses records, never swallow it."""

    def flush(self) -> None:
        """Push out anything buffered."""

    def terminate(self) -> None:
        """Cut the exporter short (the shutdown bound is reached; called from another
        thread): a ``submit`` that is waiting or retrying gives up now, raising
        ExporterError for what it did not deliver, and ``close`` does not wait for a
        destination that is away. Exporters wait on ``self.stopping``, never a bare sleep."""
        self.stopping.set()

    def close(self) -> None:
        """Flush and release resources; the exporter is not used afterwards."""
        self.flush()

    @property
    def healthy(self) -> bool:
        """True while the exporter can deliver (e.g. broker reachable)."""
        return True
