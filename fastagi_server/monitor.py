"""The metrics and health listener (``[metrics] listen``): ``/metrics``, ``/healthz``, ``/readyz``.

It runs on threads of its own, apart from the AGI port: a scrape never
delays a call, and a slow or hostile HTTP peer only holds one of its threads
(for at most :data:`CLIENT_TIMEOUT_S`). What it reports is read on the
server's event loop (:class:`.metrics.StateCollector`), so it also tells
whether that loop still answers: ``/healthz`` fails when it does not.

Peers outside ``metrics.allowed_peers`` (loopback only by default) are
refused before a byte is read, like on the AGI port.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .config import address_allowed
from .connection import format_peer
from .logs import RepeatedWarning

if TYPE_CHECKING:
    from .metrics import ServerMetrics

logger = logging.getLogger("crmroute.metrics")

# A peer that has not sent its request in this long is dropped.
CLIENT_TIMEOUT_S = 10.0
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class MonitorServer(ThreadingHTTPServer):
    """The HTTP listener; :meth:`start` serves on a daemon thread until :meth:`stop`."""

    daemon_threads = True
    # The handler's reads and writes time out, so no peer can hold a thread for long.
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], metrics: ServerMetrics, allowed: Sequence[Network], refused: RepeatedWarning):
        host, port = address
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), MonitorHandler)
        self.metrics = metrics
        self._allowed = tuple(allowed)
        self._refused = refused
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{format_peer(self.server_address[:2])}"

    def verify_request(self, request: object, client_address: object) -> bool:
        if _admitted(client_address, self._allowed):
            return True
        host = str(client_address[0]) if isinstance(client_address, tuple) else str(client_address)
        self._refused.warning(host, "refused peer=%s on the metrics listener reason=%s", format_peer(client_address), "not in metrics.allowed_peers")
        return False

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2}, name="metrics listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving (blocks up to a poll interval) and close the socket."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(5)
        self.server_close()


def _admitted(client_address: object, allowed: Sequence[Network]) -> bool:
    return isinstance(client_address, tuple) and address_allowed(str(client_address[0]), tuple(allowed))


class MonitorHandler(BaseHTTPRequestHandler):
    server: MonitorServer
    timeout = CLIENT_TIMEOUT_S
    server_version = "crmroute"
    sys_version = ""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(self.server.metrics.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            alive = self.server.metrics.state.loop_answers()
            self._json(200 if alive else 503, {"alive": alive} if alive else {"alive": False, "problem": "the event loop does not answer"})
        elif path == "/readyz":
            state = self.server.metrics.state.read_state(probe=True)
            if state is None:
                self._json(503, {"ready": False, "problems": ["server: the event loop does not answer"]})
            else:
                self._json(200 if state.ready else 503, state.to_dict())
        else:
            self._json(404, {"error": "not found", "paths": ["/metrics", "/healthz", "/readyz"]})

    def do_HEAD(self) -> None:
        self._send(200 if self.path.split("?", 1)[0] in ("/metrics", "/healthz", "/readyz") else 404, b"", "text/plain", body=False)

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body, indent=1).encode() + b"\n", "application/json")

    def _send(self, status: int, payload: bytes, content_type: str, *, body: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        # Each scrape is not worth a line; what goes wrong is (log_error comes through here too).
        logger.debug("metrics listener: %s %s", self.address_string(), format % args)
