"""One FastAGI session over TCP, as an :class:`asyncio.BufferedProtocol`.

This is the protocol half of a session: bytes are read into a small buffer
the connection owns (a plain Protocol makes asyncio allocate, shrink and free
a 256 KiB buffer for every read: three system calls) and framed without
streams in :meth:`FastAgiConnection._frame`: the header block is parsed as it
arrives, then a task runs the handler. ``HANGUP`` lines Asterisk writes on its
own are noted; every other line is a reply, handed to the session half
(:class:`~.pairing.ReplyPairing`), which pairs it with its command. The
limits (line length, header count, the header, reply and session deadlines)
are enforced here, with one timer per session.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any, Protocol, cast

from .calllog import log_session_error
from .environment import AgiEnvironment, parse_header_block
from .errors import AgiConnectionClosed, AgiLimitExceeded, AgiProtocolError
from .pairing import ReplyPairing
from .session import AgiSession

if TYPE_CHECKING:
    from .server import FastAgiServer

logger = logging.getLogger("crmroute.server")

# Bytes read at once: a whole header block or reply fits.
_READ_SIZE = 8192
# asyncio may run a timer a hair before its time; count that as due.
_TIMER_SLACK = 0.001
# The empty line that ends the header block (LF or CRLF), and a block with no
# headers at all. Two patterns rather than one "(?:^|\n)\r?\n": a pattern that
# starts with a literal is searched for at C speed, the alternation is tried at
# every byte (94,000 instructions per header block against 8,500).
_END_OF_HEADERS = re.compile(rb"\n\r?\n")
_NO_HEADERS = re.compile(rb"\r?\n")


class StreamTransport(Protocol):
    """What a session uses of its transport. asyncio's own transports have it, and so
    have uvloop's, which are no subclass of :class:`asyncio.Transport`: the check is
    on these methods, not on the class."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


def stream_transport(transport: asyncio.BaseTransport) -> StreamTransport:
    """``transport`` as a :class:`StreamTransport`; TypeError for one that cannot write or abort
    (a datagram or read-only transport: a bug in whoever made the connection)."""
    if not (callable(getattr(transport, "write", None)) and callable(getattr(transport, "abort", None))):
        raise TypeError(f"FastAGI needs a stream transport, got {type(transport).__name__}")
    return cast(StreamTransport, transport)


