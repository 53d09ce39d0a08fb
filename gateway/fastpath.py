"""The fast path: the common registry requests relayed between sockets with little Python.

aiohttp's server and client build a request object, a response object, a
header multidict and a body stream for every request, and that costs about
five times what nginx spends on a manifest HEAD. Most of what a registry receives is
plain: GET and HEAD of manifests and blobs, and uploads with a Content-Length or
a chunked body. This module serves those on each TLS connection with one
asyncio protocol per side:

- The request head is parsed here, strictly. Some heads are never served
  here: HTTP/1.0, an `Expect` other than 100-continue, `Upgrade`, both or
  several framing fields, a field with control bytes, an oversized head, a
  `/_gateway/` path, a request without a client certificate where one is
  required. Their connection is handed, with every byte still unread, to
  aiohttp's handler (`gateway.protocol`), which serves it and the rest of that
  connection as before. The hand-over happens only between requests, so no
  byte is ever lost or read twice. Passwords (`[auth]`) are checked here, with
  bcrypt in a thread and then the cache.
- Bodies are forwarded as they arrive, in both directions, with each side's
  framing checked on the way through: a Content-Length is counted down, and a
  chunked body is scanned chunk by chunk (`ChunkScanner`) and relayed as sent,
  so the registry receives exactly the message boundaries the gateway read.
- Flow control: when one side's send buffer fills, reading from the other
  side pauses, so memory stays flat for any blob size.
- When the registry answers before the request body has ended, the rest of
  the body is read and discarded, not relayed, and the connection closes at
  the body's end or after a bounded time or byte count (`_linger`).
- Timeouts are checked once per `SWEEP_INTERVAL` for every connection instead
  of one timer per read, so the hot path only counts progress.

What leaves the gateway is the same as on aiohttp's path: the hop-by-hop fields
are dropped, X-Forwarded-* are set, Location, Link and the Bearer realm are
rewritten (`gateway.rewrite`), errors are registry JSON, and the access log and
metrics get the same line and counters. When the registry cannot be reached, a
request that has sent nothing upstream yet is replayed on aiohttp's path, so
its 502 and log lines are the ones `gateway.proxy` writes.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import time
from collections import deque
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import CIMultiDict

from gateway import status
from gateway.logs import RateLimitedLog
from gateway.proxy import (
    API_VERSION,
    API_VERSION_HEADER,
    FORWARDING,
    HOP_BY_HOP,
    ACCESS,
    access_line,
    loggable_path,
    new_request_id,
    redacted_headers,
    registry_error,
    unauthorized,
    upstream_log,
    widen_tls_reads,
)
from gateway.rewrite import MalformedURL

if TYPE_CHECKING:
    from gateway.protocol import GatewayServer
    from gateway.proxy import Proxy

log = logging.getLogger("gateway.fastpath")
rejected_log = RateLimitedLog(logging.getLogger("gateway.server"))

FAST_METHODS = frozenset((b"GET", b"HEAD", b"PUT", b"PATCH", b"POST", b"DELETE"))
BODYLESS_METHODS = frozenset((b"GET", b"HEAD", b"DELETE"))
REPLAYABLE = frozenset((b"GET", b"HEAD"))
# Every header line: a token, a colon, then visible bytes, SP and HTAB only.
_HEADER_LINES = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*\Z")
# No "#": a fragment is not part of a request target (RFC 9112 section 3.2), and
# aiohttp's path drops it before the path reaches the upstream.
_TARGET = re.compile(rb"/[\x21\x22\x24-\x7e]*\Z")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}\Z")
_DIGITS = re.compile(rb"[0-9]{1,19}\Z")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: ([\t\x20-\x7e\x80-\xff]*))?\Z")

_HOP_BY_HOP = frozenset(name.encode() for name in HOP_BY_HOP)
_FORWARDING = frozenset(name.encode() for name in FORWARDING)
# Fields that send the request to aiohttp's path whenever they are present.
_HAND_OVER_FIELDS = frozenset((b"upgrade", b"http2-settings"))
_NOT_NAMEABLE = frozenset((b"close", b"keep-alive", b"", b"host", b"content-length"))
_REWRITTEN = frozenset((b"location", b"content-location", b"link", b"www-authenticate"))
# Response fields that _response_head looks at; every other one passes as written.
_RESPONSE_SPECIAL = (
    frozenset((b"content-length", b"transfer-encoding", b"connection", API_VERSION_HEADER.lower().encode()))
    | _HOP_BY_HOP | _REWRITTEN
)
# Request fields that parse_request_head looks at; every other one passes as written.
_REQUEST_SPECIAL = (
    frozenset((b"host", b"content-length", b"transfer-encoding", b"connection", b"authorization", b"expect"))
    | _HAND_OVER_FIELDS | _HOP_BY_HOP | _FORWARDING
)
_STATUS_PREFIX = status.PREFIX.rstrip("/").encode()
_API_VERSION_FIELD = API_VERSION_HEADER.lower().encode()
_API_VERSION_LINE = f"{API_VERSION_HEADER}: {API_VERSION}\r\n".encode()

# Reads per event are bounded by the transports; these bound what is held here.
PENDING_LIMIT = 1024 * 1024
PIPELINE_LIMIT = 64 * 1024
CLIENT_WRITE_HIGH = 256 * 1024
UPSTREAM_WRITE_HIGH = 256 * 1024
KEEPALIVE_TIMEOUT = 75.0
SWEEP_INTERVAL = 1.0
CHUNK_LINE_LIMIT = 4096
RESPONSE_HEAD_LIMIT = 64 * 1024
# Bodies up to this size go out in the same write, and so the same TLS record, as the head.
JOIN_LIMIT = 64 * 1024
# After an early response the rest of the request body is read and discarded for
# at most this long, or this many bytes, before the connection is cut.
LINGERING_TIME = 2.0
LINGERING_BYTES = 32 * 1024 * 1024

# The states of one client connection.
HEAD, BODY_WAIT, CONNECTING, BODY, RESPONSE, CLOSED, AUTH_WAIT, LINGER = range(8)


class ChunkScanner:
    """Finds where a chunked body ends, checking its framing as it streams past.

    `feed()` returns how many bytes of the data belong to the body (the rest is
    the next message), or -1 when the framing is broken. Chunk extensions are
    rejected: no registry client sends them, and rejecting them leaves one way to
    read every accepted body. Trailer lines are checked and passed on.
    """

    __slots__ = ("remaining", "state", "line", "done", "data_bytes")

    SIZE, DATA, DATA_END, TRAILER = range(4)

    def __init__(self) -> None:
        # Chunk data seen so far, without the framing: what the access log counts.
        self.data_bytes = 0
        self.remaining = 0
        self.state = self.SIZE
        self.line = b""
        self.done = False

    def feed(self, data) -> int:
        pos = 0
        size = len(data)
        while pos < size:
            if self.state == self.DATA:
                take = size - pos
                if take >= self.remaining:
                    pos += self.remaining
                    self.data_bytes += self.remaining
                    self.remaining = 0
                    self.state = self.DATA_END
                else:
                    self.remaining -= take
                    self.data_bytes += take
                    return size
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                self.line += data[pos:]
                if len(self.line) > CHUNK_LINE_LIMIT:
                    return -1
                return size
            line = self.line + data[pos:end + 1] if self.line else data[pos:end + 1]
            self.line = b""
            pos = end + 1
            if len(line) > CHUNK_LINE_LIMIT or not line.endswith(b"\r\n"):
                return -1
            line = line[:-2]
            if self.state == self.SIZE:
                if not _CHUNK_SIZE.match(line):
                    return -1
                self.remaining = int(line, 16)
                self.state = self.DATA if self.remaining else self.TRAILER
            elif self.state == self.DATA_END:
                if line:
                    return -1
                self.state = self.SIZE
            elif not line:
                self.done = True
                return pos
            elif not _HEADER_LINES.match(bytes(line) + b"\r\n"):
                return -1
        return pos


class RequestHead:
    """One parsed request head and what the upstream gets instead of it."""

    __slots__ = (
        "method", "target", "length", "chunked", "close", "host", "authorization",
        "authorization_line", "fields", "forwarding", "expect_continue",
    )

    def __init__(self) -> None:
        self.expect_continue = False
        self.authorization_line: bytes | None = None
        # (lowercase name, line, value) of the X-Forwarded-* family, kept apart.
        self.forwarding: list[tuple[bytes, bytes, bytes]] = []
        self.length = 0
        self.chunked = False
        self.close = False
        self.host: bytes | None = None
        self.authorization: bytes | None = None
        # The lines passed on as written: every field but the framing, hop-by-hop,
        # Authorization and forwarding ones.
        self.fields: list[bytes] = []


def parse_request_head(head: bytes, max_line: int, max_field: int, max_fields: int) -> RequestHead | None:
    """Parse a request head ending before its blank line; None means "hand it over"."""
    line_end = head.find(b"\r\n")
    request_line = head[:line_end] if line_end >= 0 else head
    if len(request_line) > max_line:
        return None
    parts = request_line.split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1":
        return None
    method, target = parts[0], parts[1]
    if method not in FAST_METHODS or not _TARGET.match(target) or target.startswith(_STATUS_PREFIX):
        return None
    block = head[line_end + 2:] + b"\r\n" if line_end >= 0 else b""
    if block and not _HEADER_LINES.match(block):
        return None
    parsed = RequestHead()
    parsed.method = method
    parsed.target = target
    lines = block.split(b"\r\n")[:-1] if block else []
    if len(lines) > max_fields:
        return None
    length: bytes | None = None
    encoding: bytes | None = None
    connection: list[bytes] = []
    fields = parsed.fields
    for line in lines:
        if len(line) > max_field:
            return None
        name, _, value = line.partition(b":")
        lowered = name.lower()
        if lowered not in _REQUEST_SPECIAL:
            # Most fields: passed on as the client wrote them, without a split.
            fields.append(line)
            continue
        value = value.strip(b" \t")
        if lowered == b"host":
            if parsed.host is not None:
                return None
            parsed.host = value
            fields.append(line)
        elif lowered == b"content-length":
            if length is not None or not _DIGITS.match(value):
                return None
            length = value
            fields.append(line)
        elif lowered == b"transfer-encoding":
            if encoding is not None or value.lower() != b"chunked":
                return None
            encoding = value
        elif lowered == b"connection":
            connection.extend(t.strip().lower() for t in value.split(b","))
        elif lowered == b"authorization":
            if parsed.authorization is not None:
                return None
            parsed.authorization = value
            parsed.authorization_line = line
        elif lowered == b"expect":
            # The gateway sends the 100 Continue itself, as nginx does. The registry
            # gets no Expect, so the body does not wait for a second interim response.
            if value.lower() != b"100-continue" or parsed.expect_continue:
                return None
            parsed.expect_continue = True
        elif lowered in _FORWARDING:
            parsed.forwarding.append((lowered, line, value))
        elif lowered in _HAND_OVER_FIELDS:
            return None
        # The other hop-by-hop fields end here, dropped.
    if parsed.host is None or (length is not None and encoding is not None):
        return None
    if connection:
        if b"upgrade" in connection:
            return None
        parsed.close = b"close" in connection
        # A Connection option never removes Host or Content-Length: without its
        # Content-Length the body would reach the upstream as a request of its own.
        named = {t for t in connection if t not in _NOT_NAMEABLE}
        if named:
            parsed.fields = [f for f in fields if f.partition(b":")[0].lower() not in named]
            parsed.forwarding = [f for f in parsed.forwarding if f[0] not in named]
            if b"authorization" in named:
                parsed.authorization_line = None
    if encoding is not None:
        parsed.chunked = True
    elif length is not None:
        parsed.length = int(length)
    if (parsed.chunked or parsed.length) and method in BODYLESS_METHODS:
        return None
    return parsed


class UpstreamPool:
    """Idle keep-alive connections to one plain-HTTP upstream."""

    # NOTE: pool_size bounds only the idle connections here. aiohttp's path also
    # caps the connections open at once at pool_size and queues the rest.

    def __init__(self, host: str, port: int, base_path: bytes, url: str, idle_limit: int, connect_timeout: float):
        self.host = host
        self.port = port
        self.base_path = base_path
        self.url = url
        self.idle: deque[UpstreamConnection] = deque()
        self.idle_limit = idle_limit
        self.connect_timeout = connect_timeout

    def take(self) -> UpstreamConnection | None:
        while self.idle:
            connection = self.idle.pop()
            if not connection.transport.is_closing():
                return connection
        return None

    async def connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            transport, connection = await loop.create_connection(
                lambda: UpstreamConnection(self), self.host, self.port
            )
        transport.set_write_buffer_limits(high=UPSTREAM_WRITE_HIGH)
        return connection

    def give_back(self, connection: UpstreamConnection) -> None:
        connection.client = None
        if len(self.idle) >= self.idle_limit or connection.transport.is_closing():
            connection.transport.close()
            return
        connection.transport.resume_reading()
        self.idle.append(connection)

    def close(self) -> None:
        while self.idle:
            self.idle.pop().transport.close()


class UpstreamConnection(asyncio.Protocol):
    """The registry side of one exchange; events go to the client connection using it."""

    def __init__(self, pool: UpstreamPool):
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.client: ClientConnection | None = None
        self.used = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            # An idle connection should send nothing; whatever it sent cannot be trusted.
            self.transport.close()
            return
        client.upstream_data(data)

    def eof_received(self):
        if self.client is not None:
            self.client.upstream_eof()
        return False

    def connection_lost(self, exc) -> None:
        client = self.client
        if client is not None:
            self.client = None
            client.upstream_lost(self, exc)
        else:
            try:
                self.pool.idle.remove(self)
            except ValueError:
                pass

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_client_reads()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume_client_reads()


class FastPath:
    """Shared state of the fast path: settings, upstream pools and open connections."""

    def __init__(self, proxy: Proxy, aiohttp_server: GatewayServer):
        config = proxy.config
        self.proxy = proxy
        self.config = config
        self.aiohttp_server = aiohttp_server
        self.connections: set[ClientConnection] = set()
        self.max_line = config.max_request_line
        self.max_field = config.max_header_size
        self.max_fields = config.max_headers
        # A head longer than every line it may hold goes to aiohttp, which returns 414 or 431.
        self.head_limit = config.max_request_line + (config.max_header_size + 2) * config.max_headers + 4
        self.trusted_any = bool(config.trusted_proxies)
        self.client_ca = config.client_ca is not None
        self.pools: dict[str, UpstreamPool | None] = {}
        self.default_pool = self._pool_for(str(config.upstream).rstrip("/"))
        self.routes = [
            (prefix.encode(), self._pool_for(str(route.upstream).rstrip("/")))
            for prefix, route in sorted(
                ((r.prefix, r) for r in config.routes), key=lambda item: len(item[0]), reverse=True
            )
        ]
        self._authorities: dict[bytes, str | None] = {}
        self._sweeper: asyncio.Task | None = None
        timeouts = [config.header_timeout, config.client_idle_timeout, config.idle_timeout]
        self.sweep_interval = max(0.05, min(SWEEP_INTERVAL, min(timeouts) / 5))

    def _pool_for(self, base: str) -> UpstreamPool | None:
        if base in self.pools:
            return self.pools[base]
        from yarl import URL

        url = URL(base)
        pool = None
        if url.scheme == "http" and url.host and not url.query_string:
            pool = UpstreamPool(
                url.host,
                url.port or 80,
                url.raw_path.rstrip("/").encode(),
                base,
                self.config.pool_size,
                self.config.connect_timeout,
            )
        self.pools[base] = pool
        return pool

    def route(self, target: bytes) -> UpstreamPool | None:
        for prefix, pool in self.routes:
            if target == prefix or target.startswith(prefix.rstrip(b"/") + b"/") or target.startswith(prefix + b"?"):
                return pool
        return self.default_pool

    def authority(self, host: bytes, port: int) -> str:
        """Return the public `host[:port]` for a Host field, as `Proxy.public_authority` does."""
        known = self._authorities.get(host, False)
        if known is False:
            from yarl import URL

            text = host.decode("latin-1")
            try:
                name = URL.build(scheme="https", authority=text).host
            except (ValueError, TypeError):
                name = None
            known = text if name is not None and name.lower() in self.proxy._public_names else None
            if len(self._authorities) < 256:
                self._authorities[host] = known
        if known is not None:
            return known
        from gateway.config import format_host_port

        return format_host_port(self.config.primary_name, None if port == 443 else port)

    def protocol(self) -> ClientConnection:
        return ClientConnection(self)

    def start(self) -> None:
        # Kept, because each asyncio.get_running_loop() costs a getpid() system call.
        self.loop = asyncio.get_running_loop()
        if self._sweeper is None:
            self._sweeper = self.loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.sweep_interval)
            now = loop.time()
            for connection in list(self.connections):
                connection.sweep(now)

    def close_idle(self) -> None:
        """Close every connection between requests; busy ones close after their response."""
        for connection in list(self.connections):
            connection.close_when_idle()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
            self._sweeper = None
        for connection in list(self.connections):
            connection.abort()
        for pool in self.pools.values():
            if pool is not None:
                pool.close()


def _public_port(authority: str) -> bytes:
    """Return the port of a `host[:port]` authority, or 443 when it names none."""
    port = authority.rpartition(":")[2] if not authority.endswith("]") else ""
    return (port if port.isdigit() else "443").encode()


def _http_date() -> bytes:
    return email.utils.formatdate(usegmt=True).encode()


def response_bytes(response: web.Response, close: bool, head_only: bool = False) -> bytes:
    """Serialize one of the gateway's own small responses (`registry_error` and friends).

    For a HEAD request (`head_only`) the fields, Content-Length included, are
    those of the GET, and no body follows them (RFC 9110 section 9.3.2).
    """
    body = response.body or b""
    lines = [f"HTTP/1.1 {response.status} {response.reason}".encode()]
    for name, value in response.headers.items():
        if name.lower() in ("content-length", "connection", "transfer-encoding"):
            continue
        lines.append(f"{name}: {value}".encode("latin-1"))
    lines.append(b"Content-Length: " + str(len(body)).encode())
    lines.append(b"Date: " + _http_date())
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head_only else body)


class ClientConnection(asyncio.Protocol):
    """One client TLS connection on the fast path, until it is closed or handed to aiohttp."""

    def __init__(self, fast: FastPath):
        self.fast = fast
        self.transport = None
        self.state = HEAD
        self.buffer = bytearray()
        self.request: RequestHead | None = None
        self.upstream: UpstreamConnection | None = None
        self.pool: UpstreamPool | None = None
        self.peer = "-"
        self.port = 443
        self.trusted = False
        self.close_after = False
        self.closing = False
        self.requests = 0
        # Sweep bookkeeping: `progress` counts events; the sweeper notes when it last moved.
        self.progress = 0
        self._seen_progress = -1
        self._since = 0.0
        self._client_paused = False
        self._client_write_paused = False
        self._upstream_read_paused = False
        # Request state
        self.sent_head = b""
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.body_left = 0
        self.scanner: ChunkScanner | None = None
        self.request_done = False
        self.started = 0.0
        self.request_id = ""
        self.bytes_in = 0
        self.bytes_out = 0
        self.origin = ""
        self.upstream_url = ""
        self.sent_at = 0.0
        # Response state
        self.response_head = bytearray()
        self.response_status = 0
        self.response_started = False
        self.response_done = False
        self.response_left = -1
        self.response_scanner: ChunkScanner | None = None
        self.response_until_close = False
        self.upstream_keepalive = True
        self.counted = False
        self._head_out = b""
        self._client_head = b""
        self._checked_head = None
        self._forwarding: tuple[str, bytes] | None = None
        self._head_started = 0.0
        self._linger_started = 0.0
        self._linger_left = 0

    # --- connection --------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        fast = self.fast
        fast.connections.add(self)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = peer[0]
        sockname = transport.get_extra_info("sockname")
        if sockname:
            self.port = sockname[1]
        if fast.trusted_any:
            self.trusted = fast.proxy._is_trusted(self.peer)
        transport.set_write_buffer_limits(high=CLIENT_WRITE_HIGH)
        self._since = self._head_started = self.fast.loop.time()

    def data_received(self, data: bytes) -> None:
        self.progress += 1
        state = self.state
        if state == BODY:
            self._body_data(data)
        elif state == HEAD:
            if self.buffer:
                self.buffer += data
            else:
                self.buffer = bytearray(data)
                if self.requests:
                    self._head_started = self.fast.loop.time()
            self._next_request(len(data))
        elif state in (BODY_WAIT, CONNECTING):
            self._body_data(data)
        elif state == LINGER:
            self._linger_data(data)
        elif state == RESPONSE or state == AUTH_WAIT:
            # The next request, pipelined, or a body waiting for the password
            # check: kept until this response is done.
            self.buffer += data
            if len(self.buffer) > PIPELINE_LIMIT:
                self.pause_client_reads()

    def eof_received(self):
        return False

    def connection_lost(self, exc) -> None:
        self.state = CLOSED
        self.fast.connections.discard(self)
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            upstream.client = None
            upstream.transport.abort()
        if self.request is not None and not self.counted:
            # Once the head has gone out the status is the upstream's, as on aiohttp's path.
            sent = self.response_started and not self._head_out
            self._finish(self.response_status if sent else 499)

    def pause_writing(self) -> None:
        self._client_write_paused = True
        upstream = self.upstream
        if upstream is not None and not self._upstream_read_paused:
            self._upstream_read_paused = True
            upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self.progress += 1
        self._client_write_paused = False
        upstream = self.upstream
        if upstream is not None and self._upstream_read_paused:
            self._upstream_read_paused = False
            upstream.transport.resume_reading()

    def pause_client_reads(self) -> None:
        if not self._client_paused and self.transport is not None:
            self._client_paused = True
            self.transport.pause_reading()

    def resume_client_reads(self) -> None:
        self.progress += 1
        if self._client_paused and self.transport is not None:
            self._client_paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def close_when_idle(self) -> None:
        self.close_after = True
        if self.state == HEAD and not self.buffer:
            self.closing = True
            self.transport.close()

    # --- requests ----------------------------------------------------------

    def _next_request(self, new: int = -1) -> None:
        """Start the request whose head is in the buffer, if it is complete.

        `new` is how many bytes at the buffer's end are not searched yet (-1:
        all). Searching only those keeps a head sent a few bytes at a time from
        costing time quadratic in its length.
        """
        buffer = self.buffer
        start = max(0, len(buffer) - new - 3) if new >= 0 else 0
        end = buffer.find(b"\r\n\r\n", start)
        if end < 0:
            if len(buffer) > self.fast.head_limit or buffer.find(b"\n\n", start) >= 0 or buffer.startswith(b"\r\n"):
                self._hand_over()
            return
        fast = self.fast
        raw = bytes(buffer[: end + 4])
        head = parse_request_head(raw[:-4], fast.max_line, fast.max_field, fast.max_fields)
        if head is None or (fast.client_ca and not self.transport.get_extra_info("peercert")):
            self._hand_over()
            return
        pool = fast.route(head.target)
        if pool is None:
            self._hand_over()
            return
        auth = fast.proxy.auth
        if auth is not None and raw != self._checked_head:
            if head.authorization is None:
                del buffer[: end + 4]
                self._answer(head, unauthorized())
                return
            if auth.cached_user(head.authorization.decode("latin-1")) is None:
                # bcrypt runs in a thread; what arrives meanwhile waits in the buffer.
                self.state = AUTH_WAIT
                fast.loop.create_task(self._check_password(head, raw))
                return
        self._checked_head = None
        del buffer[: end + 4]
        self._client_head = raw
        self._start(head, pool)

    async def _check_password(self, head: RequestHead, raw: bytes) -> None:
        user = await self.fast.proxy.auth.check(head.authorization.decode("latin-1"), self.peer)
        if self.state != AUTH_WAIT:
            return
        self.state = HEAD
        if user is not None:
            self._checked_head = raw
            self._next_request()
            return
        del self.buffer[: len(raw)]
        self._answer(head, unauthorized())

    def _answer(self, head: RequestHead, response: web.Response) -> None:
        """Send one of the gateway's own responses for `head`, without the upstream.

        The request's body, if any, was not read, so the connection closes after it.
        """
        # NOTE: a request with a body is closed at once here, without the lingering
        # close that `_linger` gives a relayed early response.
        self.request = head
        self.started = time.monotonic()
        self.request_id = new_request_id()
        self.bytes_in = 0
        self.response_started = False
        self.counted = False
        self.fast.proxy.request_started()
        has_body = head.chunked or head.length > 0
        self._send_own(response, close=has_body or head.close or self.close_after)
        if self.state != CLOSED:
            self.request = None
            if self.buffer:
                self._next_request()

    def _hand_over(self) -> None:
        """Give this connection, with every unread byte, to aiohttp's handler."""
        fast = self.fast
        fast.connections.discard(self)
        handler = fast.aiohttp_server()
        transport = self.transport
        data = bytes(self.buffer)
        self.buffer = bytearray()
        self.state = CLOSED
        self.transport = None
        if self._client_paused:
            transport.resume_reading()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._client_write_paused:
            # The transport calls pause_writing() only when its buffer crosses the
            # high-water mark, so a handler that takes over a full buffer is paused here.
            handler.pause_writing()
        if data:
            handler.data_received(data)

    def _start(self, head: RequestHead, pool: UpstreamPool) -> None:
        fast = self.fast
        proxy = fast.proxy
        self.request = head
        self.pool = pool
        self.requests += 1
        self.started = time.monotonic()
        self.request_id = new_request_id()
        self.bytes_in = 0
        self.bytes_out = 0
        self.request_done = False
        self.counted = False
        self.close_after = self.close_after or head.close
        self.response_head = bytearray()
        self.response_status = 0
        self.response_started = False
        self.response_done = False
        self.response_left = -1
        self.response_scanner = None
        self.response_until_close = False
        self.upstream_keepalive = True
        self._head_out = b""
        proxy.request_started()

        authority = fast.authority(head.host, self.port)
        self.origin = "https://" + authority
        target = pool.base_path + head.target
        self.upstream_url = pool.url + head.target.decode("latin-1")
        lines = [head.method, b" ", target, b" HTTP/1.1\r\n", b"\r\n".join(head.fields), b"\r\n"]
        if head.authorization_line is not None and proxy.auth is None:
            # With [auth] the credentials are the gateway's own and stay here.
            lines += (head.authorization_line, b"\r\n")
        if self.trusted and head.forwarding:
            lines.append(self._trusted_forwarding(head, authority))
        else:
            cached = self._forwarding
            if cached is None or cached[0] != authority:
                cached = self._forwarding = (authority, self._own_forwarding(authority))
            lines.append(cached[1])
        if head.chunked:
            lines.append(b"Transfer-Encoding: chunked\r\n")
            self.scanner = ChunkScanner()
            self.body_left = 0
        else:
            self.scanner = None
            self.body_left = head.length
        lines.append(b"\r\n")
        self.sent_head = b"".join(lines)
        if log.isEnabledFor(logging.DEBUG):
            forwarded_headers = CIMultiDict()
            for line in self.sent_head.decode("latin-1").split("\r\n")[1:-2]:
                name, _, value = line.partition(":")
                forwarded_headers.add(name, value.strip())
            log.debug(
                "Forwarding %s %s to %s (request id %s, fast path) with headers %s",
                head.method.decode(), loggable_path(head.target.decode("latin-1")), pool.url,
                self.request_id, redacted_headers(forwarded_headers),
            )

        has_body = head.chunked or head.length > 0
        if has_body:
            widen_tls_reads(self.transport)
            if head.expect_continue and not self.buffer:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.pending = [self.sent_head]
        self.pending_size = 0
        if not has_body:
            self.request_done = True
        leftover = self.buffer
        self.buffer = bytearray()
        if has_body:
            self.state = BODY_WAIT
            if leftover:
                self._body_data(bytes(leftover))
            return
        # A bodyless request: what follows is the next request, pipelined.
        self.buffer = leftover
        self._acquire()

    def _own_forwarding(self, authority: str) -> bytes:
        return b"".join((
            b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: ", authority.encode(),
            b"\r\nX-Forwarded-Port: ", _public_port(authority),
            b"\r\nX-Forwarded-For: ", self.peer.encode(), b"\r\n",
        ))

    def _trusted_forwarding(self, head: RequestHead, authority: str) -> bytes:
        """From a trusted proxy: its fields are kept, and only missing ones are added."""
        seen = {lowered for lowered, _, _ in head.forwarding}
        lines = [line + b"\r\n" for lowered, line, _ in head.forwarding if lowered != b"x-forwarded-for"]
        if b"x-forwarded-proto" not in seen:
            lines.append(b"X-Forwarded-Proto: https\r\n")
        if b"x-forwarded-host" not in seen:
            lines += (b"X-Forwarded-Host: ", authority.encode(), b"\r\n")
            lines += (b"X-Forwarded-Port: ", _public_port(authority), b"\r\n")
        values = [value for lowered, _, value in head.forwarding if lowered == b"x-forwarded-for"]
        peer = self.peer.encode()
        lines += (b"X-Forwarded-For: ", b", ".join(values) + b", " + peer if values else peer, b"\r\n")
        return b"".join(lines)

    def _acquire(self) -> None:
        connection = self.pool.take()
        if connection is not None:
            self._attach(connection)
            return
        self.state = CONNECTING
        self.fast.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            connection = await self.pool.connect()
        except (OSError, TimeoutError) as exc:
            if self.state == CLOSED:
                return
            log.debug("Fast path: cannot reach %s (%s); replaying on aiohttp's path", self.pool.url, exc)
            self._replay_on_aiohttp()
            return
        if self.state == CLOSED:
            connection.transport.close()
            return
        self._attach(connection)

    def _replay_on_aiohttp(self) -> None:
        """Hand over a request that has sent nothing upstream yet, with its bytes as received."""
        self.fast.proxy.request_finished()
        self.counted = True
        self.request = None
        raw = self._original_bytes()
        self.buffer = bytearray(raw) + self.buffer
        self._hand_over()

    def _original_bytes(self) -> bytes:
        """Return the request as the client sent it, for a replay (head and pending body only)."""
        return self._client_head + b"".join(self.pending[1:])

    def _attach(self, connection: UpstreamConnection) -> None:
        self.upstream = connection
        connection.client = self
        connection.used += 1
        if self._upstream_read_paused:
            self._upstream_read_paused = False
        if self._client_write_paused:
            self._upstream_read_paused = True
            connection.transport.pause_reading()
        self.sent_at = time.monotonic()
        transport = connection.transport
        pending = self.pending
        self.pending = []
        self.pending_size = 0
        transport.write(b"".join(pending) if len(pending) > 1 else pending[0])
        if self.request_done:
            self.state = RESPONSE
        else:
            self.state = BODY
        if self._client_paused and transport.get_write_buffer_size() < UPSTREAM_WRITE_HIGH:
            self.resume_client_reads()

    def _body_data(self, data: bytes) -> None:
        if self.request_done:
            self.buffer += data
            if len(self.buffer) > PIPELINE_LIMIT:
                self.pause_client_reads()
            return
        scanner = self.scanner
        if scanner is not None:
            before = scanner.data_bytes
            used = scanner.feed(data)
            if used < 0:
                self._bad_body(data)
                return
            done = scanner.done
            self.bytes_in += scanner.data_bytes - before
        else:
            used = min(self.body_left, len(data))
            self.body_left -= used
            done = self.body_left == 0
            self.bytes_in += used
        piece = data if used == len(data) else data[:used]
        if done:
            self.request_done = True
            if used < len(data):
                self.buffer += data[used:]
        state = self.state
        if state == BODY:
            if not self.response_started:
                self.upstream.transport.write(piece)
            if done:
                self.state = RESPONSE if not self.response_done else self.state
        else:
            if piece:
                self.pending.append(piece)
                self.pending_size += len(piece)
            if state == BODY_WAIT:
                self._acquire()
            elif self.pending_size > PENDING_LIMIT:
                self.pause_client_reads()

    def _bad_body(self, data: bytes) -> None:
        if self.state in (BODY_WAIT, CONNECTING):
            # Nothing went upstream yet: aiohttp's parser rejects it, with the same
            # response as for every malformed message it receives whole.
            self.pending.append(data)
            self._replay_on_aiohttp()
            return
        upstream_log.warning(
            "bad-body", "Rejected a malformed request body from %s: %s (request id %s)",
            self.peer, "invalid chunked framing", self.request_id,
        )
        self._abandon_upstream()
        self._send_own(registry_error(400, "UNSUPPORTED", "the request body is malformed"), close=True)

    # --- responses ---------------------------------------------------------

    def upstream_data(self, data: bytes) -> None:
        self.progress += 1
        if self.response_started:
            self._response_body(data)
            return
        buffer = self.response_head
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > RESPONSE_HEAD_LIMIT:
                    self._upstream_broken("sent a response head over 64 KiB")
                return
            head = bytes(buffer[:end])
            del buffer[: end + 4]
            outcome = self._response_head(head)
            if outcome is None:
                continue  # an interim 1xx response; the final head follows
            if not outcome:
                return
            break
        rest = bytes(buffer)
        self.response_head = bytearray()
        self._response_body(rest)

    def _response_head(self, head: bytes) -> bool | None:
        line_end = head.find(b"\r\n")
        status_line = head[:line_end] if line_end >= 0 else head
        match = _STATUS_LINE.match(status_line)
        block = head[line_end + 2:] + b"\r\n" if line_end >= 0 else b""
        if match is None or (block and not _HEADER_LINES.match(block)):
            self._upstream_broken("sent a malformed response head")
            return False
        code = int(match.group(2))
        if code < 200:
            if code in (100, 102, 103):
                return None
            self._upstream_broken(f"sent status {code}, which the gateway does not relay")
            return False
        if match.group(1) == b"0":
            self.upstream_keepalive = False
        method = self.request.method
        length: bytes | None = None
        chunked = False
        connection_tokens: list[bytes] = []
        has_version = False
        out: list[bytes] = []
        rewriter = self.fast.proxy.rewriter
        for line in block.split(b"\r\n")[:-1] if block else ():
            name, _, value = line.partition(b":")
            lowered = name.lower()
            if lowered not in _RESPONSE_SPECIAL:
                out.append(line)
                continue
            value = value.strip(b" \t")
            if lowered == b"content-length":
                if length is not None and length != value or not _DIGITS.match(value):
                    self._upstream_broken("sent an invalid Content-Length")
                    return False
                length = value
            elif lowered == b"transfer-encoding":
                if value.lower() != b"chunked":
                    self._upstream_broken("sent a Transfer-Encoding other than chunked")
                    return False
                chunked = True
            elif lowered == b"connection":
                connection_tokens.extend(t.strip().lower() for t in value.split(b","))
            elif lowered in _REWRITTEN:
                text = value.decode("latin-1")
                try:
                    if lowered == b"link":
                        text = rewriter.link(text, self.origin)
                    elif lowered == b"www-authenticate":
                        text = rewriter.www_authenticate(text, self.origin)
                    else:
                        text = rewriter.location(text, self.origin)
                except MalformedURL as exc:
                    self._malformed_url(exc)
                    return False
                out.append(name + b": " + text.encode("latin-1"))
            elif lowered == _API_VERSION_FIELD:
                has_version = True
                out.append(line)
            # The other hop-by-hop fields end here, dropped.
        if chunked and length is not None:
            # RFC 9112 section 6.3 calls this a possible smuggling attempt, to be handled
            # as an error. aiohttp's client rejects it, so both paths return 502.
            self._upstream_broken("sent both Content-Length and Transfer-Encoding")
            return False
        if connection_tokens:
            if b"close" in connection_tokens:
                self.upstream_keepalive = False
            named = {t for t in connection_tokens if t not in (b"close", b"keep-alive", b"")}
            if named:
                out = [line for line in out if line.partition(b":")[0].lower() not in named]
        lines = [b"HTTP/1.1 ", match.group(2), b" ", match.group(3) or b"", b"\r\n"]
        if out:
            lines += (b"\r\n".join(out), b"\r\n")
        if not has_version:
            lines.append(_API_VERSION_LINE)
        self.response_status = code
        no_body = method == b"HEAD" or code in (204, 304)
        if no_body:
            self.response_left = 0
            if length is not None:
                lines += (b"Content-Length: ", length, b"\r\n")
        elif chunked:
            self.response_scanner = ChunkScanner()
            lines.append(b"Transfer-Encoding: chunked\r\n")
        elif length is not None:
            self.response_left = int(length)
            lines += (b"Content-Length: ", length, b"\r\n")
        else:
            self.response_until_close = True
            self.upstream_keepalive = False
            self.close_after = True
        if not self.request_done:
            # The registry responded before the body ended: the rest of the body is
            # read and discarded (`_body_data`), and the upstream connection, which
            # missed it, is closed after the response.
            self.upstream_keepalive = False
            if self._client_paused:
                self.resume_client_reads()
        if self.close_after or not self.request_done:
            self.close_after = True
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        self.response_started = True
        metrics = self.fast.proxy.metrics
        if metrics is not None:
            metrics.upstream_latency.observe(time.monotonic() - self.sent_at)
        head_bytes = b"".join(lines)
        if self.response_left == 0:
            self.response_done = True
        self._head_out = head_bytes
        return True

    def _response_body(self, data: bytes) -> None:
        head_out = self._head_out
        if self.response_done:
            if data:
                # Bytes after a complete response: the connection is not reused.
                self.upstream_keepalive = False
            self._head_out = b""
            self._write_client(head_out)
            self._response_finished()
            return
        if not data:
            return  # the head goes out with the first body bytes
        counted = None
        if self.response_until_close:
            piece = data
        elif self.response_scanner is not None:
            before = self.response_scanner.data_bytes
            used = self.response_scanner.feed(data)
            if used < 0:
                self._upstream_broken("sent a malformed chunked body")
                return
            counted = self.response_scanner.data_bytes - before
            piece = data if used == len(data) else data[:used]
            if self.response_scanner.done:
                self.response_done = True
                if used < len(data):
                    self.upstream_keepalive = False
        else:
            left = self.response_left
            if len(data) >= left:
                piece = data if len(data) == left else data[:left]
                if len(data) > left:
                    self.upstream_keepalive = False
                self.response_left = 0
                self.response_done = True
            else:
                piece = data
                self.response_left = left - len(data)
        self.bytes_out += len(piece) if counted is None else counted
        if head_out:
            self._head_out = b""
            if len(piece) <= JOIN_LIMIT:
                self._write_client(head_out + piece)
            else:
                self._write_client(head_out)
                self._write_client(piece)
        elif piece:
            self._write_client(piece)
        if self.response_done:
            self._response_finished()

    def _write_client(self, data: bytes) -> None:
        if self.transport is not None and data:
            self.transport.write(data)

    def upstream_eof(self) -> None:
        if self.response_until_close and self.response_started:
            self.response_done = True
            if self._head_out:
                self._write_client(self._head_out)
                self._head_out = b""
            self._response_finished()

    def upstream_lost(self, connection: UpstreamConnection, exc) -> None:
        if self.upstream is not connection:
            return
        self.upstream = None
        if self.response_done or self.state == CLOSED:
            return
        if self.response_until_close and self.response_started:
            self.upstream_eof()
            return
        if not self.response_started or self._head_out:
            reason = "closed the connection before it sent a response"
            reused = connection.used > 1
            if (
                reused
                and not self.response_started
                and not self.response_head
                and self.request_done
                and self.request.method in REPLAYABLE
            ):
                # A kept-alive connection the registry closed as this request went out,
                # before any byte came back. A GET or HEAD changes nothing on the
                # registry, so it is sent again on a new connection.
                self.pending = [self.sent_head]
                self.state = CONNECTING
                self.fast.loop.create_task(self._connect())
                return
            self._fail_upstream(502, "unreachable", ConnectionResetError(reason))
            return
        self._broke_off(str(exc) if exc else "connection closed")

    def _broke_off(self, reason: str) -> None:
        """Cut the client connection after a response body broke, as `Proxy._relay` does."""
        # NOTE: aiohttp's path reads a body with a Content-Length up to 64 KiB whole
        # and sends a 502 when it breaks. Here its head and first bytes may be out.
        upstream_log.warning(
            "upstream-broken-body",
            "Upstream %s broke off the response body after %d bytes (request id %s): %s",
            self.upstream_url, self.bytes_out, self.request_id, reason,
        )
        metrics = self.fast.proxy.metrics
        if metrics is not None:
            metrics.upstream_errors.labels("broke off the response").inc()
        self._finish(self.response_status)
        self.abort()

    def _upstream_broken(self, problem: str) -> None:
        self.upstream_keepalive = False
        if not self.response_started or self._head_out:
            self._abandon_upstream()
            self._fail_upstream(502, "broke off the response", ValueError(f"the registry {problem}"))
            return
        self._abandon_upstream()
        self._broke_off(f"the registry {problem}")

    def _malformed_url(self, exc: MalformedURL) -> None:
        log.warning(
            "Upstream %s sent a malformed URL header (request id %s): %s", self.upstream_url, self.request_id, exc
        )
        self._abandon_upstream()
        self._send_own(
            registry_error(
                502, "UNKNOWN", "the registry sent a malformed Location or Link header",
                {"upstream": self.upstream_url, "error": str(exc)},
            ),
            close=True,
        )

    def _fail_upstream(self, code: int, kind: str, exc: BaseException) -> None:
        response = self.fast.proxy._upstream_failure(code, kind, self.upstream_url, self.request_id, exc)
        self._abandon_upstream()
        self._send_own(response, close=True)

    def _abandon_upstream(self) -> None:
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            upstream.client = None
            upstream.transport.abort()

    def _send_own(self, response: web.Response, close: bool) -> None:
        """Send one of the gateway's own responses, if nothing has gone out yet."""
        if (self.response_started and not self._head_out) or self.transport is None:
            self._finish(self.response_status or 499)
            self.abort()
            return
        # A relayed head still held back for its first body bytes is never sent.
        self._head_out = b""
        head_only = self.request is not None and self.request.method == b"HEAD"
        self.bytes_out = 0 if head_only else len(response.body or b"")
        self.transport.write(response_bytes(response, close, head_only))
        self._finish(response.status)
        if close:
            self.closing = True
            self.state = CLOSED
            self.transport.close()
        else:
            self._since = self._head_started = self.fast.loop.time()

    def _response_finished(self) -> None:
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            if self.upstream_keepalive and self.request_done:
                if self._upstream_read_paused:
                    self._upstream_read_paused = False
                self.pool.give_back(upstream)
            else:
                upstream.client = None
                upstream.transport.close()
        self._finish(self.response_status)
        if not self.request_done:
            self._linger()
            return
        if self.close_after:
            self.closing = True
            self.state = CLOSED
            self.transport.close()
            return
        self.state = HEAD
        self.request = None
        self._since = self._head_started = self.fast.loop.time()
        self._seen_progress = self.progress
        if self._client_paused:
            self.resume_client_reads()
        if self.buffer:
            self._next_request()

    def _linger(self) -> None:
        """Discard the rest of the request body, then close (RFC 9112 section 9.6).

        Body bytes that reach a closed socket make the kernel send a reset, and
        the reset can erase the response before the client reads it. So the
        connection stays open until the body ends by its framing, the client
        closes, or LINGERING_TIME or LINGERING_BYTES runs out (`sweep` checks the time).

        There is no half-close first, because the TLS transports of asyncio and
        uvloop (0.23) have no write_eof(). Their close() sends close_notify and
        reads on until the client's, but asyncio's (Python 3.11) aborts the
        connection when unwrap() fails on body bytes that arrive meanwhile. So
        close() waits for the body's end.
        """
        self.state = LINGER
        self.closing = True
        self.buffer = bytearray()
        self._linger_started = self.fast.loop.time()
        self._linger_left = LINGERING_BYTES
        if self._client_paused:
            self.resume_client_reads()

    def _linger_data(self, data: bytes) -> None:
        scanner = self.scanner
        if scanner is not None:
            used = scanner.feed(data)
            ended = used < 0 or scanner.done
        else:
            used = min(self.body_left, len(data))
            self.body_left -= used
            ended = self.body_left == 0
        self._linger_left -= len(data)
        if ended:
            self.state = CLOSED
            self.transport.close()
        elif self._linger_left <= 0:
            log.debug(
                "Client %s sent over %d bytes after the response; cut the connection (request id %s)",
                self.peer, LINGERING_BYTES, self.request_id,
            )
            self.state = CLOSED
            self.abort()

    def _finish(self, code: int) -> None:
        if self.counted or self.request is None:
            return
        self.counted = True
        proxy = self.fast.proxy
        proxy.request_finished()
        head = self.request
        if ACCESS.enabled():
            ACCESS.write(
                access_line(
                    self.peer, head.method.decode(), head.target.decode("latin-1"), code,
                    self.bytes_in, self.bytes_out, time.monotonic() - self.started, self.request_id,
                )
            )
        metrics = proxy.metrics
        if metrics is not None:
            metrics.record(head.method.decode(), code, self.bytes_in, self.bytes_out)

    # --- timeouts ------------------------------------------------------------

    def sweep(self, now: float) -> None:
        if self.progress != self._seen_progress:
            self._seen_progress = self.progress
            self._since = now
        quiet = now - self._since
        state = self.state
        config = self.fast.config
        if state == HEAD:
            if self.buffer or self.requests == 0:
                # Measured from the head's first byte, so a trickle does not extend it.
                if now - self._head_started >= config.header_timeout:
                    rejected_log.warning(
                        "slow-head",
                        "Closed a connection from %s: no complete request head within %g s",
                        self.peer, config.header_timeout,
                    )
                    self.abort()
            elif quiet >= KEEPALIVE_TIMEOUT:
                self.closing = True
                self.transport.close()
        elif state in (BODY_WAIT, BODY) or (state == CONNECTING and not self.request_done):
            if quiet >= config.client_idle_timeout:
                log.info(
                    "Client %s sent no body bytes for %g s; closed the request (request id %s)",
                    self.peer, config.client_idle_timeout, self.request_id,
                )
                self._abandon_upstream()
                self._send_own(
                    registry_error(408, "UNSUPPORTED", "the request body stalled past the idle timeout"),
                    close=True,
                )
        elif state == LINGER:
            if now - self._linger_started >= LINGERING_TIME:
                log.debug(
                    "Client %s was still sending its request body %g s after the response; "
                    "cut the connection (request id %s)",
                    self.peer, LINGERING_TIME, self.request_id,
                )
                self.state = CLOSED
                self.abort()
        elif state == RESPONSE:
            if self._client_write_paused:
                if quiet >= config.client_idle_timeout:
                    log.debug("Client stopped reading the response (request id %s)", self.request_id)
                    self._abandon_upstream()
                    self._finish(self.response_status or 499)
                    self.abort()
            elif quiet >= config.idle_timeout:
                if not self.response_started or self._head_out:
                    self._fail_upstream(504, "timed out", TimeoutError())
                else:
                    self._abandon_upstream()
                    self._finish(self.response_status)
                    self.abort()
