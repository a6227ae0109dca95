"""One HTTP server for ``/metrics`` (Prometheus text), ``/healthz`` (the generation loop
turned recently) and ``/readyz`` (model loaded and every exporter healthy). Runs in a daemon
thread; binds 127.0.0.1 unless configured otherwise."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

Probe = Callable[[], tuple[bool, str]]  # -> (ok, one-line reason)


class OpsServer:
    def __init__(self, listen: str, registry: CollectorRegistry, health: Probe, ready: Probe):
        host, _, port = listen.rpartition(":")
        self._registry, self._health, self._ready = registry, health, ready
        self._server = ThreadingHTTPServer((host, int(port)), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="ops-http",
                                        daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self._server.server_address[:2]

    def start(self) -> "OpsServer":
        self._thread.start()
        log.info("metrics and health on http://%s:%d (/metrics /healthz /readyz)", *self.address)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self):
        ops = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(ops._registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, reason = (ops._health if path == "/healthz" else ops._ready)()
                    self._send(200 if ok else 503, (reason + "\n").encode(), "text/plain")
                else:
                    self._send(404, b"not found: try /metrics, /healthz, /readyz\n", "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt, *args):  # route access logs to logging at debug
                log.debug("%s " + fmt, self.client_address[0], *args)

        return Handler
