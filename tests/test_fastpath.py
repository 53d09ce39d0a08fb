"""The fast path (gateway.fastpath) against hostile clients and misbehaving upstreams.

Most tests run the same bytes through both paths (`fast_path` true and false)
and check that the client and the upstream see the same thing. The upstream
is either tests.mock_upstream (aiohttp, records parsed requests) or
`RawUpstream` below, a plain asyncio server that records every byte it
receives and replies with bytes each test scripts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gateway.config import Config
from gateway.metrics import Metrics
from tests.conftest import running_gateway
from tests.mock_upstream import Upstream
from tests.test_hostile import exchange, parse_response, tls_context

MiB = 1024 * 1024
BOTH_PATHS = pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "aiohttp"])


def gateway_config(url: str, fast_path: bool, **overrides) -> Config:
    # A short drain timeout keeps a test that leaves a request hanging from waiting 30 s.
    config = Config(upstream=URL(url), names=["localhost"], fast_path=fast_path, drain_timeout=2.0)
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
    """A `serve` that replies to every request on the connection with `response`."""

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
        body = await asyncio.wait_for(read_chunked_body(reader), 10)
        return status, headers, body
    if "content-length" in headers:
        return status, headers, await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    return status, headers, await asyncio.wait_for(reader.read(), 10)


async def read_chunked_body(reader) -> bytes:
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
    """A `serve` that replies to GET <path> with a body of sizes[path] bytes, written in steps."""

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
    # Searching the whole buffer again for each 64-byte piece took about 10 s in one run.
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
    """The fast path responds with 502 to response shapes aiohttp's client lets through."""
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


# --- both paths respond the same ------------------------------------------------


def req(method: bytes, fields: bytes = b"", body: bytes = b"", target: bytes = b"/v2/x/blobs/uploads/u") -> bytes:
    return method + b" " + target + b" HTTP/1.1\r\nHost: localhost\r\n" + fields + b"\r\n" + body


CHUNKED = b"Transfer-Encoding: chunked\r\n"
CLOSE = b"Connection: close\r\n"

