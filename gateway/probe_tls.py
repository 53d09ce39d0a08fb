"""Probe step 3: send a real ClientHello, classify the first bytes, capture the chain.

The ClientHello comes from Python's `ssl` module through a memory BIO, so the
probe reads the raw bytes the server sends back before any TLS library interprets
them. The classification mirrors Go 1.19 `crypto/tls` (`readRecordOrCCS`) and
`net/http` (`send`), which decide the error every registry client prints.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field

from gateway import probe_verify
from gateway.probe import Options, Report, join_host_port

RECORD_HANDSHAKE = 0x16
RECORD_ALERT = 0x15
# Go rejects a first record whose version field is 0x1000 or more as not TLS.
MAX_PLAUSIBLE_VERSION = 0x1000
# TLS 1.2 allows 2^14 bytes of plaintext plus 2048 of expansion (RFC 5246 6.2.3).
MAX_CIPHERTEXT = 16384 + 2048
MAX_HANDSHAKE_ROUNDS = 20
HANDSHAKE_TIMEOUT = "net/http: TLS handshake timeout"

# Alert descriptions as Go's crypto/tls alert.go names them (RFC 8446 6).
ALERT_TEXTS = {
    0: "close notify",
    10: "unexpected message",
    20: "bad record MAC",
    40: "handshake failure",
    42: "bad certificate",
    43: "unsupported certificate",
    44: "revoked certificate",
    45: "expired certificate",
    46: "unknown certificate",
    47: "illegal parameter",
    48: "unknown certificate authority",
    50: "error decoding message",
    51: "error decrypting message",
    70: "protocol version not supported",
    71: "insufficient security level",
    80: "internal error",
    86: "inappropriate fallback",
    109: "missing extension",
    110: "unsupported extension",
    112: "unrecognized name",
    116: "certificate required",
    120: "no application protocol",
}


@dataclass
class FirstBytes:
    """The meaning of the first bytes back from a ClientHello, and Go's error for them."""

    kind: str  # tls-handshake, tls-alert, http, plaintext, closed, silence, reset
    go_error: str
    detail: str
    preview: str = ""


@dataclass
class TLSResult:
    """The transport found by step 3, with the chain when the handshake finished."""

    kind: str
    chain_der: list[bytes] = field(default_factory=list)
    version: str = ""
    cipher: str = ""


def preview_bytes(data: bytes, limit: int = 48) -> str:
    """Render the first bytes printably, like Python's bytes repr without the b''."""
    return repr(data[:limit])[2:-1]


def classify_first_bytes(
    data: bytes, closed: bool = False, timed_out: bool = False, reset: bool = False
) -> FirstBytes:
    """Classify the server's first bytes after a ClientHello, as Go's TLS client would."""
    shown = preview_bytes(data)
    if not data:
        if reset:
            return FirstBytes(
                "reset",
                "read: connection reset by peer",
                "The server reset the connection without sending a byte.",
            )
        if timed_out:
            return FirstBytes(
                "silence",
                "net/http: TLS handshake timeout",
                "The server sent nothing back within the timeout.",
            )
        return FirstBytes(
            "closed", "EOF", "The server closed the connection without sending a byte."
        )
    if len(data) < 5:
        return FirstBytes(
            "closed",
            "unexpected EOF",
            f"The server sent only {len(data)} bytes ({shown}) and closed.",
            shown,
        )

    record_type = data[0]
    version = data[1] << 8 | data[2]
    length = data[3] << 8 | data[4]
    if record_type == 0x80:
        return FirstBytes(
            "plaintext",
            "tls: unsupported SSLv2 handshake received",
            f"The server answered with an SSLv2-style record ({shown}).",
            shown,
        )
    if (
        record_type not in (RECORD_HANDSHAKE, RECORD_ALERT)
        or version >= MAX_PLAUSIBLE_VERSION
    ):
        if data[:5] == b"HTTP/":
            return FirstBytes(
                "http",
                "http: server gave HTTP response to HTTPS client",
                f"The server answered the ClientHello in plain HTTP: {shown}",
                shown,
            )
        return FirstBytes(
            "plaintext",
            "tls: first record does not look like a TLS handshake",
            f"The server answered with plaintext that is not HTTP: {shown}",
            shown,
        )
    if length > MAX_CIPHERTEXT:
        return FirstBytes(
            "plaintext",
            f"tls: oversized record received with length {length}",
            f"The first record claims {length} bytes, more than TLS allows.",
            shown,
        )
    if record_type == RECORD_ALERT:
        description = data[6] if len(data) >= 7 else -1
        text = ALERT_TEXTS.get(description, f"alert({description})")
        return FirstBytes(
            "tls-alert",
            f"remote error: tls: {text}",
            f"The server sent a TLS alert: {text}.",
            shown,
        )
    return FirstBytes(
        "tls-handshake", "", "The server answered with a TLS handshake record.", shown
    )


