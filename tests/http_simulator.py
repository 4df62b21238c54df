"""What the HTTP simulators of a CRM's API share: a loopback server, its life cycle, scripted faults.

A simulator subclasses :class:`HttpSimulator` and answers :meth:`HttpSimulator.handle`
(method, target, lower-cased headers, body) with a :class:`Reply`, raised or
returned; everything about HTTP itself (the threaded server on a free port,
going down and coming back on the same port with open connections cut,
Content-Length, 204 without a body) is here, so each simulator is only the
vendor's API as its documents describe it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, TypeVar


@dataclass
class Fault:
    """The next ``count`` requests to ``path`` get this answer (bytes are sent as they are)."""

    path: str
    status: int
    body: Any
    count: int = 1
    headers: dict[str, str] = field(default_factory=dict)


class Reply(Exception):
    """An answer: returned by a simulator's handler, or raised from deep inside it."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None):
        self.status = status
        self.body = body
        self.headers = headers or {}


class _Logged(Protocol):
    path: str


_Self = TypeVar("_Self", bound="HttpSimulator")


class HttpSimulator:
    """A CRM's API on a free loopback port, in a thread; a subclass answers :meth:`handle`."""

    # The serving thread's name, and the Content-Type of JSON answers (vendors spell it differently).
    thread_name = "http-simulator"
    content_type = "application/json; charset=utf-8"

    def __init__(self) -> None:
        self.requests: list[Any] = []
        # Every answer waits this long (and a path's own extra), as a distant server does.
        self.latency_s = 0.0
        self.path_latency_s: dict[str, float] = {}
        self._faults: list[Fault] = []
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._server: ThreadingHTTPServer | None = None
        self._port = 0
        self._connections: set[socket.socket] = set()

    # -- life cycle ---------------------------------------------------------

    def start(self: _Self) -> _Self:
        simulator = self

        class Handler(_Handler):
            sim = simulator

        # The same port again after go_down(): what the client knows keeps working.
        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._server.daemon_threads = True
        self._port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=self.thread_name, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def go_down(self) -> None:
        """Unreachable: the port refuses connections, and the open ones are cut, until :meth:`come_back`."""
        self.stop()
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def come_back(self) -> None:
        self.start()

    def __enter__(self: _Self) -> _Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._port, "simulator not started"
        return f"http://127.0.0.1:{self._port}"

    # -- scripting and inspection -------------------------------------------

    def fail_next(self, path: str, status: int, body: Any, count: int = 1, headers: dict[str, str] | None = None) -> None:
        """The next ``count`` requests to ``path`` get ``status`` and ``body`` (bytes are sent as they are)."""
        with self._lock:
            self._faults.append(Fault(path, status, body, count, headers or {}))

    def requests_to(self, path: str) -> list[Any]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def _raise_fault(self, path: str) -> None:
        """Answer with the first scripted fault still pending for ``path``, if any."""
        with self._lock:
            fault = next((f for f in self._faults if f.path == path and f.count > 0), None)
            if fault is not None:
                fault.count -= 1
                raise Reply(fault.status, fault.body, dict(fault.headers))

    def _delay(self, path: str) -> None:
        delay = self.latency_s + self.path_latency_s.get(path, 0.0)
        if delay:
            time.sleep(delay)

    def _wait_for(self, items: list[Any], count: int, timeout: float) -> list[Any]:
        """``items`` (a list the handlers append to, notifying) once it holds ``count``, or when ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(items) < count and time.monotonic() < deadline:
                self._changed.wait(deadline - time.monotonic())
            return list(items)

    # -- serving ------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply:
        raise NotImplementedError


class _Handler(BaseHTTPRequestHandler):
    sim: HttpSimulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.sim._lock:
            self.sim._connections.add(self.connection)

    def finish(self) -> None:
        with self.sim._lock:
            self.sim._connections.discard(self.connection)
        super().finish()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply = self.sim.handle(self.command, self.path, headers, body)
        payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        if reply.status != 204:
            self.send_header("Content-Type", reply.headers.pop("Content-Type", self.sim.content_type))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.status != 204:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        try:
            if reply.status != 204:
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (a deadline): nothing to answer

    do_GET = _serve
    do_POST = _serve