# Each input ends with a request that has `Connection: close`, or one the gateway rejects.
SAME_ANSWER = {
    "te-capitals": req(b"PATCH", b"Transfer-Encoding: Chunked\r\n" + CLOSE, b"5\r\nhello\r\n0\r\n\r\n"),
    "te-spaces": req(b"PATCH", b"Transfer-Encoding:   chunked  \r\n" + CLOSE, b"5\r\nhello\r\n0\r\n\r\n"),
    "te-tab": req(b"PATCH", b"Transfer-Encoding:\tchunked\r\n" + CLOSE, b"5\r\nhello\r\n0\r\n\r\n"),
    "te-gzip-chunked": req(b"PATCH", b"Transfer-Encoding: gzip, chunked\r\n" + CLOSE, b"5\r\nhello\r\n0\r\n\r\n"),
    "te-twice": req(b"PATCH", CHUNKED + CHUNKED + CLOSE, b"5\r\nhello\r\n0\r\n\r\n"),
    "te-chunked-chunked": req(b"PATCH", b"Transfer-Encoding: chunked, chunked\r\n" + CLOSE, b"0\r\n\r\n"),
    "cl-and-te": req(b"PATCH", b"Content-Length: 3\r\n" + CHUNKED + CLOSE, b"0\r\n\r\n"),
    "te-and-cl": req(b"PATCH", CHUNKED + b"Content-Length: 3\r\n" + CLOSE, b"0\r\n\r\n"),
    "cl-twice-same": req(b"PUT", b"Content-Length: 5\r\nContent-Length: 5\r\n" + CLOSE, b"hello"),
    "cl-list": req(b"PUT", b"Content-Length: 5, 5\r\n" + CLOSE, b"hello"),
    "cl-leading-zeros": req(b"PUT", b"Content-Length: 005\r\n" + CLOSE, b"hello"),
    "cl-negative": req(b"PUT", b"Content-Length: -1\r\n" + CLOSE, b"hello"),
    "cl-hex": req(b"PUT", b"Content-Length: 0x5\r\n" + CLOSE, b"hello"),
    "cl-too-long": req(b"PUT", b"Content-Length: 100000000000000000000\r\n" + CLOSE, b"hello"),
    "space-before-colon": req(b"PUT", b"Content-Length : 5\r\n" + CLOSE, b"hello"),
    "obs-fold": req(b"GET", b"X-A: a\r\n  folded\r\n" + CLOSE),
    "nul-in-value": req(b"GET", b"X-A: a\x00b\r\n" + CLOSE),
    "bare-cr-in-value": req(b"GET", b"X-A: a\rb\r\n" + CLOSE),
    "control-byte": req(b"GET", b"X-A: a\x01b\r\n" + CLOSE),
    "del-byte": req(b"GET", b"X-A: a\x7fb\r\n" + CLOSE),
    "bare-lf-line": b"GET /v2/ HTTP/1.1\r\nHost: localhost\nConnection: close\r\n\r\n",
    "bare-lf-end": b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\n\n",
    "absolute-form": req(b"GET", CLOSE, target=b"http://other.example/v2/"),
    "asterisk": req(b"OPTIONS", CLOSE, target=b"*"),
    "fragment": req(b"GET", CLOSE, target=b"/v2/a#fragment"),
    "http10": b"GET /v2/ HTTP/1.0\r\nHost: localhost\r\n\r\n",
    "http10-no-host": b"GET /v2/ HTTP/1.0\r\n\r\n",
    "no-host": b"GET /v2/ HTTP/1.1\r\nConnection: close\r\n\r\n",
    "two-hosts": b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nHost: other\r\nConnection: close\r\n\r\n",
    "lowercase-method": req(b"get", CLOSE),
    "two-spaces": b"GET  /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    "leading-crlf": b"\r\n" + req(b"GET", CLOSE),
    "upgrade": req(b"GET", b"Connection: Upgrade, close\r\nUpgrade: h2c\r\n"),
    "get-with-body": req(b"GET", b"Content-Length: 5\r\n" + CLOSE, b"hello"),
    "chunk-leading-zeros": req(b"PATCH", CHUNKED + CLOSE, b"0005\r\nhello\r\n0000\r\n\r\n"),
    "chunk-16-digits": req(b"PATCH", CHUNKED + CLOSE, b"0000000000000005\r\nhello\r\n0\r\n\r\n"),
    "chunk-17-digits": req(b"PATCH", CHUNKED + CLOSE, b"00000000000000005\r\nhello\r\n0\r\n\r\n"),
    "chunk-huge": req(b"PATCH", CHUNKED + CLOSE, b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
    "chunk-extension": req(b"PATCH", CHUNKED + CLOSE, b"5;name=value\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-space": req(b"PATCH", CHUNKED + CLOSE, b"5 \r\nhello\r\n0\r\n\r\n"),
    "chunk-bare-lf": req(b"PATCH", CHUNKED + CLOSE, b"5\nhello\r\n0\r\n\r\n"),
    "chunk-data-too-long": req(b"PATCH", CHUNKED + CLOSE, b"5\r\nhello!\r\n0\r\n\r\n"),
    "chunk-negative": req(b"PATCH", CHUNKED + CLOSE, b"-5\r\nhello\r\n0\r\n\r\n"),
    "trailer": req(b"PATCH", CHUNKED + CLOSE, b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"),
    "trailer-obs-fold": req(b"PATCH", CHUNKED + CLOSE, b"5\r\nhello\r\n0\r\nX-T: 1\r\n 2\r\n\r\n"),
    "pipelined-gets": req(b"GET", target=b"/v2/a") + req(b"HEAD", target=b"/v2/b") + req(b"GET", CLOSE, target=b"/v2/c"),
    "body-then-request": req(b"PUT", b"Content-Length: 5\r\n", b"hello") + req(b"GET", CLOSE, target=b"/v2/next"),
    "chunked-then-request": req(b"PATCH", CHUNKED, b"5\r\nhello\r\n0\r\n\r\n") + req(b"GET", CLOSE, target=b"/v2/next"),
    "fast-then-handed-over": req(b"GET", target=b"/v2/a") + b"GET /v2/b HTTP/1.0\r\nHost: localhost\r\n\r\n",
    "handed-over-then-fast": b"GET /v2/a HTTP/1.1\r\nConnection: close\r\n\r\n" + req(b"GET", CLOSE, target=b"/v2/b"),
    "gateway-path": req(b"GET", CLOSE, target=b"/_gateway/nothing"),
    "field-just-under": req(b"GET", b"X-Big: " + b"b" * 8180 + b"\r\n" + CLOSE),
    "field-just-over": req(b"GET", b"X-Big: " + b"b" * 8200 + b"\r\n" + CLOSE),
    "line-just-under": req(b"GET", CLOSE, target=b"/v2/" + b"a" * 8170),
    "line-just-over": req(b"GET", CLOSE, target=b"/v2/" + b"a" * 8200),
}


async def exchange_until_close(port: int, local_ca, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data` and read until the gateway closes, or `timeout` passes."""
    reader, writer = await open_tls(port, local_ca)
    writer.write(data)
    await writer.drain()
    received = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                piece = await asyncio.wait_for(reader.read(65536), deadline - time.monotonic())
            except (TimeoutError, ConnectionError):
                break
            if not piece:
                break
            received += piece
    finally:
        writer.close()
    return received


async def run_through(fast_path: bool, local_ca, data: bytes):
    upstream = Upstream()
    await upstream.start()
    try:
        async with running_gateway(gateway_config(upstream.url, fast_path), local_ca) as gateway:
            raw = await exchange_until_close(gateway.bound[0].port, local_ca, data)
    finally:
        await upstream.stop()
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3})", raw)]
    reached = [(r["method"], r["raw_path"], r["body"]) for r in upstream.received]
    return statuses, reached


@pytest.mark.parametrize("name", sorted(SAME_ANSWER))
async def test_same_answer_on_both_paths(local_ca, name):
    """The same bytes get the same statuses, and the upstream the same requests, on both paths."""
    fast = await run_through(True, local_ca, SAME_ANSWER[name])
    slow = await run_through(False, local_ca, SAME_ANSWER[name])
    assert fast[0] == slow[0]
    assert fast[1] == slow[1]
    assert fast[0]


async def test_nothing_after_connection_close(local_ca):
    """A request after one with `Connection: close` never reaches the upstream.

    aiohttp's parser responds to the pair with 400 instead, because llhttp rejects
    bytes after a closing request; the fast path serves the first request.
    """
    data = req(b"PUT", b"Content-Length: 5\r\n" + CLOSE, b"hello") + req(b"DELETE", target=b"/v2/never")
    statuses, reached = await run_through(True, local_ca, data)
    assert statuses == [200]
    assert reached == [("PUT", "/v2/x/blobs/uploads/u", b"hello")]


async def test_head_split_byte_by_byte(local_ca):
    """Pipelined requests sent one byte per TLS record arrive upstream whole and once each."""
    data = (
        req(b"PUT", b"Content-Length: 5\r\n", b"hello")
        + req(b"PATCH", CHUNKED, b"3\r\nabc\r\n0\r\n\r\n")
        + b"GET /v2/old HTTP/1.0\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n"
        + req(b"GET", CLOSE, target=b"/v2/last")
    )
    upstream = Upstream()
    await upstream.start()
    try:
        async with running_gateway(gateway_config(upstream.url, True), local_ca) as gateway:
            reader, writer = await open_tls(gateway.bound[0].port, local_ca)
            for byte in data:
                writer.write(bytes([byte]))
                await writer.drain()
            raw = await asyncio.wait_for(reader.read(), 10)
            writer.close()
    finally:
        await upstream.stop()
    assert [int(c) for c in re.findall(rb"HTTP/1\.[01] (\d{3})", raw)] == [200, 200, 200, 200]
    assert [(r["method"], r["raw_path"], r["body"]) for r in upstream.received] == [
        ("PUT", "/v2/x/blobs/uploads/u", b"hello"),
        ("PATCH", "/v2/x/blobs/uploads/u", b"abc"),
        ("GET", "/v2/old", b""),
        ("GET", "/v2/last", b""),
    ]


# --- upstream misbehaviour, on one client connection -------------------------------


async def two_requests(fast_path: bool, local_ca, serve, first: bytes = b"GET", **overrides):
    """Send two requests on one client connection; return both responses and the upstream."""
    upstream = await RawUpstream(serve).start()
    try:
        config = gateway_config(upstream.url, fast_path, **overrides)
        async with running_gateway(config, local_ca) as gateway:
            reader, writer = await open_tls(gateway.bound[0].port, local_ca)
            responses = []
            for method in (first, b"GET"):
                writer.write(method + b" /v2/a HTTP/1.1\r\nHost: localhost\r\n\r\n")
                await writer.drain()
                responses.append(await read_response(reader, method.decode()))
            writer.close()
    finally:
        await upstream.stop()
    return responses, upstream


def per_connection(*responses: bytes, then_close: bool = False):
    """A `serve` that replies to the n-th request on each connection with responses[n]."""

    async def serve(upstream, reader, writer):
        for response in responses:
            await upstream.read(reader)
            writer.write(response)
            await writer.drain()
        if not then_close:
            await reader.read()

    return serve


@BOTH_PATHS
@pytest.mark.parametrize(
    ("name", "serve", "connections"),
    [
        ("interim-100", per_connection(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"one"), ok(b"two")), 1),
        ("interim-103", per_connection(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok(b"one"), ok(b"two")), 1),
        ("connection-close", per_connection(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\none", then_close=True), 2),
        ("http10-response", per_connection(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\none", then_close=True), 2),
        ("extra-bytes", per_connection(ok(b"one") + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra"), 2),
        ("idle-close", per_connection(ok(b"one"), then_close=True), 2),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
async def test_upstream_connection_quirks(local_ca, fast_path, name, serve, connections):
    """Each upstream quirk still gives the client both bodies, on fresh upstream connections where needed."""
    responses, upstream = await two_requests(fast_path, local_ca, serve)
    statuses = [r[0] for r in responses]
    bodies = [r[2] for r in responses]
    assert statuses == [200, 200]
    assert bodies[0] == b"one"
    assert bodies[1] in (b"one", b"two")
    assert upstream.connections == connections
    assert len(upstream.requests) == 2


@BOTH_PATHS
@pytest.mark.parametrize(
    ("method", "response"),
    [
        (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"),
        (b"GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\n\r\n"),
    ],
    ids=["head", "204", "304"],
)
async def test_bodyless_responses_keep_connection(local_ca, fast_path, method, response):
    """HEAD, 204 and 304 carry no body, so the next response on the connection is intact."""
    responses, upstream = await two_requests(fast_path, local_ca, per_connection(response, ok(b"two")), first=method)
    assert responses[0][2] == b""
    if method == b"HEAD":
        assert responses[0][1]["content-length"] == "1234"
    assert responses[1][2] == b"two"
    assert upstream.connections == 1


@BOTH_PATHS
async def test_response_until_close(local_ca, fast_path):
    """A response without a length is relayed to its end, which the upstream marks by closing."""
    body = b"z" * 300_000
    upstream = await RawUpstream(scripted(b"HTTP/1.1 200 OK\r\n\r\n" + body)).start()
    try:
        async with running_gateway(gateway_config(upstream.url, fast_path), local_ca) as gateway:
            reader, writer = await open_tls(gateway.bound[0].port, local_ca)
            writer.write(b"GET /v2/a HTTP/1.1\r\nHost: localhost\r\n\r\n")
            status, _, received = await read_response(reader)
            writer.close()
    finally:
        await upstream.stop()
    assert status == 200
    assert received == body


@BOTH_PATHS
async def test_upstream_close_mid_body(local_ca, fast_path, caplog):
    """An upstream that closes mid-body cuts the client connection; the short body is logged."""
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"y" * 200_000
    upstream = await RawUpstream(scripted(response)).start()
    caplog.set_level(logging.INFO, logger="gateway.access")
    try:
        async with running_gateway(gateway_config(upstream.url, fast_path), local_ca) as gateway:
            raw = await exchange_until_close(
                gateway.bound[0].port, local_ca, b"GET /v2/a HTTP/1.1\r\nHost: localhost\r\n\r\n"
            )
    finally:
        await upstream.stop()
    status, headers, body = parse_response(raw)
    assert status == 200
    assert headers["content-length"] == "1000000"
    assert len(body) == 200_000
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    assert len(lines) == 1
    assert '"GET /v2/a" 200 in=0 out=200000 ' in lines[0]
    warnings = [r.getMessage() for r in caplog.records if r.name == "gateway.proxy"]
    assert any("broke off the response body after 200000 bytes" in w for w in warnings)


async def test_bad_chunk_mid_body_logged(local_ca, caplog):
    """A malformed chunk after body bytes went out cuts the client off with a warning and a count.

    Fast path only: aiohttp 3.14's client does not report this chunk, so
    aiohttp's path waits for more body until upstream.idle_timeout.
    """
    fast_path = True

    async def serve(upstream, reader, writer):
        await upstream.read(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(b"zz\r\n")
        await reader.read()

    upstream = await RawUpstream(serve).start()
    try:
        async with running_gateway(gateway_config(upstream.url, fast_path), local_ca) as gateway:
            metrics = gateway.proxy.metrics = Metrics()
            reader, writer = await open_tls(gateway.bound[0].port, local_ca)
            writer.write(b"GET /v2/a HTTP/1.1\r\nHost: localhost\r\n\r\n")
            await asyncio.wait_for(reader.readuntil(b"abcd"), 5)
            rest = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            broken = metrics.upstream_errors.labels("broke off the response")._value.get()
    finally:
        await upstream.stop()
    assert not rest.endswith(b"0\r\n\r\n")
    assert broken == 1
    warnings = [r.getMessage() for r in caplog.records if r.name == "gateway.proxy"]
    assert any("broke off the response body after 4 bytes" in w for w in warnings)


# --- disconnects and flow control ---------------------------------------------------


@BOTH_PATHS
async def test_client_gone_mid_response(local_ca, fast_path, caplog):
    """A client that disconnects mid-response gets its upstream connection closed, not pooled."""
    caplog.set_level(logging.INFO, logger="gateway.access")
    sent: dict[bytes, int] = {}
    upstream = await RawUpstream(blob_server({b"/v2/a/blobs/big": 256 * MiB}, sent)).start()
    try:
        async with running_gateway(gateway_config(upstream.url, fast_path), local_ca) as gateway:
            reader, writer = await open_tls(gateway.bound[0].port, local_ca)
            writer.write(b"GET /v2/a/blobs/big HTTP/1.1\r\nHost: localhost\r\n\r\n")
            await reader.readexactly(100_000)
            writer.transport.abort()
            await settle(lambda: upstream.closed == 1)
            if gateway.fast is not None:
                assert all(not pool.idle for pool in gateway.fast.pools.values() if pool)
    finally:
        await upstream.stop()
    assert sent[b"/v2/a/blobs/big"] < 256 * MiB
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    assert len(lines) == 1
    assert '"GET /v2/a/blobs/big" 200 ' in lines[0]


def slow_reader(delay: float):
    """A `serve` that reads the request head, then its body in slow steps, and never replies."""

    async def serve(upstream, reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        upstream.requests.append(head)
        upstream.body_read = 0
        while True:
            piece = await reader.read(65536)
            if not piece:
                return
            upstream.body_read += len(piece)
            await asyncio.sleep(delay)

    return serve


@BOTH_PATHS
async def test_client_gone_mid_upload(local_ca, fast_path):
    """A client that disconnects mid-upload gets its upstream connection closed."""
    upstream = await RawUpstream(slow_reader(0)).start()
    try:
        async with running_gateway(gateway_config(upstream.url, fast_path), local_ca) as gateway:
            reader, writer = await open_tls(gateway.bound[0].port, local_ca)
            writer.write(
                b"PUT /v2/a/blobs/uploads/u HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10000000\r\n\r\n"
                + b"u" * 300_000
            )
            await writer.drain()
            await settle(lambda: getattr(upstream, "body_read", 0) >= 300_000)
            writer.transport.abort()
            await settle(lambda: upstream.closed == 1)
    finally:
        await upstream.stop()


@BOTH_PATHS
async def test_unread_response_pauses_upstream(local_ca, fast_path):
    """A client that stops reading a large response makes the gateway stop reading the upstream."""
    sent: dict[bytes, int] = {}
    upstream = await RawUpstream(blob_server({b"/v2/a/blobs/big": 512 * MiB}, sent)).start()
    try:
        async with running_gateway(gateway_config(upstream.url, fast_path), local_ca) as gateway:
            reader, writer = await open_tls(gateway.bound[0].port, local_ca)
            writer.write(b"GET /v2/a/blobs/big HTTP/1.1\r\nHost: localhost\r\n\r\n")
            await reader.readexactly(1000)
            await asyncio.sleep(1.0)
            first = sent[b"/v2/a/blobs/big"]
            await asyncio.sleep(1.0)
            second = sent[b"/v2/a/blobs/big"]
            writer.transport.abort()
    finally:
        await upstream.stop()
    # Kernel buffers on both loopback sockets and the gateway's own hold a few MiB.
    assert first < 64 * MiB
    assert second == first


@BOTH_PATHS
async def test_fast_upload_slow_upstream(local_ca, fast_path):
    """A client uploading faster than the upstream reads is held back, not buffered."""
    upstream = await RawUpstream(slow_reader(0.05)).start()
    try:
        async with running_gateway(gateway_config(upstream.url, fast_path), local_ca) as gateway:
            reader, writer = await open_tls(gateway.bound[0].port, local_ca)
            writer.write(
                b"PUT /v2/a/blobs/uploads/u HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000000\r\n\r\n"
            )
            piece = b"u" * MiB
            written = 0
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and written < 200 * MiB:
                writer.write(piece)
                try:
                    await asyncio.wait_for(writer.drain(), max(0.01, deadline - time.monotonic()))
                except TimeoutError:
                    break
                written += len(piece)
            read = upstream.body_read
            writer.transport.abort()
    finally:
        await upstream.stop()
    # The upstream reads about 1.3 MiB/s; the rest may sit only in socket buffers.
    assert written - read < 48 * MiB


# --- timeouts --------------------------------------------------------------------


@BOTH_PATHS
async def test_slow_head_cut_after_fast_request(local_ca, fast_path):
    """header_timeout applies to the second head on a connection too, counted from its first byte."""
    upstream = await RawUpstream(keepalive(ok(b"one"))).start()
    try:
        config = gateway_config(upstream.url, fast_path, header_timeout=0.5)
        async with running_gateway(config, local_ca) as gateway:
            reader, writer = await open_tls(gateway.bound[0].port, local_ca)
            writer.write(b"GET /v2/a HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert (await read_response(reader))[2] == b"one"
            started = time.monotonic()
            closed = False
            for byte in b"GET /v2/b HTTP/1.1\r\nHost: loc":
                try:
                    writer.write(bytes([byte]))
                    await writer.drain()
                except ConnectionError:
                    closed = True
                    break
                await asyncio.sleep(0.1)
            try:
                rest = await asyncio.wait_for(reader.read(), 5)
            except ConnectionResetError:
                # The cut is an abort, which reaches a client still sending as a reset.
                rest, closed = b"", True
            elapsed = time.monotonic() - started
            writer.close()
    finally:
        await upstream.stop()
    assert rest == b"" or closed
    assert elapsed < 3.0
    assert len(upstream.requests) == 1


@BOTH_PATHS
async def test_upstream_silent_gives_504(local_ca, fast_path):
    """An upstream that never replies gets a 504 after upstream.idle_timeout."""

    async def silent(upstream, reader, writer):
        await upstream.read(reader)
        await reader.read()

    upstream = await RawUpstream(silent).start()
    try:
        config = gateway_config(upstream.url, fast_path, idle_timeout=0.5)
        async with running_gateway(config, local_ca) as gateway:
            started = time.monotonic()
            raw = await exchange_until_close(
                gateway.bound[0].port, local_ca, b"GET /v2/a HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )
            elapsed = time.monotonic() - started
            await settle(lambda: upstream.closed == 1)
    finally:
        await upstream.stop()
    assert parse_response(raw)[0] == 504
    assert elapsed < 4.0


@BOTH_PATHS
async def test_upstream_head_then_silence_gives_504(local_ca, fast_path):
    """A head with no body byte after it within idle_timeout gets a 504 on the fast path."""

    async def stall(upstream, reader, writer):
        await upstream.read(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        await reader.read()

    upstream = await RawUpstream(stall).start()
    try:
        config = gateway_config(upstream.url, fast_path, idle_timeout=0.5)
        async with running_gateway(config, local_ca) as gateway:
            raw = await exchange_until_close(
                gateway.bound[0].port, local_ca, b"GET /v2/a HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )
    finally:
        await upstream.stop()
    # aiohttp's path reads a small body whole, so its read timeout becomes a 502.
    assert parse_response(raw)[0] == (504 if fast_path else 502)


@BOTH_PATHS
async def test_stalled_upload_after_first_bytes(local_ca, fast_path):
    """An upload that stalls once the upstream has its first bytes is closed after client_idle_timeout."""
    upstream = await RawUpstream(slow_reader(0)).start()
    try:
        config = gateway_config(upstream.url, fast_path, client_idle_timeout=0.5)
        async with running_gateway(config, local_ca) as gateway:
            started = time.monotonic()
            raw = await exchange_until_close(
                gateway.bound[0].port,
                local_ca,
                b"PUT /v2/a/blobs/uploads/u HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\nabc",
            )
            elapsed = time.monotonic() - started
            await settle(lambda: upstream.closed == 1)
    finally:
        await upstream.stop()
    assert elapsed < 4.0
    assert upstream.body_read == 3
    if raw:
        assert parse_response(raw)[0] == 408


# --- connections, metrics and shutdown ----------------------------------------------


@BOTH_PATHS
async def test_open_connections_counted_once(local_ca, fast_path):
    """open_connections counts each client connection once, also after a hand-over."""
    upstream = await RawUpstream(keepalive(ok(b"one"))).start()
    try:
        async with running_gateway(gateway_config(upstream.url, fast_path), local_ca) as gateway:
            metrics = gateway.proxy.metrics = Metrics()
            port = gateway.bound[0].port
            open_clients = []
            for _ in range(3):
                reader, writer = await open_tls(port, local_ca)
                writer.write(b"GET /v2/a HTTP/1.1\r\nHost: localhost\r\n\r\n")
                assert (await read_response(reader))[0] == 200
                open_clients.append((reader, writer))
            reader, writer = open_clients[0]
            writer.write(b"GET /v2/b HTTP/1.0\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n")
            assert (await read_response(reader))[0] == 200
            await asyncio.sleep(0.1)
            assert gateway.open_connections == 3
            assert gateway.proxy.in_flight == 0
            counted = metrics.requests.labels("GET", "200")._value.get()
            assert counted == 4
            assert metrics.bytes_out._value.get() == 12
            for _, writer in open_clients:
                writer.close()
            await settle(lambda: gateway.open_connections == 0)
    finally:
        await upstream.stop()


@BOTH_PATHS
async def test_max_connections_with_busy_connections(local_ca, fast_path):
    """Past limits.max_connections a new client gets a 503 while the held ones keep working."""
    upstream = await RawUpstream(keepalive(ok(b"one"))).start()
    try:
        config = gateway_config(upstream.url, fast_path, max_connections=2)
        async with running_gateway(config, local_ca) as gateway:
            port = gateway.bound[0].port
            open_clients = []
            for _ in range(2):
                reader, writer = await open_tls(port, local_ca)
                writer.write(b"GET /v2/a HTTP/1.1\r\nHost: localhost\r\n\r\n")
                assert (await read_response(reader))[0] == 200
                open_clients.append((reader, writer))
            raw = await exchange_until_close(port, local_ca, b"GET /v2/a HTTP/1.1\r\nHost: localhost\r\n\r\n")
            reader, writer = open_clients[1]
            writer.write(b"GET /v2/a HTTP/1.1\r\nHost: localhost\r\n\r\n")
            again = await read_response(reader)
            for _, writer in open_clients:
                writer.close()
    finally:
        await upstream.stop()
    assert parse_response(raw)[0] == 503
    assert again[0] == 200


@BOTH_PATHS
async def test_stop_drains_transfer_in_flight(local_ca, fast_path):
    """Gateway.stop() (what SIGTERM runs) lets a running download finish and closes idle connections."""

    async def slow_blob(upstream, reader, writer):
        while True:
            await upstream.read(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (20 * 65536))
            for _ in range(20):
                writer.write(b"d" * 65536)
                await writer.drain()
                await asyncio.sleep(0.05)

    upstream = await RawUpstream(slow_blob).start()
    try:
        async with running_gateway(gateway_config(upstream.url, fast_path), local_ca) as gateway:
            port = gateway.bound[0].port
            idle_reader, idle_writer = await open_tls(port, local_ca)
            idle_writer.write(b"GET /v2/a HTTP/1.1\r\nHost: localhost\r\n\r\n")
            await read_response(idle_reader)
            reader, writer = await open_tls(port, local_ca)
            writer.write(b"GET /v2/a HTTP/1.1\r\nHost: localhost\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            stopping = asyncio.create_task(gateway.stop())
            idle_end = await asyncio.wait_for(idle_reader.read(), 2)
            body = await asyncio.wait_for(reader.readexactly(20 * 65536), 10)
            await asyncio.wait_for(stopping, 10)
            idle_writer.close()
            writer.close()
    finally:
        await upstream.stop()
    assert idle_end == b""
    assert body == b"d" * (20 * 65536)


@BOTH_PATHS
async def test_concurrent_uploads_and_downloads(local_ca, fast_path, client_ssl):
    """64 concurrent uploads and downloads through the mock upstream all arrive intact."""
    blob = bytes(range(256)) * 4096

    async def reply(request):
        if request.method == "GET":
            return web.Response(body=blob)
        return web.Response(status=201, body=str(len(await request.read())).encode())

    upstream = Upstream()
    upstream.handle = reply
    await upstream.start()
    try:
        async with running_gateway(gateway_config(upstream.url, fast_path), local_ca) as gateway:
            base = f"https://localhost:{gateway.bound[0].port}"
            connector = aiohttp.TCPConnector(ssl=client_ssl, limit=128)
            async with aiohttp.ClientSession(connector=connector) as session:

                async def download(i):
                    async with session.get(f"{base}/v2/a/blobs/{i}") as response:
                        return await response.read() == blob

                async def upload(i):
                    async with session.put(f"{base}/v2/a/blobs/uploads/{i}", data=blob) as response:
                        return await response.read() == str(len(blob)).encode()

                results = await asyncio.gather(*(download(i) for i in range(32)), *(upload(i) for i in range(32)))
            assert gateway.proxy.in_flight == 0
    finally:
        await upstream.stop()
    assert all(results)


def close_on_second_request():
    """A `serve` that replies to the first request on its first connection, then closes on the next."""

    async def serve(upstream, reader, writer):
        first = upstream.connections == 1
        await upstream.read(reader)
        writer.write(ok(b"one" if first else b"two"))
        await writer.drain()
        if first:
            await upstream.read(reader)
            return
        await reader.read()

    return serve


@BOTH_PATHS
async def test_kept_alive_connection_closed_in_flight(local_ca, fast_path):
    """A GET on a pooled connection the upstream closes instead of replying is sent again."""
    responses, upstream = await two_requests(fast_path, local_ca, close_on_second_request())
    assert [r[2] for r in responses] == [b"one", b"two"]
    assert upstream.connections == 2
    assert len(upstream.requests) == 3


@BOTH_PATHS
async def test_put_on_closed_connection_not_resent(local_ca, fast_path):
    """A PUT with a body on a pooled connection the upstream closes gets a 502 and is not sent twice."""
    upstream = await RawUpstream(close_on_second_request()).start()
    try:
        async with running_gateway(gateway_config(upstream.url, fast_path), local_ca) as gateway:
            reader, writer = await open_tls(gateway.bound[0].port, local_ca)
            writer.write(b"GET /v2/a HTTP/1.1\r\nHost: localhost\r\n\r\n")
            first = await read_response(reader)
            writer.write(b"PUT /v2/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello")
            second = await read_response(reader)
            writer.close()
    finally:
        await upstream.stop()
    assert first[2] == b"one"
    assert second[0] == 502
    assert len(upstream.requests) == 2


async def dead_upstream_url() -> str:
    """A loopback URL on which nothing listens."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    "data",
    [
        req(b"PUT", b"Content-Length: 5\r\n", b"hello") + req(b"GET", CLOSE, target=b"/v2/next"),
        req(b"PATCH", CHUNKED, b"5\r\nhello\r\n0\r\n\r\n") + req(b"GET", CLOSE, target=b"/v2/next"),
        req(b"GET") + req(b"HEAD") + req(b"GET", CLOSE),
    ],
    ids=["length", "chunked", "pipelined-gets"],
)
async def test_unreachable_upstream_replayed(local_ca, data):
    """With the upstream down, each request gets aiohttp's 502, whole and in order, on both paths."""
    results = []
    for fast_path in (True, False):
        url = await dead_upstream_url()
        async with running_gateway(gateway_config(url, fast_path), local_ca) as gateway:
            raw = await exchange_until_close(gateway.bound[0].port, local_ca, data)
        results.append([int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3})", raw)])
    assert results[0] == results[1]
    assert set(results[0]) == {502}
