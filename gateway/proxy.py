"""The request handler: one client request in, one upstream request out, both streamed.

Bodies are never read whole. A request body goes to the upstream as an async
iterable over the client's stream (`RequestBody`), sent with the client's
Content-Length or chunked when the client sent it chunked. A response body is
copied piece by piece with `readany()` as it arrives. Memory therefore stays
flat for any blob size, and aiohttp's `client_max_size` (which only applies to
`request.read()`) never comes into play.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
import time

import aiohttp
from aiohttp import hdrs, web
from aiohttp.http_exceptions import BadHttpMessage
from multidict import CIMultiDict
from yarl import URL

from gateway.config import Config, format_host_port
from gateway import status
from gateway.auth import REALM as AUTH_REALM
from gateway.auth import BasicAuth
from gateway.logs import AccessLog, RateLimitedLog
from gateway.rewrite import MalformedURL, Rewriter

log = logging.getLogger("gateway.proxy")
access_log = logging.getLogger("gateway.access")
ACCESS = AccessLog(access_log)
upstream_log = RateLimitedLog(log)

API_VERSION_HEADER = "Docker-Distribution-Api-Version"
API_VERSION = "registry/2.0"

# RFC 9110 section 7.6.1 lists the hop-by-hop fields (Connection, Proxy-Connection,
# Keep-Alive, TE, Transfer-Encoding, Upgrade); the Proxy-* credentials fields
# (section 11.7) belong to one hop too. Names listed in Connection are added per request.
HOP_BY_HOP = frozenset(
    name.lower()
    for name in (
        "Connection",
        "Proxy-Connection",
        "Keep-Alive",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Proxy-Authenticate",
        "Proxy-Authorization",
    )
)
FORWARDING = frozenset(
    ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port", "x-real-ip")
)
# Headers aiohttp's client adds by default; skipping them means the upstream
# gets only what the client sent.
SKIP_AUTO_HEADERS = frozenset(
    (hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.USER_AGENT, hdrs.CONTENT_TYPE)
)
# Query parameters whose values never go into the access log.
SECRET_PARAMS = frozenset(("access_token", "token", "password", "secret", "refresh_token"))

COPY_CHUNK = 256 * 1024
# Bodies up to this size (manifests, error documents, the empty bodies of upload
# responses) are read whole and sent with the headers in one write, which saves a
# TLS record and a send() per response. Larger bodies stream.
SMALL_BODY = 64 * 1024


def registry_error(status: int, code: str, message: str, detail: object = None) -> web.Response:
    """Build an error in the registry's JSON format, which every client can parse."""
    body = {"errors": [{"code": code, "message": message, "detail": detail}]}
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers={API_VERSION_HEADER: API_VERSION},
    )


def unauthorized() -> web.Response:
    response = registry_error(401, "UNAUTHORIZED", "authentication required")
    response.headers[hdrs.WWW_AUTHENTICATE] = f'Basic realm="{AUTH_REALM}"'
    return response


def connection_tokens(headers) -> set[str]:
    tokens: set[str] = set()
    for value in headers.getall(hdrs.CONNECTION, ()):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


SECRET_HEADERS = frozenset(("authorization", "proxy-authorization", "cookie", "x-registry-auth"))


def redacted_headers(headers) -> str:
    """Render headers for a debug line with every credential value replaced by `***`."""
    return ", ".join(
        f"{name}: {'***' if name.lower() in SECRET_HEADERS else value}" for name, value in headers.items()
    )


def new_request_id() -> str:
    """Return 16 random hex digits that tie a request's log lines together."""
    return "%016x" % random.getrandbits(64)


def access_line(peer, method, raw_path, status, bytes_in, bytes_out, seconds, request_id) -> str:
    """Format one access-log line, the same on both request paths."""
    return '%s "%s %s" %d in=%d out=%d %.3fs id=%s' % (
        peer, method, loggable_path(raw_path), status, bytes_in, bytes_out, seconds, request_id,
    )


def loggable_path(raw_path: str) -> str:
    """Return the path with secret-looking query values replaced by `***`."""
    path, sep, query = raw_path.partition("?")
    if not sep:
        return raw_path
    kept = []
    for item in query.split("&"):
        name = item.split("=", 1)[0]
        kept.append(f"{name}=***" if name.lower() in SECRET_PARAMS else item)
    return path + "?" + "&".join(kept)


