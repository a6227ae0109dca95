"""Exporter kinds: config ``kind`` -> module, imported lazily (a Kafka-free install never
imports kafka-python).

Construction protocol (every exporter module follows it):

* the module ``flowdiff/exporters/<module>.py`` defines
  ``CONFIG = <a dataclass with the kind-specific keys, each with a default or required>`` and
  ``EXPORTER = <an Exporter subclass>``;
* the daemon builds it as ``EXPORTER(name, options)`` where ``name`` is the instance name from
  the config (metric label ``exporter``) and ``options`` a validated ``CONFIG`` instance;
* the constructor must not block on the network for long; connection problems surface as
  ``healthy == False`` or ``ExporterError`` from ``submit``;
* the common keys ``kind, name, policy, queue`` belong to the daemon (``flowdiff.config``);
  every other key of an ``exporters[i]`` entry is checked against ``CONFIG``'s fields and
  types, and ``CONFIG.__post_init__`` may raise ``ValueError`` for range checks; all errors
  are listed together by ``flowdiff config check``.
"""

from __future__ import annotations

import importlib

from flowdiff.exporters.base import Exporter

KINDS: dict[str, str] = {
    "stdout": "flowdiff.exporters.stdout",
    "null": "flowdiff.exporters.null",
    "kafka": "flowdiff.exporters.kafka",
    "file": "flowdiff.exporters.files",
    "pcap": "flowdiff.exporters.packets",
    "netflow": "flowdiff.exporters.netflow",
}


def _module(kind: str):
    if kind not in KINDS:
        raise KeyError(f"unknown exporter kind {kind!r} (known: {', '.join(sorted(KINDS))})")
    try:
        return importlib.import_module(KINDS[kind])
    except ModuleNotFoundError as exc:
        raise ImportError(f"exporter kind {kind!r} is not available: module {KINDS[kind]} "
                          f"cannot be imported ({exc})") from exc


def exporter_config_type(kind: str) -> type:
    """The dataclass holding the kind-specific keys of exporter ``kind``."""
    return _module(kind).CONFIG


def build_exporter(kind: str, name: str, options) -> Exporter:
    """Construct exporter ``kind`` named ``name`` from its validated options dataclass."""
    return _module(kind).EXPORTER(name, options)
