"""The request handler: one client request in, one upstream request out, both streamed.

Bodies are never read whole. A request body is handed to the upstream request as
aiohttp's StreamReader (sent with the client's Content-Length, or chunked when
the client sent it chunked), and a response body is copied with `iter_any()` as
it arrives, so memory stays flat for any blob size and aiohttp's `client_max_size`
(which only applies to `request.read()`) never comes into play.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
import uuid

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from gateway.config import Config, format_host_port
from gateway.rewrite import MalformedURL, Rewriter

log = logging.getLogger("gateway.proxy")
access_log = logging.getLogger("gateway.access")

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
# Headers aiohttp's client adds on its own unless told not to; the upstream must
# see only what the client sent.
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


def connection_tokens(headers) -> set[str]:
    tokens: set[str] = set()
    for value in headers.getall(hdrs.CONNECTION, ()):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


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
        """The `host[:port]` the client used, when it is one of ours; else the primary name."""
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
        dropped = HOP_BY_HOP | connection_tokens(request.headers)
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

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        request_id = uuid.uuid4().hex[:16]
        self.in_flight += 1
        self._idle.clear()
        counters = {"in": 0, "out": 0}
        response: web.StreamResponse | None = None
        try:
            response = await self._forward(request, request_id, counters)
            return response
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
            self._log_access(request, response, request_id, counters, started)
            if self.metrics is not None:
                status = response.status if response is not None else 499
                self.metrics.record(request.method, status, counters["in"], counters["out"])

    def _log_access(self, request, response, request_id, counters, started) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        status = response.status if response is not None else 499
        access_log.info(
            '%s "%s %s" %d in=%d out=%d %.3fs id=%s',
            request.remote or "-",
            request.method,
            loggable_path(request.raw_path),
            status,
            counters["in"],
            counters["out"],
            time.monotonic() - started,
            request_id,
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
        authority = self.public_authority(request)
        origin = "https://" + authority
        peer = request.remote
        url = self._upstream_url(raw_path)
        headers = self._upstream_headers(request, authority, peer)
        chunked = "chunked" in request.headers.get(hdrs.TRANSFER_ENCODING, "").lower()
        body = _CountingBody(request.content, counters, chunked) if request.body_exists else None

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
        except (aiohttp.ServerTimeoutError, aiohttp.ConnectionTimeoutError, TimeoutError) as exc:
            return self._upstream_failure(504, "timed out", url, request_id, exc)
        except (aiohttp.ClientError, OSError) as exc:
            return self._upstream_failure(502, "unreachable", url, request_id, exc)
        if self.metrics is not None:
            self.metrics.upstream_latency.observe(time.monotonic() - sent)

        try:
            return await self._relay(request, upstream, origin, url, request_id, counters)
        finally:
            upstream.close() if not upstream.content.at_eof() else upstream.release()

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

        try:
            async for chunk in upstream.content.iter_any():
                counters["out"] += len(chunk)
                await response.write(chunk)
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, TimeoutError, aiohttp.ClientOSError) as exc:
            # Headers are gone already; the only honest signal left is to cut the
            # connection, so the client sees a short or unterminated body.
            log.warning(
                "Upstream %s broke off the response body after %d bytes (request id %s): %s",
                url, counters["out"], request_id, exc or type(exc).__name__,
            )
            if self.metrics is not None:
                self.metrics.upstream_errors.labels("broke off the response").inc()
            _abort(request)
            return response
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            log.debug("Client went away during the response (request id %s)", request_id)
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
        reason = str(exc) or type(exc).__name__
        log.warning("Upstream %s %s (request id %s): %s", url, what, request_id, reason)
        if self.metrics is not None:
            self.metrics.upstream_errors.labels(what).inc()
        code = "UNAVAILABLE"
        message = (
            f"the gateway's upstream registry {what}" if status == 502 else "the upstream registry timed out"
        )
        return registry_error(status, code, message, {"upstream": url, "error": reason})


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


class _CountingBody:
    """An async iterable over the client's body that counts bytes on the way."""

    def __init__(self, stream, counters: dict, chunked: bool = False):
        self._stream = stream
        self._counters = counters
        self._chunked = chunked

    def __aiter__(self):
        return self._iterate()

    async def _iterate(self):
        if not self._chunked:
            # iter_any() returns everything buffered at once: few, large writes.
            async for chunk in self._stream.iter_any():
                self._counters["in"] += len(chunk)
                yield chunk
            return
        # A chunked body (Docker's streamed PATCH) arrives as one buffer piece per
        # HTTP chunk, which iter_any() would join into a new bytes object, a copy
        # of every byte. iter_chunks() hands each piece over as it is.
        async for chunk, _end_of_http_chunk in self._stream.iter_chunks():
            if chunk:
                self._counters["in"] += len(chunk)
                yield chunk