class Proxy:
    """Forwards requests to the upstream registry and rewrites its self-references."""

    def __init__(self, config: Config):
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._registry_base = str(config.upstream).rstrip("/")
        self._routes = sorted(
            ((r.prefix, str(r.upstream).rstrip("/")) for r in config.routes),
            key=lambda item: len(item[0]),
            reverse=True,
        )
        names = set(config.names)
        names.update(("localhost", "127.0.0.1", "::1"))
        names.update(l.host for l in config.listen if l.host not in ("", "0.0.0.0", "::"))
        self._public_names = {n.lower() for n in names}
        self.rewriter = Rewriter(
            [config.upstream, *(r.upstream for r in config.routes)], self._public_names
        )
        self.auth = BasicAuth.from_file(config.htpasswd) if config.htpasswd else None
        self.client_certificate_failures = 0
        self.trust: status.TrustInfo | None = None
        self.in_flight = 0
        # A gateway.metrics.Metrics when metrics_listen is set; None costs nothing per request.
        self.metrics = None
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.config.pool_size,
            limit_per_host=self.config.pool_size,
            keepalive_timeout=60,
            enable_cleanup_closed=False,
        )
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=None,
            sock_connect=self.config.connect_timeout,
            sock_read=self.config.idle_timeout,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=SKIP_AUTO_HEADERS,
            read_bufsize=COPY_CHUNK,
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        """The client session to the upstream; exists between start() and close()."""
        assert self._session is not None, "Proxy.start() must run first"
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False when `timeout` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # --- origins -------------------------------------------------------------

    def public_authority(self, request: web.BaseRequest) -> str:
        """Return the `host[:port]` the client used if it names this gateway, else the primary name."""
        host_header = request.headers.get(hdrs.HOST, "")
        host = URL.build(scheme="https", authority=host_header).host if host_header else None
        if host is not None and host.lower() in self._public_names:
            return host_header
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        port = sockname[1] if sockname else self.config.listen[0].port
        return format_host_port(self.config.primary_name, None if port == 443 else port)

    def _is_trusted(self, peer: str | None) -> bool:
        if not peer or not self.config.trusted_proxies:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.config.trusted_proxies)

    # --- request -------------------------------------------------------------

    def _upstream_url(self, raw_path: str) -> str:
        for prefix, base in self._routes:
            if raw_path == prefix or raw_path.startswith(prefix.rstrip("/") + "/") or raw_path.startswith(prefix + "?"):
                return base + raw_path
        return self._registry_base + raw_path

    def _upstream_headers(self, request: web.BaseRequest, authority: str, peer: str | None) -> CIMultiDict:
        # The gateway sends the 100 Continue itself (see _forward).
        dropped = HOP_BY_HOP | connection_tokens(request.headers) | {"expect"}
        if self.auth is not None:
            # The credentials are the gateway's own, so they are not sent to the registry.
            dropped = dropped | {"authorization"}
        trusted = self._is_trusted(peer)
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in request.headers.items():
            lowered = name.lower()
            if lowered in dropped:
                continue
            if lowered in FORWARDING and not trusted:
                continue
            headers.add(name, value)

        if not trusted or hdrs.X_FORWARDED_PROTO not in headers:
            headers[hdrs.X_FORWARDED_PROTO] = "https"
        if not trusted or hdrs.X_FORWARDED_HOST not in headers:
            headers[hdrs.X_FORWARDED_HOST] = authority
            port = URL.build(scheme="https", authority=authority).port
            headers["X-Forwarded-Port"] = str(port or 443)
        if peer:
            prior = headers.get(hdrs.X_FORWARDED_FOR) if trusted else None
            headers[hdrs.X_FORWARDED_FOR] = f"{prior}, {peer}" if prior else peer
        return headers

    # --- response ------------------------------------------------------------

    def _response_headers(self, upstream: aiohttp.ClientResponse, origin: str) -> CIMultiDict:
        dropped = HOP_BY_HOP | connection_tokens(upstream.headers)
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in upstream.headers.items():
            lowered = name.lower()
            if lowered in dropped:
                continue
            if lowered in ("location", "content-location"):
                value = self.rewriter.location(value, origin)
            elif lowered == "link":
                value = self.rewriter.link(value, origin)
            elif lowered == "www-authenticate":
                value = self.rewriter.www_authenticate(value, origin)
            headers.add(name, value)
        if API_VERSION_HEADER not in headers:
            headers[API_VERSION_HEADER] = API_VERSION
        return headers

    def request_started(self) -> None:
        """Count a request as in flight, for `wait_idle`; both request paths call it."""
        self.in_flight += 1
        self._idle.clear()

    def request_finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        request_id = new_request_id()
        self.request_started()
        counters = {"in": 0, "out": 0}
        response: web.StreamResponse | None = None
        try:
            response = await self._forward(request, request_id, counters)
            return response
        finally:
            self.request_finished()
            if (
                isinstance(response, web.Response)
                and not counters["out"]
                and response.body
                and request.method != hdrs.METH_HEAD
            ):
                # The gateway's own responses (errors, /_gateway/ pages) are not streamed,
                # so their size comes from the body they carry; a HEAD sends none.
                counters["out"] = len(response.body)
            self._log_access(request, response, request_id, counters, started)
            if self.metrics is not None:
                status = response.status if response is not None else 499
                self.metrics.record(request.method, status, counters["in"], counters["out"])

    def _log_access(self, request, response, request_id, counters, started) -> None:
        if not ACCESS.enabled():
            return
        status = response.status if response is not None else 499
        ACCESS.write(
            access_line(
                request.remote or "-", request.method, request.raw_path, status,
                counters["in"], counters["out"], time.monotonic() - started, request_id,
            )
        )

    async def _forward(self, request: web.BaseRequest, request_id: str, counters: dict) -> web.StreamResponse:
        raw_path = request.raw_path
        if not raw_path.startswith("/"):
            # An absolute-form target ("GET http://other/ HTTP/1.1") asks us to act
            # as a forward proxy for another host, which this gateway never does.
            return registry_error(
                400, "UNSUPPORTED", "this gateway accepts only origin-form request targets",
                {"target": raw_path[:200]},
            )
        assert self._session is not None, "Proxy.start() must run before requests"
        if raw_path.startswith(status.PREFIX) or raw_path == status.PREFIX.rstrip("/"):
            return await status.handle(
                request, self.public_authority(request), self.trust, self._session, self._registry_base
            )
        if self.config.client_ca is not None and not _peer_certificate(request):
            return self._no_client_certificate(request)
        if self.auth is not None:
            user = await self.auth.check(request.headers.get(hdrs.AUTHORIZATION), request.remote)
            if user is None:
                return unauthorized()
        authority = self.public_authority(request)
        origin = "https://" + authority
        peer = request.remote
        url = self._upstream_url(raw_path)
        headers = self._upstream_headers(request, authority, peer)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "Forwarding %s %s to %s (request id %s) with headers %s",
                request.method, loggable_path(raw_path), url.split("/v2/")[0], request_id,
                redacted_headers(headers),
            )
        expect = request.headers.get(hdrs.EXPECT)
        if expect is not None and expect.strip().lower() != "100-continue":
            return registry_error(
                417, "UNSUPPORTED", "the gateway supports no expectation but Expect: 100-continue",
                {"expect": expect[:200]},
            )
        body = None
        if request.body_exists:
            if expect is not None:
                # Sent here, as nginx does: the client sends its body at once, and the
                # registry gets no Expect, so nothing waits for a second interim response.
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            widen_tls_reads(request.transport)
            chunked = "chunked" in request.headers.get(hdrs.TRANSFER_ENCODING, "").lower()
            body = RequestBody(request.content, counters, self.config.client_idle_timeout, chunked)
            # Wait for the first body bytes before opening the upstream request, so
            # a body that is malformed or stalled from its start reaches nothing.
            failure = await body.read_first()
            if failure is not None:
                return self._client_body_failure(request, failure, request_id)

        sent = time.monotonic()
        try:
            upstream = await self._session.request(
                request.method,
                URL(url, encoded=True),
                headers=headers,
                data=body,
                allow_redirects=False,
                compress=None,
            )
        except asyncio.CancelledError:
            raise
        except (aiohttp.ServerTimeoutError, aiohttp.ConnectionTimeoutError, TimeoutError, aiohttp.ClientError, OSError) as exc:
            if body is not None and body.failure is not None:
                return self._client_body_failure(request, body.failure, request_id)
            timed_out = isinstance(exc, (aiohttp.ServerTimeoutError, aiohttp.ConnectionTimeoutError, TimeoutError))
            if timed_out:
                return self._upstream_failure(504, "timed out", url, request_id, exc)
            return self._upstream_failure(502, "unreachable", url, request_id, exc)
        if self.metrics is not None:
            self.metrics.upstream_latency.observe(time.monotonic() - sent)

        try:
            return await self._relay(request, upstream, origin, url, request_id, counters)
        finally:
            upstream.close() if not upstream.content.at_eof() else upstream.release()

    def _no_client_certificate(self, request: web.BaseRequest) -> web.Response:
        self.client_certificate_failures += 1
        upstream_log.warning(
            "mtls-missing",
            "Rejected a request from %s without a client certificate (tls.client_ca is set; "
            "%d rejections since start)",
            request.remote or "-",
            self.client_certificate_failures,
        )
        response = registry_error(
            401,
            "UNAUTHORIZED",
            "this registry requires a TLS client certificate: put client.cert and client.key "
            f"in the client's certs.d folder for {self.public_authority(request)} "
            "(for Docker, /etc/docker/certs.d/HOST:PORT/)",
        )
        response.force_close()
        return response

    def _client_body_failure(self, request, failure: BaseException, request_id: str) -> web.StreamResponse:
        if isinstance(failure, TimeoutError):
            log.info(
                "Client %s sent no body bytes for %g s; closed the request (request id %s)",
                request.remote, self.config.client_idle_timeout, request_id,
            )
            response = registry_error(
                408, "UNSUPPORTED", "the request body stalled past the idle timeout"
            )
        elif isinstance(failure, BadHttpMessage):
            upstream_log.warning(
                "bad-body", "Rejected a malformed request body from %s: %s (request id %s)",
                request.remote, str(failure).splitlines()[0][:200], request_id,
            )
            response = registry_error(400, "UNSUPPORTED", "the request body is malformed")
        else:
            log.debug("Client %s went away during the request body (request id %s)", request.remote, request_id)
            _abort(request)
            response = web.Response(status=499)
            return response
        response.force_close()
        return response

    async def _relay(self, request, upstream, origin, url, request_id, counters) -> web.StreamResponse:
        try:
            headers = self._response_headers(upstream, origin)
        except MalformedURL as exc:
            log.warning(
                "Upstream %s sent a malformed URL header (request id %s): %s", url, request_id, exc
            )
            return registry_error(
                502, "UNKNOWN", "the registry sent a malformed Location or Link header",
                {"upstream": url, "error": str(exc)},
            )

        length = upstream.content_length
        if (
            length is not None
            and length <= SMALL_BODY
            and request.method != hdrs.METH_HEAD
            and upstream.status not in (204, 304)
        ):
            return await self._relay_small(upstream, headers, url, request_id, counters)

        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        await response.prepare(request)
        if request.method == hdrs.METH_HEAD or upstream.status in (204, 304):
            await response.write_eof()
            return response

        idle = self.config.client_idle_timeout
        while True:
            try:
                chunk = await upstream.content.readany()
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, TimeoutError, aiohttp.ClientOSError) as exc:
                # Headers are gone already; the only honest signal left is to cut the
                # connection, so the client sees a short or unterminated body.
                upstream_log.warning(
                    "upstream-broken-body",
                    "Upstream %s broke off the response body after %d bytes (request id %s): %s",
                    url, counters["out"], request_id, str(exc) or type(exc).__name__,
                )
                if self.metrics is not None:
                    self.metrics.upstream_errors.labels("broke off the response").inc()
                _abort(request)
                return response
            if not chunk:
                break
            counters["out"] += len(chunk)
            try:
                # A client that stops reading would otherwise hold the upstream forever.
                async with asyncio.timeout(idle):
                    await response.write(chunk)
            except (ConnectionResetError, aiohttp.ClientConnectionResetError, TimeoutError) as exc:
                log.debug(
                    "Client stopped reading the response (request id %s): %s",
                    request_id, type(exc).__name__,
                )
                _abort(request)
                return response
        await response.write_eof()
        return response

    async def _relay_small(self, upstream, headers, url, request_id, counters) -> web.Response:
        try:
            body = await upstream.read()
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, TimeoutError, aiohttp.ClientOSError) as exc:
            # Nothing has gone to the client yet, so it can still get a clean 502.
            return self._upstream_failure(502, "broke off the response", url, request_id, exc)
        counters["out"] += len(body)
        return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)

    def _upstream_failure(self, status, what, url, request_id, exc) -> web.Response:
        reason = upstream_error_text(exc)
        upstream_log.warning(
            f"upstream-{status}", "Upstream %s %s (request id %s): %s", url, what, request_id, reason
        )
        if self.metrics is not None:
            self.metrics.upstream_errors.labels(what).inc()
        code = "UNAVAILABLE"
        if status == 502:
            verb = "is unreachable" if what == "unreachable" else what
            message = f"the gateway's upstream registry {verb}: {reason}"
        else:
            message = "the upstream registry timed out"
        return registry_error(
            status, code, message, {"upstream": url, "error": str(exc) or type(exc).__name__}
        )


