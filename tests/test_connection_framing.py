"""The header block cut into arbitrary TCP segments frames the same as in one piece."""

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asterisk_peer import asterisk_headers, header_block
from conftest import make_config
from fastagi_server.app import App
from fastagi_server.connection import FastAgiConnection
from fastagi_server.server import FastAgiServer


class RecordingTransport(asyncio.Transport):
    def __init__(self):
        super().__init__()
        self.written = b""
        self.closed = False

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data):
        self.written += data

    def close(self):
        self.closed = True

    def abort(self):
        self.closed = True

    def is_closing(self):
        return self.closed


HEADERS = asterisk_headers(caller="+34928000000", caller_name="Jos\u00e9 \u00c1lvarez", arguments=("900", "a: b"))
BLOCK = header_block(HEADERS)


_APPS: dict[str, App] = {}


def app_with(limits: dict) -> App:
    """One app per set of limits, shared by the examples (building one loads the demo directory)."""
    key = repr(sorted(limits.items()))
    if key not in _APPS:
        _APPS[key] = App.from_config(make_config({"limits": limits}))
    return _APPS[key]


def feed(chunks: list[bytes], limits: dict | None = None) -> tuple[FastAgiConnection, RecordingTransport]:
    async def scenario():
        server = FastAgiServer(app_with(limits or {}))
        connection = FastAgiConnection(server)
        transport = RecordingTransport()
        connection.connection_made(transport)
        for chunk in chunks:
            while chunk and not connection.closed:  # the BufferedProtocol path asyncio takes
                buffer = connection.get_buffer(len(chunk))
                piece, chunk = chunk[: len(buffer)], chunk[len(buffer):]
                buffer[: len(piece)] = piece
                connection.buffer_updated(len(piece))
        for _ in range(500):  # let the handler send its first command
            if transport.written or connection.closed:
                break
            await asyncio.sleep(0.002)
        connection.close()
        return connection, transport

    return asyncio.run(scenario())


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)]) if b > a]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0), max_size=12), st.booleans())
def test_any_segmentation_gives_the_same_headers(cuts, crlf):
    block = BLOCK.replace(b"\n", b"\r\n") if crlf else BLOCK
    connection, transport = feed(split(block + b"HANGUP\n", cuts))
    assert connection.env.headers == dict(HEADERS)
    assert connection.arguments == ("900", "a: b")
    assert connection.hung_up  # the line after the block was read as such
    assert transport.written.startswith(b'EXEC MSet "CRM_ROUTE_STATUS=OWNER,')


def test_byte_by_byte():
    connection, transport = feed([BLOCK[i : i + 1] for i in range(len(BLOCK))])
    assert connection.env.headers == dict(HEADERS)
    assert transport.written.startswith(b'GET FULL VARIABLE "${DEVICE_STATE(PJSIP/101)}"')


@pytest.mark.parametrize("block", [b"\n", b"\r\n"])
def test_block_with_no_headers_at_all(block):
    connection, transport = feed([block])
    assert connection.env.headers == {}
    assert b"CRM_ROUTE_STATUS=ERROR" in transport.written  # no script named: the safe fallback


def test_an_empty_line_ends_the_block_wherever_the_chunks_are_cut():
    # The block's end straddles chunks: "\n" | "\n", and "\r\n" | "\r" | "\n".
    connection, _ = feed([b"agi_network_script: route\nagi_callerid: 1\n", b"\n"])
    assert connection.env.headers == {"agi_network_script": "route", "agi_callerid": "1"}
    connection, _ = feed([b"agi_network_script: route\r\nagi_callerid: 1\r\n", b"\r", b"\n"])
    assert connection.env.headers == {"agi_network_script": "route", "agi_callerid": "1"}
    # A line that only starts with a newline does not end the block early.
    connection, _ = feed([b"agi_network_script: route\n", b"agi_callerid: 1\n\n"])
    assert connection.env.headers == {"agi_network_script": "route", "agi_callerid": "1"}


def test_limits_hold_while_the_block_is_incomplete():
    # Too many lines, never finished: refused as soon as the count passes the limit.
    connection, transport = feed([b"agi_x: y\n" * 40, b"agi_x: y\n" * 40], {"max_headers": 64})
    assert connection.closed and transport.written == b""
    # One over-long line spread over many chunks.
    connection, transport = feed([b"agi_x: "] + [b"y" * 100] * 12, {"max_line_bytes": 1024})
    assert connection.closed and transport.written == b""
    # An over-long line that is complete, in the same chunk as the end of the block.
    connection, transport = feed([b"agi_x: " + b"y" * 2000 + b"\n\n"], {"max_line_bytes": 1024})
    assert connection.closed and transport.written == b""


def test_a_closed_connection_is_freed_at_once_not_at_the_next_garbage_collection():
    """Nothing a connection owns points back at it: once closed it goes, with its read
    buffer, by reference counting alone (a cycle made each of thousands of sessions a
    second wait for the collector: 9 MiB more at the peak of the benchmark)."""
    import gc
    import weakref

    gc.collect()
    gc.disable()
    try:
        connection, _ = feed([BLOCK + b"HANGUP\n"])
        connection.connection_lost(None)
        gone = weakref.ref(connection)
        del connection
        assert gone() is None
    finally:
        gc.enable()
