"""One HTTP server for ``/metrics`` (Prometheus text), ``/healthz`` (the generation loop
turned recently) and ``/readyz`` (model loaded and every exporter healthy). Runs in a daemon
thread; binds 127.0.0.1 unless configured otherwise.

Hardened against idle or abusive clients: a connection must send its request within
``read_timeout`` seconds, at most ``max_connections`` are served at once (more are closed
at once, without a thread), and a connection that breaks is logged at debug level, never
as a traceback on stderr."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from flowdiff.config import parse_host_port

log = logging.getLogger(__name__)

Probe = Callable[[], tuple[bool, str]]  # -> (ok, one-line reason)

READ_TIMEOUT = 5.0  # seconds a client may take to send its request (a scrape takes ms)
MAX_CONNECTIONS = 16  # connections served at once; Prometheus needs one


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` of them; errors logged quietly."""

    daemon_threads = True
    request_queue_size = 128  # listen backlog: a burst of connects is accepted, then refused

    def __init__(self, address, handler, max_connections: int):
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            log.debug("http: %s refused: %d connections open already", client_address[0],
                      self.max_connections)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # starts the thread
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address):
        log.debug("http: connection from %s ended with an error", client_address[0],
                  exc_info=True)


class OpsServer:
    def __init__(self, listen: str, registry: CollectorRegistry, health: Probe, ready: Probe,
                 *, read_timeout: float = READ_TIMEOUT, max_connections: int = MAX_CONNECTIONS):
        host, port = parse_host_port(listen)
        self._registry, self._health, self._ready = registry, health, ready
        self._read_timeout = read_timeout
        self._server = _BoundedServer((host, port), self._handler_class(), max_connections)
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
            timeout = ops._read_timeout  # socket timeout: an idle client is dropped

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