def upstream_error_text(exc: BaseException) -> str:
    """Say in a plain sentence why the upstream could not be reached, with the fix where known."""
    raw = str(exc) or type(exc).__name__
    host = getattr(getattr(exc, "host", None), "__str__", lambda: "")()
    port = getattr(exc, "port", None)
    where = f"{host}:{port}" if host and port else "the upstream"
    if "WRONG_VERSION_NUMBER" in raw.upper():
        # The usual cause: an https:// upstream in front of a registry that speaks plain HTTP.
        return f"{where} answered the TLS handshake in plain HTTP, so give the upstream as http://{where}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"the certificate of {where} did not verify ({exc.certificate_error})"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"the name {host} does not resolve; check the upstream URL"
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, ConnectionRefusedError):
        return f"connection refused: nothing listens on {where}; start the registry or fix the upstream URL"
    if isinstance(exc, TimeoutError):
        return f"no answer from {where} in time"
    return raw


# asyncio's own default read size for TLS connections; the listener starts each
# connection smaller (see server.TLS_READ_BUFFER) and a request with a body gets this.
UPLOAD_TLS_READ = 256 * 1024


def widen_tls_reads(transport) -> None:
    """Let this connection read 256 KiB of TLS data at a time, for an upload."""
    # NOTE: _ssl_protocol is a private attribute of asyncio's SSL transport
    # (CPython 3.11-3.13); without it the upload only reads in smaller steps.
    ssl_protocol = getattr(transport, "_ssl_protocol", None)
    if ssl_protocol is not None and getattr(ssl_protocol, "max_size", UPLOAD_TLS_READ) < UPLOAD_TLS_READ:
        ssl_protocol.max_size = UPLOAD_TLS_READ


