"""Listeners: TLS termination, the plain-HTTP answer on the TLS port, and shutdown.

Each listener is a plain TCP socket with our own accept loop. Before the TLS
handshake the loop peeks at the first byte of each connection (MSG_PEEK, so
nothing is consumed): a TLS record starts with 0x16 (handshake), and such a
connection is handed to aiohttp with the SSL context. Anything else is a client
speaking plain HTTP to the TLS port (an `http://` mirror entry, a k3s endpoint, a
curl test); it gets a plain-HTTP 400 in registry JSON that names the `https://`
URL, instead of a dropped connection.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import errno
import json
import logging
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp.web_response
from aiohttp import web

from gateway.config import Config, Listener, format_host_port
from gateway.errors import CertificateError, ConfigError
from gateway.fastpath import LINGERING_TIME, FastPath
from gateway.logs import RateLimitedLog
from gateway.protocol import GatewayServer
from gateway.status import TrustInfo
from gateway.proxy import ACCESS, API_VERSION, API_VERSION_HEADER, Proxy, registry_error

log = logging.getLogger("gateway.server")
overload_log = RateLimitedLog(log)

# aiohttp adds `Server: Python/3.x aiohttp/3.y` to each response it writes that
# has no Server field, which gives a scanner both versions; the registry sends no
# Server field at all. Responses that aiohttp writes (the gateway's own pages and
# errors, and requests the fast path hands over) name only the product instead.
# NOTE: a module global of aiohttp (checked in 3.14) that web_response reads per response.
aiohttp.web_response.SERVER_SOFTWARE = "registry-gateway"

TLS_HANDSHAKE = 0x16
FIRST_BYTE_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 10.0
PLAIN_HEAD_LIMIT = 16 * 1024
BACKLOG = 1024
KEEPALIVE_TIMEOUT = 75.0
# asyncio's SSLProtocol allocates (and zero-fills) a read buffer of this size for
# every TLS connection; its default of 256 KiB made each idle keep-alive
# connection cost about 290 KiB of RSS. A TLS record holds at most 16 KiB, so
# 32 KiB still takes two full records per socket read.
TLS_READ_BUFFER = 32 * 1024

# Mozilla's "intermediate" TLS 1.2 cipher list (server-side TLS guidelines, v5.7);
# TLS 1.3 suites are fixed by OpenSSL and all acceptable.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)


def make_ssl_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """Build the listener's context: TLS 1.2 and 1.3 only, ALPN http/1.1."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    # The gateway speaks HTTP/1.1 only; offering h2 would make clients pick a
    # protocol aiohttp's server does not serve.
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(str(cert), str(key))
    except FileNotFoundError as exc:
        raise CertificateError(
            f"Certificate or key file not found: {exc.filename!r}. Check --cert and --key, "
            "or leave both out to use a generated certificate."
        ) from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise CertificateError(
                f"The key {str(key)!r} does not match the certificate {str(cert)!r}: give "
                "the key that was created with this certificate."
            ) from None
        if "KEY_TOO_SMALL" in str(exc) or "CA_MD_TOO_WEAK" in str(exc):
            raise CertificateError(
                f"The certificate {str(cert)!r} uses a key or signature too weak for "
                f"OpenSSL's security level ({exc.reason}): issue a new one with at least "
                "RSA 2048 or ECDSA P-256 and SHA-256, e.g. registry-gateway certs issue NAME."
            ) from None
        raise CertificateError(
            f"Cannot load the certificate {str(cert)!r} with key {str(key)!r}: {exc.reason or exc}. "
            "Both must be PEM files and the key must not be encrypted."
        ) from None
    except OSError as exc:
        raise CertificateError(
            f"Cannot read the certificate {str(cert)!r} or key {str(key)!r}: {exc.strerror}."
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise CertificateError(
                f"Cannot load tls.client_ca {str(client_ca)!r}: "
                f"{getattr(exc, 'strerror', None) or getattr(exc, 'reason', None) or exc}. Give the "
                "PEM file of the CA that signs your clients' certificates, or leave client_ca "
                "empty to accept clients without one."
            ) from None
        # CERT_OPTIONAL still rejects a certificate that does not verify, in the
        # handshake; a client that sends none is answered at the HTTP level
        # (proxy.Proxy), because asyncio drops the TLS alert and Go clients would
        # print only "EOF" instead of why.
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def bind_listener(listener: Listener, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    """Open a listening socket, turning the usual failures into one-line errors.

    `reuse_port` sets SO_REUSEPORT, so that several worker processes can bind the
    same address; `listen=False` only binds, to reserve a port for them.
    """
    try:
        infos = socket.getaddrinfo(
            listener.host or None, listener.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(
            f"Cannot listen on {listener}: the host {listener.host!r} does not resolve "
            f"({exc.strerror}). Give an address such as 127.0.0.1 or [::1]."
        ) from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and listener.host in ("::", ""):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        if listen:
            sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"Cannot listen on {listener}: the address is already in use. Stop the "
                "other process or choose another port with --listen HOST:PORT."
            ) from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise ConfigError(
                f"Cannot listen on {listener}: permission denied. Ports below 1024 "
                "need root or CAP_NET_BIND_SERVICE; choose a port such as 5443."
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(
                f"Cannot listen on {listener}: no interface on this machine has the "
                "address. Give one of its own addresses."
            ) from None
        raise ConfigError(f"Cannot listen on {listener}: {exc.strerror}.") from None
    sock.setblocking(False)
    return sock


@dataclass
class _BoundListener:
    listener: Listener
    sock: socket.socket
    task: asyncio.Task | None = None

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]


@dataclass
class Gateway:
    """The running gateway: listeners, the proxy and its aiohttp protocol factory."""

    config: Config
    ssl_context: ssl.SSLContext
    trust: TrustInfo | None = None
    proxy: Proxy = field(init=False)
    bound: list[_BoundListener] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.proxy = Proxy(self.config)
        self.proxy.trust = self.trust
        self._server: web.Server | None = None
        self.fast: FastPath | None = None
        self._connections: set[asyncio.Task] = set()
        self._stopping = False
        self.handshake_failures = 0

    @property
    def addresses(self) -> list[str]:
        """The `host:port` of each listener, with the port the OS chose for port 0."""
        return [format_host_port(b.listener.host, b.port) for b in self.bound]

    async def start(self) -> None:
        # NOTE: a class attribute of the standard library's SSLProtocol (CPython
        # 3.11-3.13); it applies to every TLS connection in this process.
        asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER
        for listener in self.config.listen:
            sock = bind_listener(listener, reuse_port=self.config.workers > 1)
            self.bound.append(_BoundListener(listener, sock))
        await self.proxy.start()
        limits = dict(
            auto_decompress=False,
            handler_cancellation=False,
            access_log=None,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
            max_line_size=self.config.max_request_line,
            max_field_size=self.config.max_header_size,
            max_headers=self.config.max_headers,
            header_timeout=self.config.header_timeout,
            # After an early response (408, 400, 503) aiohttp reads on to the end
            # of the body before closing, and a stalled client is not worth 10 s of that.
            lingering_time=LINGERING_TIME,
        )
        self._server = GatewayServer(self.proxy.handle, **limits)
        self._overload_server = GatewayServer(self._refuse_overload, **limits)
        if self.config.fast_path:
            self.fast = FastPath(self.proxy, self._server)
            self.fast.start()
        loop = asyncio.get_running_loop()
        for bound in self.bound:
            bound.task = loop.create_task(self._accept_loop(bound.sock))
            log.debug("Listening on https://%s", format_host_port(bound.listener.host, bound.port))

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _address = await loop.sock_accept(sock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                # EMFILE and friends: wait a moment instead of spinning on accept().
                log.warning("accept() failed on %s: %s", sock.getsockname(), exc)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            task = loop.create_task(self._dispatch(conn))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _dispatch(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            first = await asyncio.wait_for(_peek_first_byte(loop, conn), FIRST_BYTE_TIMEOUT)
        except (TimeoutError, OSError):
            conn.close()
            return
        if not first:
            conn.close()
            return
        if first[0] == TLS_HANDSHAKE:
            try:
                # Read now: a failed handshake closes the socket, and the peer with it.
                peer = conn.getpeername()[0]
            except OSError:
                peer = "-"
            factory = self.fast.protocol if self.fast is not None else self._server
            if self.open_connections > self.config.max_connections:
                factory = self._overload_server
            try:
                await loop.connect_accepted_socket(
                    factory, conn, ssl=self.ssl_context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
                )
            except (OSError, ssl.SSLError, TimeoutError) as exc:
                self._handshake_failed(conn, peer, exc)
            return
        await self._answer_plain_http(loop, conn)

    def _handshake_failed(self, conn: socket.socket, peer: str, exc: BaseException) -> None:
        conn.close()
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        if self.config.client_ca is None:
            # Scanners and clients that dropped a connection land here too, so the
            # line is at info and rate-limited. A browser that cannot use the
            # certificate shows here, for example as NO_SUITABLE_SIGNATURE_ALGORITHM.
            overload_log.info("tls-failed", "TLS handshake from %s failed: %s", peer, reason)
            return
        # With mTLS on, a failed handshake is usually a client without a valid
        # certificate: worth a warning, as a failed password would be.
        self.handshake_failures += 1
        overload_log.warning(
            "mtls-failed",
            "TLS handshake from %s failed (client certificate required by tls.client_ca): "
            "%s (%d failures since start)",
            peer,
            reason,
            self.handshake_failures,
        )

    @property
    def open_connections(self) -> int:
        """Connections being served, plus those still before or in their handshake."""
        served = len(self._server.connections) if self._server is not None else 0
        if self.fast is not None:
            served += len(self.fast.connections)
        return served + len(self._connections)

    async def _refuse_overload(self, request: web.BaseRequest) -> web.StreamResponse:
        overload_log.warning(
            "max-connections",
            "Refused a connection from %s: %d connections are open, limits.max_connections is %d",
            request.remote or "-",
            self.open_connections,
            self.config.max_connections,
        )
        response = registry_error(
            503, "UNAVAILABLE", "the gateway has too many open connections; retry shortly"
        )
        response.headers["Retry-After"] = "1"
        response.force_close()
        return response

    async def _answer_plain_http(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        try:
            head = await asyncio.wait_for(_read_head(loop, conn), FIRST_BYTE_TIMEOUT)
            host = _host_from_head(head) or format_host_port(
                self.config.primary_name, conn.getsockname()[1]
            )
            body = json.dumps(
                {
                    "errors": [
                        {
                            "code": "UNSUPPORTED",
                            "message": (
                                f"this port speaks HTTPS only: use https://{host}/ "
                                "and trust the gateway's CA"
                            ),
                            "detail": {"url": f"https://{host}/"},
                        }
                    ]
                }
            ).encode()
            response = (
                b"HTTP/1.1 400 Bad Request\r\n"
                b"Content-Type: application/json\r\n"
                + f"{API_VERSION_HEADER}: {API_VERSION}\r\n".encode()
                + f"Content-Length: {len(body)}\r\n".encode()
                + b"Connection: close\r\n\r\n"
                + body
            )
            await loop.sock_sendall(conn, response)
            log.info("Responded with 400 to a plain-HTTP request on the TLS port (host %s)", host)
        except (TimeoutError, OSError):
            pass
        finally:
            conn.close()

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish up to the drain timeout, then close."""
        if self._stopping:
            return
        self._stopping = True
        for bound in self.bound:
            if bound.task is not None:
                bound.task.cancel()
            bound.sock.close()
        for bound in self.bound:
            if bound.task is not None:
                try:
                    await bound.task
                except asyncio.CancelledError:
                    pass
        if self.fast is not None:
            self.fast.close_idle()
        drained = await self.proxy.wait_idle(self.config.drain_timeout)
        if not drained:
            log.warning(
                "Drain timeout of %g s passed with %d request(s) still in flight; closing them",
                self.config.drain_timeout,
                self.proxy.in_flight,
            )
        if self._server is not None:
            # close() ends idle keep-alive connections at once and busy ones after
            # their current request; shutdown() then waits for those briefly.
            for server in (self._server, self._overload_server):
                for handler in server.connections:
                    handler.close()
                await server.shutdown(timeout=1.0)
        for task in list(self._connections):
            task.cancel()
        if self.fast is not None:
            await self.fast.close()
        await self.proxy.close()
        ACCESS.flush()


async def _peek_first_byte(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bytes:
    ready = loop.create_future()
    fd = conn.fileno()

    def on_readable() -> None:
        if not ready.done():
            ready.set_result(None)

    # NOTE: add_reader needs a selector event loop; on Windows the CLI selects one.
    loop.add_reader(fd, on_readable)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
    return conn.recv(1, socket.MSG_PEEK)


async def _read_head(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < PLAIN_HEAD_LIMIT:
        chunk = await loop.sock_recv(conn, 4096)
        if not chunk:
            break
        data += chunk
    return data


def _host_from_head(head: bytes) -> str | None:
    for line in head.split(b"\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"host":
            text = value.strip().decode("latin-1")
            # Only a plausible authority goes back into the message.
            if text and all(c.isalnum() or c in ".-:[]_" for c in text):
                return text
    return None
