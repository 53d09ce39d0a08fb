"""The HTTP/1.1 connection handler: aiohttp's, with a header timeout and registry-format errors.

aiohttp's parser (llhttp) already rejects the request-smuggling shapes: both
Content-Length and Transfer-Encoding, two Content-Length values, a bad chunk
size, a bare LF line ending, `Transfer-Encoding: chunked, identity`. What it does
not do is answer them the way a registry client can read, or stop a client that
trickles its request head in one byte at a time. This subclass adds both:

- Every parse error becomes a registry-JSON response: 414 for an oversized request
  line, 431 for oversized or too many header fields, 400 for the rest. The client
  address and the reason go to a rate-limited warning instead of a traceback.
- A request head (request line and headers) must arrive within `header_timeout`
  seconds of the first byte of that request, or of the connection start.
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from gateway.logs import RateLimitedLog
from gateway.proxy import API_VERSION, API_VERSION_HEADER

log = logging.getLogger("gateway.server")
rejected_log = RateLimitedLog(log)


def classify_parse_error(exc: BaseException | None) -> tuple[int, str]:
    """Map an aiohttp parse error to the HTTP status and registry error code to send."""
    if isinstance(exc, LineTooLong):
        line = exc.args[0] if exc.args else b""
        line = bytes(line) if isinstance(line, (bytes, bytearray)) else str(line).encode()
        # The parser raises LineTooLong for the request target and for header
        # fields alike; a target starts with "/" (origin form) or a scheme.
        if line.startswith((b"/", b"http://", b"https://", b"*")):
            return 414, "URI Too Long"
        return 431, "Request Header Fields Too Large"
    if isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc):
        return 431, "Request Header Fields Too Large"
    return 400, "Bad Request"


def error_body(message: str, detail: object = None) -> bytes:
    return json.dumps(
        {"errors": [{"code": "UNSUPPORTED", "message": message, "detail": detail}]}
    ).encode()


class GatewayRequestHandler(RequestHandler):
    """aiohttp's RequestHandler with a request-head timeout and JSON parse errors."""

    header_timeout: float = 30.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._heads_seen = 0
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self._loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._request_count > self._heads_seen:
            return
        peer = self.transport.get_extra_info("peername") if self.transport else None
        rejected_log.warning(
            "slow-head",
            "Closed a connection from %s: no complete request head within %g s",
            peer[0] if peer else "-",
            self.header_timeout,
        )
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        idle = self._request_count == self._heads_seen and not self._request_in_progress
        if idle and data:
            self._arm_head_timer()
        super().data_received(data)
        if self._request_count > self._heads_seen:
            self._heads_seen = self._request_count
            self._disarm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status == 400:
            status, reason = classify_parse_error(exc)
        else:
            reason = "Internal Server Error" if status == 500 else "Gateway Timeout"
        if status >= 500:
            log.error("Error handling a request from %s", request.remote, exc_info=exc)
        else:
            rejected_log.warning(
                f"reject-{status}",
                "Rejected a malformed request from %s with %d: %s",
                request.remote or "-",
                status,
                (message or str(exc) or reason).splitlines()[0][:200],
            )
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started; the connection is closed instead")
        response = web.Response(
            status=status,
            body=error_body(f"the gateway rejected the request: {reason.lower()}"),
            content_type="application/json",
            headers={API_VERSION_HEADER: API_VERSION},
        )
        response.force_close()
        return response


class GatewayServer(web.Server):
    """web.Server that builds GatewayRequestHandler connections."""

    def __init__(self, *args, header_timeout: float = 30.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout

    def __call__(self) -> RequestHandler:
        handler = GatewayRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.header_timeout = self.header_timeout
        return handler
