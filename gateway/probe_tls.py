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
from gateway.probe import Options, Report

RECORD_HANDSHAKE = 0x16
RECORD_ALERT = 0x15
# Go rejects a first record whose version field is 0x1000 or more as not TLS.
MAX_PLAUSIBLE_VERSION = 0x1000
# TLS 1.2 allows 2^14 bytes of plaintext plus 2048 of expansion (RFC 5246 6.2.3).
MAX_CIPHERTEXT = 16384 + 2048
MAX_HANDSHAKE_ROUNDS = 20

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
    target = report.target
    started = time.monotonic()
    deadline = started + options.timeout
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_name = None if target.is_ip else target.host
    tls = client_hello_context().wrap_bio(
        incoming, outgoing, server_hostname=server_name
    )
    try:
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        sock.sendall(outgoing.read())
        data, closed, timed_out, reset = _read_first(sock, deadline)
        first = classify_first_bytes(data, closed, timed_out, reset)
        report.evidence["first_bytes"] = first.preview or preview_bytes(data)
        report.evidence["first_bytes_kind"] = first.kind
        if first.kind != "tls-handshake":
            report.step(
                "tls", "failed", first.detail, options.timeout, started, first.go_error
            )
            if first.kind == "http":
                report.evidence["http_status_line"] = data.split(b"\r\n", 1)[0].decode(
                    "latin-1"
                )
            return TLSResult(first.kind)
        result = _finish_handshake(
            report, sock, tls, incoming, outgoing, data, deadline, started, options
        )
    finally:
        sock.close()
    if result.kind == "tls-handshake":
        probe_verify.check_chain(report, result.chain_der, options)
    return result


def _finish_handshake(
    report, sock, tls, incoming, outgoing, data, deadline, started, options
) -> TLSResult:
    incoming.write(data)
    for _ in range(MAX_HANDSHAKE_ROUNDS):
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pending = outgoing.read()
            if pending:
                sock.sendall(pending)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                report.step(
                    "tls",
                    "failed",
                    "The TLS handshake did not finish within the timeout.",
                    options.timeout,
                    started,
                    "net/http: TLS handshake timeout",
                )
                return TLSResult("silence")
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except (socket.timeout, ConnectionResetError):
                chunk = b""
            if not chunk:
                report.step(
                    "tls",
                    "failed",
                    "The server closed the connection during the TLS handshake.",
                    options.timeout,
                    started,
                    "EOF",
                )
                return TLSResult("closed")
            incoming.write(chunk)
        except ssl.SSLError as exc:
            text = _alert_text(exc)
            report.step(
                "tls",
                "failed",
                f"The TLS handshake failed: {exc.reason or exc}.",
                options.timeout,
                started,
                text,
            )
            report.evidence["tls_error"] = str(exc.reason or exc)
            return TLSResult("tls-alert")
    else:  # pragma: no cover - a handshake needs a handful of rounds, never twenty
        report.step(
            "tls",
            "failed",
            "The TLS handshake did not finish.",
            options.timeout,
            started,
            "net/http: TLS handshake timeout",
        )
        return TLSResult("silence")
    pending = outgoing.read()
    if pending:
        sock.sendall(pending)

    # NOTE: `_sslobj.get_unverified_chain()` is private in Python 3.11 (public
    # as SSLSocket.get_unverified_chain from 3.13); the leaf alone is the fallback.
    chain = []
    getter = getattr(getattr(tls, "_sslobj", None), "get_unverified_chain", None)
    if getter is not None:
        chain = [cert.public_bytes(ssl._ssl.ENCODING_DER) for cert in getter() or []]
    if not chain:
        chain = [tls.getpeercert(binary_form=True)]
    version, cipher = tls.version() or "", (tls.cipher() or ("",))[0]
    report.evidence["tls_version"] = version
    report.evidence["cipher"] = cipher
    report.evidence["alpn"] = tls.selected_alpn_protocol() or ""
    detail = (
        f"TLS handshake done: {version}, {cipher}, {len(chain)} certificate(s) sent."
    )
    report.step("tls", "ok", detail, options.timeout, started)
    return TLSResult("tls-handshake", chain, version, cipher)


def _alert_text(exc: ssl.SSLError) -> str:
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
