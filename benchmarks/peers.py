"""The servers ours is measured against, each doing the minimal exchange:
read the header block, one dict lookup, one ``SET VARIABLE``, wait for its
reply, close.

* ``protocol``: a bare :class:`asyncio.Protocol` (the floor for asyncio);
* ``streams``: bare asyncio ``StreamReader``/``StreamWriter``;
* ``panoramisk``: panoramisk's ``fast_agi.Application`` (``pip install -e '.[bench]'``).

``python benchmarks/peers.py protocol --port 4573`` serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

# The one dict lookup: caller -> dial target.
OWNERS = {
    "+34928000000": "PJSIP/101",
    "+34928000001": "PJSIP/103",
    "+34928000002": "PJSIP/102",
    "+34928000005": "PJSIP/104&PJSIP/105",
}


def set_target(headers: dict[str, str]) -> bytes:
    return b'SET VARIABLE CRM_TARGET "%s"\n' % OWNERS.get(headers.get("agi_callerid", ""), "").encode()


def parse_headers(block: bytes) -> dict[str, str]:
    headers = {}
    for line in block.decode("utf-8", "replace").split("\n"):
        key, _, value = line.partition(": ")
        headers[key] = value
    return headers


class MinimalProtocol(asyncio.Protocol):
    """Header block, one SET VARIABLE, its reply (skipping HANGUP lines), close."""

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buffer = b""
        self.sent = False

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        if not self.sent:
            end = buffer.find(b"\n\n")
            if end < 0:
                self.buffer = buffer
                return
            self.transport.write(set_target(parse_headers(buffer[:end])))
            self.sent = True
            buffer = buffer[end + 2 :]
        while (end := buffer.find(b"\n")) >= 0:
            if buffer.startswith(b"200"):
                self.transport.close()
                return
            buffer = buffer[end + 1 :]
        self.buffer = buffer


async def minimal_streams(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        block = await reader.readuntil(b"\n\n")
        writer.write(set_target(parse_headers(block[:-2])))
        await writer.drain()
        while not (await reader.readline()).startswith(b"200"):
            pass
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(kind: str, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    if kind == "protocol":
        server = await loop.create_server(MinimalProtocol, host, port, backlog=1024, reuse_address=True)
    elif kind == "streams":
        server = await asyncio.start_server(minimal_streams, host, port, backlog=1024, reuse_address=True)
    elif kind == "panoramisk":
        from panoramisk.fast_agi import Application

        async def route(request) -> None:
            await request.send_command(set_target(request.headers).decode().rstrip("\n"))

        app = Application()
        app.add_route("route", route)
        server = await asyncio.start_server(app.handler, host, port, backlog=1024, reuse_address=True)
    else:
        raise SystemExit(f"unknown server kind {kind!r}")
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a minimal FastAGI server to measure against")
    parser.add_argument("kind", choices=("protocol", "streams", "panoramisk"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4573)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the event loop to serve on")
    args = parser.parse_args(argv)
    factory = asyncio.SelectorEventLoop
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.kind, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
