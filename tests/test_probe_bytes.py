"""The first-bytes classifier, the target parser and the Go texts, on canned input (no sockets)."""

from __future__ import annotations

import datetime
import shlex
import subprocess
import sys

import pytest

from gateway import probe, probe_http, probe_tls, probe_verify, verdicts
from gateway.errors import GatewayError

SERVER_HELLO = bytes.fromhex("160303007a020000760303")
REGISTRY_400 = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
)
HTTP_SERVER_09 = b'<!DOCTYPE HTML>\n<html lang="en">\n    <head>'


@pytest.mark.parametrize(
    ("data", "kind", "go_error"),
    [
        (SERVER_HELLO, "tls-handshake", ""),
        (REGISTRY_400, "http", "http: server gave HTTP response to HTTPS client"),
        (
            b"HTTP/1.0 200 OK\r\n",
            "http",
            "http: server gave HTTP response to HTTPS client",
        ),
        (
            HTTP_SERVER_09,
            "plaintext",
            "tls: first record does not look like a TLS handshake",
        ),
        (
            b"SSH-2.0-OpenSSH_9.2\r\n",
            "plaintext",
            "tls: first record does not look like a TLS handshake",
        ),
        (
            b"\x15\x03\x03\x00\x02\x02\x70",
            "tls-alert",
            "remote error: tls: unrecognized name",
        ),
        (
            b"\x15\x03\x01\x00\x02\x02\x28",
            "tls-alert",
            "remote error: tls: handshake failure",
        ),
        (
            b"\x16\x30\x30\x00\x10",
            "plaintext",
            "tls: first record does not look like a TLS handshake",
        ),
        (
            b"\x16\x03\x03\xff\xff",
            "plaintext",
            "tls: oversized record received with length 65535",
        ),
        (
            b"\x80\x2e\x01\x00\x02",
            "plaintext",
            "tls: unsupported SSLv2 handshake received",
        ),
        (b"HTT", "closed", "unexpected EOF"),
    ],
)
def test_first_bytes_kinds(data, kind, go_error):
    """Each canned reply gets the kind and the Go error text the clients print."""
    first = probe_tls.classify_first_bytes(data, closed=True)
    assert first.kind == kind
    assert first.go_error == go_error


def test_first_bytes_close_timeout_reset():
    """No bytes at all: a close is EOF, silence a handshake timeout, a reset its own text."""
    assert probe_tls.classify_first_bytes(b"", closed=True).go_error == "EOF"
    assert probe_tls.classify_first_bytes(b"", timed_out=True).kind == "silence"
    assert (
        probe_tls.classify_first_bytes(b"", timed_out=True).go_error
        == "net/http: TLS handshake timeout"
    )
    assert probe_tls.classify_first_bytes(b"", reset=True).kind == "reset"


def test_http_prefix_only_on_first_five_bytes():
    """Go matches `HTTP/` exactly; `HTTP ` or lower case is other plaintext."""
    assert probe_tls.classify_first_bytes(b"HTTP 200 OK\r\n").kind == "plaintext"
    assert probe_tls.classify_first_bytes(b"http/1.1 200 OK\r\n").kind == "plaintext"


@pytest.mark.parametrize(
    ("text", "host", "port", "port_given"),
    [
        ("registry.local:5000", "registry.local", 5000, True),
        ("registry.local", "registry.local", 443, False),
        ("https://registry.local:5443/v2/", "registry.local", 5443, True),
        ("[::1]:5000", "::1", 5000, True),
        ("::1", "::1", 443, False),
        ("192.0.2.10:5000", "192.0.2.10", 5000, True),
    ],
)
def test_parse_target_forms(text, host, port, port_given):
    target = probe.parse_target(text)
    assert (target.host, target.port, target.port_given) == (host, port, port_given)


def test_parse_target_authority_brackets_ipv6():
    assert probe.parse_target("[::1]:5000").authority == "[::1]:5000"
    assert probe.parse_target("registry.local").reference == "registry.local"


@pytest.mark.parametrize(
    "text",
    ["registry.local:0", "registry.local:http", "registry.local:70000", ":5000", ""],
)
def test_parse_target_rejects_bad_input(text):
    with pytest.raises(GatewayError):
        probe.parse_target(text)


