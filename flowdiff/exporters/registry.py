"""Exporter kinds: config ``kind`` -> module, imported lazily (a Kafka-free install never
imports kafka-python).

Construction protocol (every exporter module follows it):

* the module ``flowdiff/exporters/<module>.py`` defines
  ``CONFIG = <a dataclass with the kind-specific keys, each with a default or required>`` and
  ``EXPORTER = <an Exporter subclass>``;
* the daemon builds it as ``EXPORTER(name, options, on_errors=callback)`` where ``name`` is
  the instance name from the config (metric label ``exporter``), ``options`` a validated
  ``CONFIG`` instance (an ``ExporterSettings`` subclass) and ``on_errors`` the error metric;
* waits and retries inside the exporter wait on ``self.stopping`` (set by ``terminate()``
  at the shutdown bound), never a bare ``time.sleep``;
* the constructor must not block on the network for long; connection problems surface as
  ``healthy == False`` or ``ExporterError`` from ``submit``;
* the common keys ``kind, name, policy, queue`` belong to the daemon (``flowdiff.config``);
  every other key of an ``exporters[i]`` entry is checked against ``CONFIG``'s fields and
  types by the config engine (``flowdiff.config``), and ``CONFIG.check()`` adds the rules
  beyond types, each as ``(key, message)``; all errors are listed together, with the line
  of each key, by ``flowdiff config check``.
"""

from __future__ import annotations

import importlib

from flowdiff.exporters.base import ErrorCallback, Exporter

KINDS: dict[str, str] = {
    "stdout": "flowdiff.exporters.stdout",
    "null": "flowdiff.exporters.null",
    "kafka": "flowdiff.exporters.kafka",
    "file": "flowdiff.exporters.files",
    "pcap": "flowdiff.exporters.packets",
    "netflow": "flowdiff.exporters.netflow",
}


# kind -> (import name, extra) of a third-party package the exporter imports lazily
EXTRAS: dict[str, tuple[str, str]] = {"kafka": ("kafka", "kafka")}


def _module(kind: str):
    if kind not in KINDS:
        raise KeyError(f"unknown exporter kind {kind!r} (known: {', '.join(sorted(KINDS))})")
    if kind in EXTRAS:
        package, extra = EXTRAS[kind]
        try:
            importlib.import_module(package)
        except ModuleNotFoundError as exc:
            raise ImportError(f"exporter kind {kind!r} needs the {extra!r} extra: "
                              f"pip install 'flowdiff[{extra}]'") from exc
    try:
        return importlib.import_module(KINDS[kind])
    except ModuleNotFoundError as exc:
        raise ImportError(f"exporter kind {kind!r} is not available: module {KINDS[kind]} "
                          f"cannot be imported ({exc})") from exc


def exporter_config_type(kind: str) -> type:
    """The dataclass holding the kind-specific keys of exporter ``kind``."""
    return _module(kind).CONFIG


def build_exporter(kind: str, name: str, options,
                   on_errors: ErrorCallback | None = None) -> Exporter:
    """Construct exporter ``kind`` named ``name`` from its validated settings; ``on_errors``
    is called with each count of failed deliveries the exporter detects itself."""
    return _module(kind).EXPORTER(name, options, on_errors=on_errors)
