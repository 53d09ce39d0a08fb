"""Request failures in the probe's steps read as plain sentences, not library texts."""

from __future__ import annotations

import errno
import http.client
import socket
import ssl

import pytest

from gateway import probe_http


def ssl_error(reason: str, text: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] {text} (_ssl.c:2580)")
    exc.reason = reason
    return exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), "connection reset by peer"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "connection refused"),
        (socket.timeout("timed out"), "timed out"),
        (
            ssl_error("TLSV13_ALERT_CERTIFICATE_REQUIRED", "tlsv13 alert certificate required"),
            "the server sent the TLS alert 'remote error: tls: certificate required'",
        ),
        (ssl_error("WRONG_VERSION_NUMBER", "wrong version number"), "TLS failed: wrong version number"),
        (
            http.client.RemoteDisconnected("Remote end closed connection without response"),
            "Remote end closed connection without response",
        ),
    ],
)
def test_error_text_plain(exc, expected):
    text = probe_http.error_text(exc)
    assert text == expected
    assert "[Errno" not in text
    assert "_ssl.c" not in text