@pytest.mark.parametrize(
    ("value", "scheme", "params"),
    [
        ('Basic realm="lab-realm"', "basic", {"realm": "lab-realm"}),
        (
            'Bearer realm="https://registry.example:5001/api/auth",service="localhost:5000"',
            "bearer",
            {
                "realm": "https://registry.example:5001/api/auth",
                "service": "localhost:5000",
            },
        ),
        (
            'Bearer realm="https://a/t", scope=repository:x:pull',
            "bearer",
            {"realm": "https://a/t", "scope": "repository:x:pull"},
        ),
    ],
)
def test_www_authenticate_parsing(value, scheme, params):
    assert probe_http.parse_www_authenticate(value) == (scheme, params)


def test_go_rfc3339_uses_z_for_utc():
    moment = datetime.datetime(
        2026, 12, 2, 21, 47, 23, 123456, tzinfo=datetime.timezone.utc
    )
    assert probe_verify.go_rfc3339(moment) == "2026-12-02T21:47:23Z"


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("registry.example", "registry.example", True),
        ("REGISTRY.example.", "registry.example", True),
        ("*.example", "registry.example", True),
        ("*.example", "a.registry.example", False),
        ("registry.example", "other.example", False),
        ("127.0.0.1", "127.0.0.1", True),
    ],
)
def test_go_hostname_matching(pattern, host, matches):
    assert probe_verify._match_hostname(pattern, host) is matches


def test_findings_flag_internal_service_name():
    """A challenge whose service names localhost leaks the backend address."""
    report = probe.Report(target=probe.parse_target("registry.example:443"))
    report.evidence["auth"] = {
        "scheme": "bearer",
        "params": {
            "realm": "https://registry.example:5001/api/auth",
            "service": "localhost:5000",
        },
        "realm_authority": "registry.example:5001",
        "realm_scheme": "https",
    }
    verdicts._add_findings(report)
    texts = [f.text for f in report.findings]
    assert any("service='localhost:5000' is an internal name" in t for t in texts)
    assert any(
        "does not cover the token realm at registry.example:5001" in t for t in texts
    )


@pytest.mark.parametrize("verdict", sorted(verdicts.FIXES))
def test_fix_commands_parse(verdict):
    """Every command a fix names is a real registry-gateway command line."""
    from gateway import cli

    report = probe.Report(
        target=probe.parse_target("registry.example:5000"), verdict=verdict
    )
    parser = cli.build_parser()
    for fix in verdicts.fixes(report):
        assert fix.side in ("registry", "gateway", "client")
        if not fix.command:
            continue
        argv = shlex.split(fix.command)
        assert argv[0] == "registry-gateway"
        parsed = parser.parse_args(argv[1:])
        assert parsed.func is not None


CERTIFICATE_VERDICTS = (
    probe.UNKNOWN_AUTHORITY,
    probe.SELF_SIGNED,
    probe.CHAIN_INCOMPLETE,
    probe.NAME_MISMATCH,
    probe.IP_SAN_MISSING,
    probe.CN_ONLY,
    probe.EXPIRED,
    probe.NOT_YET_VALID,
)


@pytest.mark.parametrize("verdict", CERTIFICATE_VERDICTS)
def test_certificate_fixes_no_upstream(verdict):
    """A certificate verdict means the port speaks TLS, so no fix points a plain-HTTP upstream at it."""
    report = probe.Report(
        target=probe.parse_target("registry.example:5000"), verdict=verdict
    )
    for fix in verdicts.fixes(report):
        assert "--upstream" not in fix.command
        assert "http://registry.example:5000" not in fix.text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["127.0.0.1:99999"], "Invalid port '99999' in '127.0.0.1:99999'"),
        (["--local", "registry.local:0"], "Invalid port '0' in 'registry.local:0'"),
        (["--explain", ""], "--explain needs a client's error message, but the text is empty"),
        (["--explain", "   "], "--explain needs a client's error message, but the text is empty"),
    ],
)
def test_probe_usage_errors(argv, message):
    """An invalid target or an empty --explain is a usage error: exit 2 with the usage line."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "probe", *argv],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("usage: registry-gateway probe")
    assert f"registry-gateway probe: error: {message}" in result.stderr
    assert result.stdout == ""


def test_probe_explain_empty_stdin():
    """`--explain -` with nothing on standard input is a usage error too."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "probe", "--explain", "-"],
        capture_output=True, text=True, timeout=60, input="",
    )
    assert result.returncode == 2
    assert "but standard input is empty" in result.stderr
