"""The fast path (gateway.fastpath) against hostile clients and misbehaving upstreams.

Most tests run the same bytes through both paths (`fast_path` true and false)
and check that the client and the upstream see the same thing. The upstream
is either tests.mock_upstream (aiohttp, records parsed requests) or
`RawUpstream` below, a plain asyncio server that records every byte it
receives and answers with bytes each test scripts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time

import pytest
from aiohttp import web
from yarl import URL

from gateway.config import Config
from gateway.metrics import Metrics
from tests.conftest import running_gateway
from tests.test_hostile import exchange, parse_response, tls_context

MiB = 1024 * 1024
BOTH_PATHS = pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "aiohttp"])


def gateway_config(url: str, fast_path: bool, **overrides) -> Config:
    config = Config(upstream=URL(url), names=["localhost"], fast_path=fast_path)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


async def read_message(reader: asyncio.StreamReader) -> bytes:
    """Read one HTTP/1.1 message (head and Content-Length or chunked body) as raw bytes."""
    head = await reader.readuntil(b"\r\n\r\n")
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = b""
        while True:
            size_line = await reader.readuntil(b"\r\n")
            body += size_line
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while True:
                    line = await reader.readuntil(b"\r\n")
                    body += line
                    if line == b"\r\n":
                        return head + body
            body += await reader.readexactly(size + 2)
    length = int(fields.get(b"content-length", b"0"))
    return head + await reader.readexactly(length)


class RawUpstream:
    """A plain asyncio server on 127.0.0.1 that records raw requests and runs `serve` per connection."""

    def __init__(self, serve):
        self.serve = serve
        self.requests: list[bytes] = []
        self.connections = 0
        self.closed = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> "RawUpstream":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def read(self, reader) -> bytes:
        message = await read_message(reader)
        self.requests.append(message)
        return message

    async def _handle(self, reader, writer) -> None:
        self.connections += 1
        try:
            await self.serve(self, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed += 1
            writer.close()

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


def scripted(*responses: bytes, keep_open: bool = False):
    """A `serve` that reads one request per response and sends that response."""

    async def serve(upstream, reader, writer):
        for response in responses:
            await upstream.read(reader)
            writer.write(response)
            await writer.drain()
        if keep_open:
            await reader.read()

    return serve


def keepalive(response: bytes):
    """A `serve` that answers every request on the connection with `response`."""

    async def serve(upstream, reader, writer):
        while True:
            await upstream.read(reader)
            writer.write(response)
            await writer.drain()

    return serve


async def open_tls(port: int, local_ca):
    return await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls_context(local_ca), server_hostname="localhost"
    )


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> tuple[int, dict, bytes]:
    """Read one response from the gateway, with its body, leaving the connection open."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status, headers, _ = parse_response(head)
    if method == "HEAD" or status in (204, 304):
        return status, headers, b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await asyncio.wait_for(read_message_body_chunked(reader), 10)
        return status, headers, body
    if "content-length" in headers:
        return status, headers, await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    return status, headers, await asyncio.wait_for(reader.read(), 10)


async def read_message_body_chunked(reader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return body
        body += (await reader.readexactly(size + 2))[:-2]


async def settle(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


OK_EMPTY = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


# --- request framing ---------------------------------------------------------


@BOTH_PATHS
async def test_connection_naming_content_length(local_ca, fast_path):
    """`Connection: content-length` does not strip the framing, so the body is never a request."""
    smuggled = b"DELETE /v2/victim/manifests/latest HTTP/1.1\r\nHost: localhost\r\n\r\n"
    upstream = await RawUpstream(keepalive(OK_EMPTY)).start()
    try:
        async with running_gateway(gateway_config(upstream.url, fast_path), local_ca) as gateway:
            raw = await exchange(
                gateway.bound[0].port,
                tls_context(local_ca),
                b"PUT /v2/x/blobs/uploads/u HTTP/1.1\r\nHost: localhost\r\n"
                b"Connection: content-length, close\r\nContent-Length: %d\r\n\r\n%s"
                % (len(smuggled), smuggled),
            )
            await asyncio.sleep(0.2)
    finally:
        await upstream.stop()
    assert parse_response(raw)[0] == 200
    assert len(upstream.requests) == 1
    assert not any(r.startswith(b"DELETE") for r in upstream.requests)
    assert upstream.requests[0].endswith(smuggled) or b"\r\n" + smuggled in upstream.requests[0]


@BOTH_PATHS
async def test_connection_naming_host(local_ca, fast_path):
    """`Connection: host` still leaves the upstream request with exactly one Host field."""
    upstream = await RawUpstream(keepalive(OK_EMPTY)).start()
    try:
        async with running_gateway(gateway_config(upstream.url, fast_path), local_ca) as gateway:
            raw = await exchange(
                gateway.bound[0].port,
                tls_context(local_ca),
                b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: host, close\r\n\r\n",
            )
    finally:
        await upstream.stop()
    assert parse_response(raw)[0] == 200
    hosts = re.findall(rb"(?im)^host:", upstream.requests[0])
    assert len(hosts) == 1


# --- flow control --------------------------------------------------------------


def blob_server(sizes: dict[bytes, int], sent: dict[bytes, int]):
    """A `serve` that answers GET <path> with a body of sizes[path] bytes, written in steps."""

    async def serve(upstream, reader, writer):
        while True:
            request = await upstream.read(reader)
            path = request.split(b" ")[1]
            size = sizes[path]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            step = b"x" * min(size, 256 * 1024)
            left = size
            sent[path] = 0
            while left:
                piece = step[:left]
                writer.write(piece)
                await writer.drain()
                left -= len(piece)
                sent[path] += len(piece)

    return serve


class RecordingTransport(asyncio.Transport):
    """A client transport with no socket: it records writes and the protocol it is given."""

    def __init__(self):
        super().__init__()
        self.protocol = None
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 443)}.get(name, default)

    def set_protocol(self, protocol):
        self.protocol = protocol

    def get_protocol(self):
        return self.protocol

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def get_write_buffer_size(self):
        return 0

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def is_reading(self):
        return True

    def write(self, data):
        self.written += data

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    def abort(self):
        self.closed = True