def _peer_certificate(request: web.BaseRequest):
    transport = request.transport
    return transport.get_extra_info("peercert") if transport is not None else None


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


class RequestBody:
    """The client's request body as an async iterable, with an idle timeout per read.

    The first chunk is read before the upstream request starts (`read_first`). A
    failure on the client's side (stall, disconnect, malformed chunk) is kept in
    `failure`, so the handler can tell it from an upstream failure.
    """

    def __init__(self, stream, counters: dict, idle_timeout: float, chunked: bool = False):
        self._stream = stream
        self._counters = counters
        self._timeout = idle_timeout
        self._chunked = chunked
        self._first = b""
        self.failure: BaseException | None = None

    async def _read(self) -> bytes:
        try:
            async with asyncio.timeout(self._timeout):
                chunk = await self._next_piece()
        except (TimeoutError, BadHttpMessage, ConnectionError, aiohttp.ClientConnectionError) as exc:
            self.failure = exc
            raise
        self._counters["in"] += len(chunk)
        return chunk

    async def _next_piece(self) -> bytes:
        if not self._chunked:
            # readany() returns everything buffered at once: few, large writes.
            return await self._stream.readany()
        # A chunked body (Docker's streamed PATCH) arrives as one buffer piece per
        # HTTP chunk, which readany() would join into a new bytes object, a copy
        # of every byte; readchunk() hands each piece over as it is.
        while True:
            chunk, end_of_http_chunk = await self._stream.readchunk()
            if chunk or not end_of_http_chunk:
                return chunk

    async def read_first(self) -> BaseException | None:
        try:
            self._first = await self._read()
        except (TimeoutError, BadHttpMessage, ConnectionError, aiohttp.ClientConnectionError) as exc:
            return exc
        return None

    def __aiter__(self):
        return self._iterate()

    async def _iterate(self):
        if self._first:
            yield self._first
            self._first = b""
        while True:
            chunk = await self._read()
            if not chunk:
                return
            yield chunk