def format_peer(peername: object) -> str:
    """``127.0.0.1:40112`` or ``[::1]:40112``."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = peername[0], peername[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peername)


class FastAgiConnection(asyncio.BufferedProtocol, AgiSession):
    """Reads the header block, runs the handler, closes at once when it is done."""

    def __init__(self, server: FastAgiServer):
        self._server = server
        # Calls keep the app they started with, even if a SIGHUP swaps it meanwhile.
        self.app = server.app
        self._limits = self.app.config.limits
        self._loop = server.loop or asyncio.get_running_loop()
        self._read_buffer: memoryview | None = None
        self._transport: StreamTransport | None = None
        self._buffer = b""
        self._scanned = 0  # how much of the buffered header block has been checked
        self._header_lines = 0
        self._in_headers = True
        self._pairing = ReplyPairing(self._loop, self._limits.max_headers)
        # One timer per session, armed for the nearest deadline (see _check_deadlines).
        self._timer: asyncio.TimerHandle | None = None
        self._header_deadline = self._session_deadline = self._reply_deadline = 0.0
        self._task: asyncio.Task[None] | None = None
        self.closed = False
        self.end_reason = ""  # why the server ended the session early, if it did
        self.over_capacity = False
        self.peer = ""
        self.hung_up = False

    # -- asyncio.BufferedProtocol -----------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = stream = stream_transport(transport)
        peername = transport.get_extra_info("peername")
        self.peer = format_peer(peername)
        if not self._server.admits(peername):
            host = str(peername[0]) if isinstance(peername, tuple) else self.peer
            self._server.refused_peers.warning(host, "refused peer=%s reason=%s", self.peer, "not in server.allowed_peers")
            self.closed = True
            stream.abort()
            return
        self.ended_log = self._server.ended_sessions
        self._server.connection_opened(self)
        limits = self._limits
        now = self._loop.time()
        self._header_deadline = now + limits.header_timeout_ms / 1000
        self._session_deadline = now + limits.session_timeout_ms / 1000
        self._timer = self._loop.call_at(min(self._header_deadline, self._session_deadline), self._check_deadlines)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._read_buffer is None:
            self._read_buffer = memoryview(bytearray(_READ_SIZE))
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        assert self._read_buffer is not None  # get_buffer came first
        self._frame(bytes(self._read_buffer[:nbytes]))

    def _frame(self, data: bytes) -> None:
        """Frame the bytes just read: the header block first, then reply lines."""
        if self.closed:
            return
        if self._in_headers:
            data = self._receive_headers(data)
            if not data or self.closed:
                return
        buffer = self._buffer + data if self._buffer else data
        max_line = self._limits.max_line_bytes
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            if end - start > max_line:
                self._limit_hit(f"line longer than {max_line} bytes")
                return
            line = buffer[start:end].decode("utf-8", "replace")
            start = end + 1
            if line.endswith("\r"):
                line = line[:-1]
            self._line_received(line)
            if self.closed:
                return
        rest = buffer[start:]
        if len(rest) > max_line:
            self._limit_hit(f"line longer than {max_line} bytes")
            return
        self._buffer = rest

    def eof_received(self) -> bool:
        # Half-closed by the peer: nothing more will come, so close our side too.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._in_headers and not self.closed:
            if self._header_lines == 0 and not self._buffer:
                # Connected and left without a byte: a port check (monitoring,
                # a load balancer), not a broken call. Not worth a warning per probe.
                logger.debug("peer=%s connected and closed without sending anything", self.peer)
            else:
                log_session_error(self, "peer closed the connection before the end of the header block")
        self.closed = True
        self._cancel_timers()
        self._pairing.fail(AgiConnectionClosed("peer closed the connection"))
        self._server.connection_closed(self)

    # -- AgiSession ---------------------------------------------------------

    async def _exchange(self, command: str) -> str:
        if self.closed or self._transport is None:
            raise AgiConnectionClosed("connection already closed")
        return await self._pairing.exchange(command, self._write)

    def _write(self, line: bytes) -> None:
        """Write a command line (the pairing's only way out), its reply deadline armed."""
        assert self._transport is not None  # checked by _exchange; the pairing writes nothing else
        self._reply_deadline = self._loop.time() + self._limits.reply_timeout_ms / 1000
        if self._timer is None or self._timer.when() > self._reply_deadline:
            self._arm(self._reply_deadline)
        self._transport.write(line)

    # -- internals --------------------------------------------------------

    def _receive_headers(self, data: bytes) -> bytes:
        """Collect the header block; once it is complete, start the handler and
        return what followed it (a ``HANGUP`` line, say).

        The block is cut and parsed in one go rather than line by line (this is
        the hot path), but every limit still holds while it is incomplete: the
        lines of each chunk are counted and measured as they arrive.
        """
        buffer = self._buffer + data if self._buffer else data
        limits = self._limits
        # Lines before self._scanned were checked with an earlier chunk.
        start = self._scanned
        end_match = (start == 0 and _NO_HEADERS.match(buffer)) or _END_OF_HEADERS.search(buffer, max(0, start - 1))
        end = len(buffer) if end_match is None else end_match.start()
        region = buffer[start:end]
        newlines = region.count(b"\n")
        # Lines complete in this region: all of them once the block's end is
        # found, else those followed by a newline.
        self._header_lines += (newlines + 1 if region else 0) if end_match is not None else newlines
        # A region no longer than the limit cannot hold a line that is.
        if len(region) > limits.max_line_bytes and max(map(len, region.split(b"\n"))) > limits.max_line_bytes:
            self._limit_hit(f"line longer than {limits.max_line_bytes} bytes")
            return b""
        if self._header_lines > limits.max_headers:
            self._limit_hit(f"more than {limits.max_headers} header lines")
            return b""
        if end_match is None:
            self._buffer = buffer
            self._scanned = start + region.rfind(b"\n") + 1  # the start of the incomplete last line
            return b""
        self._buffer = b""
        self._headers_complete(buffer[:end])
        return buffer[end_match.end():]

    def _headers_complete(self, block: bytes) -> None:
        self._in_headers = False
        try:
            headers = parse_header_block(block.decode("utf-8", "replace"))
        except AgiProtocolError as exc:
            self._end(str(exc))
            return
        self.env = AgiEnvironment(headers)
        self.script = self.env.script
        self.arguments = self.env.arguments
        self.over_capacity = not self._server.headers_received(self)
        self._task = self._loop.create_task(self._run())

    def _line_received(self, line: str) -> None:
        if line == "HANGUP":
            self.hung_up = True
            return
        broken = self._pairing.line_received(line)
        if broken:
            self._limit_hit(broken)

    async def _run(self) -> None:
        try:
            await self._server.dispatch(self)
        finally:
            self.close()

    def _check_deadlines(self) -> None:
        """The session timer fired: end what is overdue, else re-arm for the next deadline.

        Deadlines are plain timestamps, so a command or the end of the header
        block costs no timer of its own; the timer only fires for a session
        that is slow, and then finds out why.
        """
        self._timer = None
        if self.closed:
            return
        now = self._loop.time() + _TIMER_SLACK
        limits = self._limits
        if self._in_headers and now >= self._header_deadline:
            self._limit_hit(f"no complete header block within {limits.header_timeout_ms} ms")
            return
        if now >= self._session_deadline:
            self._limit_hit(f"session longer than {limits.session_timeout_ms} ms")
            return
        pairing = self._pairing
        owed = pairing.owes_reply
        if owed and now >= self._reply_deadline:
            verb = " ".join(pairing.command.split(" ", 2)[:2])
            reason = f"no reply to {verb} within {limits.reply_timeout_ms} ms"
            if pairing.abandoned:
                self._limit_hit(reason)  # abandoned and never answered: nothing more can be sent
                return
            self._server.limit_hit(reason)
            pairing.fail(AgiLimitExceeded(reason))
            owed = False
        deadlines = [self._session_deadline]
        if self._in_headers:
            deadlines.append(self._header_deadline)
        if owed:
            deadlines.append(self._reply_deadline)
        self._arm(min(deadlines))

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._check_deadlines)

    def _limit_hit(self, reason: str) -> None:
        """A limit was violated: end the session with one log line naming the reason."""
        if self.closed:
            return
        self._server.limit_hit(reason)
        if self._task is not None and not self._task.done():
            # The handler is running: it logs the reason as it unwinds.
            self.end_reason = reason
            self._task.cancel()
            self.close()
            return
        self._end(reason)

    def _end(self, reason: str) -> None:
        """End a session that has no running handler, with one log line."""
        log_session_error(self, reason)
        self.close()

    def _cancel_timers(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """Close at once: a socket kept open leaves the channel stuck in AGI."""
        if self.closed:
            return
        self.closed = True
        self._cancel_timers()
        if self._transport is not None:
            self._transport.close()

    def drop(self, reason: str) -> None:
        """Drop a connection still sending its header block, with one log line."""
        if self.closed:
            return
        log_session_error(self, reason)
        self.abort()

    def stop_now(self) -> None:
        """The server stops at once: a handler still running is cancelled, and
        gives the fallback answer first if it has not answered yet."""
        if self._task is not None and not self._task.done() and self.end_reason != "server stopping now":
            self.end_reason = "server stopping now"
            self.fallback_on_cancel = not self.answered
            self._task.cancel()

    def abort(self) -> None:
        """Drop the connection now (shutdown after the grace period)."""
        self.closed = True
        self._cancel_timers()
        if self._task is not None and not self._task.done():
            self.end_reason = "server shutting down"
            self._task.cancel()
        if self._transport is not None:
            self._transport.abort()

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task