async def test_hand_over_keeps_write_pause(local_ca):
    """A connection handed to aiohttp while its transport is paused for writing stays paused.

    The transport calls pause_writing() once, on the protocol it had when its
    buffer crossed the high-water mark, and aiohttp would otherwise write a
    whole blob into that buffer.
    """
    upstream = await RawUpstream(keepalive(OK_EMPTY)).start()
    try:
        async with running_gateway(gateway_config(upstream.url, True), local_ca) as gateway:
            transport = RecordingTransport()
            connection = gateway.fast.protocol()
            connection.connection_made(transport)
            connection.pause_writing()
            connection.data_received(b"GET /v2/ HTTP/1.0\r\nHost: localhost\r\n\r\n")
            handler = transport.protocol
            assert handler is not connection
            assert handler.writing_paused
            handler.resume_writing()
            await settle(lambda: transport.written.startswith(b"HTTP/1.0 200"))
            transport.close()
            handler.connection_lost(None)
    finally:
        await upstream.stop()


def test_trickled_head_costs_linear_time(local_ca):
    """A head sent in small pieces is searched once, not once per piece from its start."""

    async def run():
        upstream = await RawUpstream(keepalive(OK_EMPTY)).start()
        try:
            async with running_gateway(gateway_config(upstream.url, True), local_ca) as gateway:
                transport = RecordingTransport()
                connection = gateway.fast.protocol()
                connection.connection_made(transport)
                head = b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nX-Long: " + b"a" * gateway.fast.head_limit
                started = time.perf_counter()
                for offset in range(0, len(head), 64):
                    connection.data_received(head[offset : offset + 64])
                    if transport.protocol is not None:
                        break
                spent = time.perf_counter() - started
                handler = transport.protocol
                await settle(lambda: transport.closed)
                handler.connection_lost(None)
        finally:
            await upstream.stop()
        return spent, transport.written

    spent, written = asyncio.run(run())
    # Searching the whole buffer for each 64-byte piece takes about 10 s here.
    assert spent < 1.0
    assert parse_response(bytes(written))[0] == 431


# --- accounting ----------------------------------------------------------------


@BOTH_PATHS
async def test_chunked_bytes_counted_without_framing(local_ca, caplog, fast_path):
    """in= and out= and the byte counters count chunk data, not chunk-size lines."""
    response = b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n"
    upstream = await RawUpstream(keepalive(response)).start()
    caplog.set_level(logging.INFO, logger="gateway.access")
    try:
        async with running_gateway(gateway_config(upstream.url, fast_path), local_ca) as gateway:
            metrics = gateway.proxy.metrics = Metrics()
            raw = await exchange(
                gateway.bound[0].port,
                tls_context(local_ca),
                b"PATCH /v2/x/blobs/uploads/u HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            )
    finally:
        await upstream.stop()
    assert parse_response(raw)[0] == 202
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    assert len(lines) == 1
    assert '"PATCH /v2/x/blobs/uploads/u" 202 in=11 out=7 ' in lines[0]
    assert metrics.bytes_in._value.get() == 11
    assert metrics.bytes_out._value.get() == 7


# --- upstream misbehaviour -------------------------------------------------------


@BOTH_PATHS
@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabcd\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    ],
    ids=["cl-and-te", "close-before-body", "bad-chunk-size", "two-lengths"],
)
async def test_broken_response_gives_502(local_ca, fast_path, response):
    """A response the gateway cannot relay safely, and has sent nothing of, becomes a JSON 502."""
    await check_502(local_ca, fast_path, response)


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabcd",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    ],
    ids=["gzip", "101", "obs-fold", "nul", "bare-lf"],
)
async def test_fast_path_strict_response_502(local_ca, response):
    """The fast path answers 502 to response shapes aiohttp's client lets through."""
    await check_502(local_ca, True, response)


async def check_502(local_ca, fast_path: bool, response: bytes) -> None:
    upstream = await RawUpstream(scripted(response)).start()
    try:
        async with running_gateway(gateway_config(upstream.url, fast_path), local_ca) as gateway:
            raw = await exchange(
                gateway.bound[0].port,
                tls_context(local_ca),
                b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            )
    finally:
        await upstream.stop()
    status, headers, body = parse_response(raw)
    assert status == 502
    assert headers["docker-distribution-api-version"] == "registry/2.0"
    assert json.loads(body)["errors"][0]["code"] in ("UNAVAILABLE", "UNKNOWN")
