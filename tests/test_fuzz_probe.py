"""Fuzzing the probe's parsers with hypothesis: no crash, only documented outcomes.

The first-bytes classifier must name a known kind for any bytes a server can
send, the WWW-Authenticate parser must return a scheme and a dict for any
header value, and the pasted-error recogniser must return an explanation (or
say it found nothing) for any text a user can paste.
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.probe_explain import explain, find_address
from gateway.probe_http import parse_www_authenticate
from gateway.probe_tls import classify_first_bytes

EXAMPLES = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")), deadline=None)

KINDS = {"tls-handshake", "tls-alert", "http", "plaintext", "closed", "reset", "silence"}

TLS_PREFIXES = [b"\x16\x03\x01", b"\x16\x03\x03\x00\x7a", b"\x15\x03\x03\x00\x02\x02\x28", b"HTTP/1.1 400", b"HTTP/", b"<!DOCTYPE", b"\x00", b""]

ERROR_WORDS = [
    "Error response from daemon: ", 'Get "https://', "registry.example:5000", "/v2/", '": ',
    "http: server gave HTTP response to HTTPS client", "x509: certificate signed by unknown authority",
    "dial tcp ", "127.0.0.1:5000", ": connect: connection refused", "pinging container registry ",
    "failed to resolve reference ", "x509: certificate is valid for ", ", not ", "lookup ", ": no such host",
    "[::1]:5000", "https://", "http://", ":", " ", "\n", "\"", "received unexpected HTTP status: 413",
]


@EXAMPLES
@given(prefix=st.sampled_from(TLS_PREFIXES), rest=st.binary(max_size=64), closed=st.booleans(), timed_out=st.booleans(), reset=st.booleans())
def test_first_bytes_always_classified(prefix, rest, closed, timed_out, reset):
    result = classify_first_bytes(prefix + rest, closed=closed, timed_out=timed_out, reset=reset)
    assert result.kind in KINDS, result.kind
    assert isinstance(result.go_error, str)


@EXAMPLES
@given(value=st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(['Bearer ', 'Basic ', 'realm=', '"', 'http://a/t', ',', 'service=', 'scope=', ' ', '=', '\\']), max_size=30).map("".join),
))
def test_www_authenticate_parser_total(value):
    scheme, params = parse_www_authenticate(value)
    assert isinstance(scheme, str)
    assert isinstance(params, dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())


@EXAMPLES
@given(text=st.one_of(st.text(max_size=300), st.lists(st.sampled_from(ERROR_WORDS), max_size=25).map("".join)))
def test_pasted_error_parser_total(text):
    # A pasted URL with an impossible address ("http://0:0") is a user error:
    # GatewayError, shown as one line, is the documented outcome.
    try:
        explanation = explain(text)
    except GatewayError:
        explanation = "rejected"
    assert explanation is not None
    try:
        host, port, _url = find_address(text)
    except GatewayError:
        pass
    else:
        assert isinstance(host, str)
        # ("", 0, "") means the text names no registry address.
        assert (host, port) == ("", 0) or (host and 0 < port < 65536)