def client_hello_context() -> ssl.SSLContext:
    """Build a client context that accepts any certificate, because probe_verify checks it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # Registry clients offer HTTP/1.1 (Go's http.Transport adds h2 only when enabled).
    context.set_alpn_protocols(["http/1.1"])
    return context


def _read_first(sock: socket.socket, deadline: float) -> tuple[bytes, bool, bool, bool]:
    """Read until 7 bytes arrived (record header and alert body), close, reset or deadline."""
    data = b""
    while len(data) < 7:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return data, False, not data, False
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            return data, False, not data, False
        except ConnectionResetError:
            return data, False, False, True
        if not chunk:
            return data, True, False, False
        data += chunk
        if len(data) >= 5 and data[0] == RECORD_HANDSHAKE:
            break
    return data, False, False, False


def probe_transport(report: Report, sock: socket.socket, options: Options) -> TLSResult:
    """Step 3 and 4: ClientHello, first bytes, handshake, then the certificate checks."""
    handshake = Handshake(report, sock, options)
    try:
        result = handshake.run()
    finally:
        sock.close()
    if result.kind == "tls-handshake":
        probe_verify.check_chain(report, result.chain_der, options)
    return result


class Handshake:
    """One TLS handshake over a connected socket, driven through memory BIOs."""

    def __init__(self, report: Report, sock: socket.socket, options: Options):
        self.report, self.sock, self.options = report, sock, options
        self.started = time.monotonic()
        self.deadline = self.started + options.timeout
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        target = report.target
        server_name = None if target.is_ip else target.host
        self.tls = client_hello_context().wrap_bio(
            self.incoming, self.outgoing, server_hostname=server_name
        )
        # getpeername() fails once the peer has reset, so the remote end comes from
        # the address the connect step used.
        local = sock.getsockname()
        remote = join_host_port(
            report.evidence.get("address", target.host), target.port
        )
        self.ends = f"{join_host_port(*local[:2])}->{remote}"

    def fail(self, kind: str, detail: str, go_error: str) -> TLSResult:
        self.report.step(
            "tls", "failed", detail, self.options.timeout, self.started, go_error
        )
        return TLSResult(kind)

    def run(self) -> TLSResult:
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        try:
            self.sock.sendall(self.outgoing.read())
        except (ConnectionResetError, BrokenPipeError):
            data, closed, timed_out, reset = b"", False, False, True
        else:
            data, closed, timed_out, reset = _read_first(self.sock, self.deadline)
        first = classify_first_bytes(data, closed, timed_out, reset)
        if first.kind == "reset":
            # Go names both ends, e.g. `read tcp 127.0.0.1:36916->127.0.0.1:5000: ...`.
            first.go_error = f"read tcp {self.ends}: {first.go_error}"
        evidence = self.report.evidence
        evidence["first_bytes"] = first.preview or preview_bytes(data)
        evidence["first_bytes_kind"] = first.kind
        if first.kind == "http":
            status_line = data.split(b"\r\n", 1)[0]
            evidence["http_status_line"] = status_line.decode("latin-1")
        if first.kind != "tls-handshake":
            return self.fail(first.kind, first.detail, first.go_error)
        self.incoming.write(data)
        return self.finish()

    def finish(self) -> TLSResult:
        """Feed server bytes to the TLS object until the handshake completes or fails."""
        for _ in range(MAX_HANDSHAKE_ROUNDS):
            try:
                self.tls.do_handshake()
                return self.done()
            except ssl.SSLWantReadError:
                failure = self.exchange()
                if failure is not None:
                    return failure
            except ssl.SSLError as exc:
                self.report.evidence["tls_error"] = str(exc.reason or exc)
                detail = f"The TLS handshake failed: {exc.reason or exc}."
                return self.fail("tls-alert", detail, alert_text(exc))
        # A handshake takes a handful of rounds, so this line is not reached.
        detail = "The TLS handshake did not finish."  # pragma: no cover
        return self.fail("silence", detail, HANDSHAKE_TIMEOUT)  # pragma: no cover

    def exchange(self) -> TLSResult | None:
        """Send what the TLS object wrote and read the server's next bytes."""
        pending = self.outgoing.read()
        if pending:
            self.sock.sendall(pending)
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            detail = "The TLS handshake did not finish within the timeout."
            return self.fail("silence", detail, HANDSHAKE_TIMEOUT)
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except (socket.timeout, ConnectionResetError):
            chunk = b""
        if not chunk:
            detail = "The server closed the connection during the TLS handshake."
            return self.fail("closed", detail, "EOF")
        self.incoming.write(chunk)
        return None

    def done(self) -> TLSResult:
        pending = self.outgoing.read()
        if pending:
            self.sock.sendall(pending)

        # NOTE: `_sslobj.get_unverified_chain()` is private in Python 3.11 (public
        # as SSLSocket.get_unverified_chain from 3.13); the leaf alone is the fallback.
        tls = self.tls
        chain = []
        getter = getattr(getattr(tls, "_sslobj", None), "get_unverified_chain", None)
        if getter is not None:
            chain = [c.public_bytes(ssl._ssl.ENCODING_DER) for c in getter() or []]
        if not chain:
            chain = [tls.getpeercert(binary_form=True)]

        version, cipher = tls.version() or "", (tls.cipher() or ("",))[0]
        evidence = self.report.evidence
        evidence["tls_version"] = version
        evidence["cipher"] = cipher
        evidence["alpn"] = tls.selected_alpn_protocol() or ""
        alpn = evidence["alpn"] or "no ALPN"
        detail = (
            f"TLS handshake done: {version}, {cipher}, {alpn}, "
            f"{len(chain)} certificate(s) sent."
        )
        self.report.step("tls", "ok", detail, self.options.timeout, self.started)
        return TLSResult("tls-handshake", chain, version, cipher)


def alert_text(exc: ssl.SSLError) -> str:
    """Translate an OpenSSL alert reason into Go's `remote error: tls: ...` text."""
    reason = (exc.reason or "").upper()
    if "ALERT_" not in reason:
        return f"tls: {(exc.reason or 'handshake failure').replace('_', ' ').lower()}"
    # OpenSSL says SSLV3_ALERT_BAD_CERTIFICATE or TLSV1_ALERT_UNKNOWN_CA; Go names
    # the same alerts after RFC 8446 section 6.
    name = reason.split("ALERT_", 1)[1].replace("_", " ").lower()
    renames = {
        "unknown ca": "unknown certificate authority",
        "certificate unknown": "unknown certificate",
    }
    return f"remote error: tls: {renames.get(name, name)}"
