"""One real server per verdict; skopeo runs against the same server and must print the predicted text."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys

import pytest
from aiohttp import web

from gateway import certs, lab, probe
from tests import probe_support as support
from tests.probe_support import (
    DAY,
    make_ca,
    make_leaf,
    prediction,
    run_probe,
    skopeo_inspect,
    without_clock,
)

IMAGE = "rig/test:v1"


@pytest.fixture(scope="module")
def root_ca():
    return make_ca("Probe Test Root A")


@pytest.fixture(scope="module")
def other_ca():
    return make_ca("Probe Test Root B")


def tls_registry(tmp_path, chain, key, htpasswd=None) -> lab.RegistryProcess:
    cert_path, key_path = support.write_pair(tmp_path / "server", chain, key)
    registry = lab.RegistryProcess(
        tls_cert=cert_path, tls_key=key_path, htpasswd=htpasswd
    )
    registry.workdir = tmp_path / "registry"
    registry.workdir.mkdir()
    return registry.start()


def assert_skopeo_parity(report: probe.Report, reference: str, trust_dir=None) -> None:
    """skopeo's real message, minus its image-name prefix, equals the predicted one."""
    predicted = prediction(report, "podman")
    assert not predicted.ok
    real = skopeo_inspect(f"{reference}/{IMAGE}", trust_dir)
    assert without_clock(predicted.core) == without_clock(real)


def test_plain_http_registry(registry):
    """A plain-HTTP registry: the ClientHello gets HTTP back, Go's famous error."""
    report = run_probe(registry.address)
    assert report.verdict == probe.PLAIN_HTTP_REGISTRY
    assert report.go_error == "http: server gave HTTP response to HTTPS client"
    assert report.evidence["http_status_line"].startswith("HTTP/1.1 400")
    assert report.evidence["v2"]["api_version"] == "registry/2.0"
    assert prediction(report, "docker").ok, "docker treats 127.0.0.0/8 as insecure"
    assert prediction(report, "containerd").ok, "ctr uses plain HTTP for 127.0.0.1"
    assert (
        report.fixes[0].command
        == f"registry-gateway serve --upstream http://{registry.address} --name 127.0.0.1 --listen 127.0.0.1:5443"
    )
    assert (
        report.fixes[2].command
        == f"registry-gateway snippet docker {registry.address} --insecure"
    )
    assert_skopeo_parity(report, registry.address)


def test_tls_good_chain_with_ca(tmp_path, root_ca):
    """A registry with its own http.tls and a good chain verifies with the CA given."""
    leaf = make_leaf(root_ca, ["127.0.0.1", "localhost"])
    registry = tls_registry(tmp_path, [leaf.cert], leaf.key)
    trust = support.write_trust(tmp_path / "trust", root_ca.cert)
    try:
        report = run_probe(registry.address, ca=[trust / "ca.crt"])
        real = skopeo_inspect(f"{registry.address}/{IMAGE}", trust)
    finally:
        registry.stop()
    assert report.verdict == probe.TLS_OK
    assert prediction(report, "podman").ok
    assert prediction(report, "docker").ok
    # ctr speaks plain HTTP to 127.0.0.1, and the Go TLS server returns 400.
    ctr = prediction(report, "containerd")
    assert ctr.message.endswith(
        f"pulling from host {registry.address} failed with status code [manifests v1]: 400 Bad Request"
    )
    assert report.evidence["plain_http_reply"]["server"] == "go"
    assert report.evidence["tls_version"] in ("TLSv1.2", "TLSv1.3")
    # skopeo got past TLS and /v2/: the only failure left is the missing image.
    assert (
        real
        == f"reading manifest v1 in {registry.address}/rig/test: manifest unknown: manifest unknown"
    )


def test_tls_good_chain_via_cert_dir(tmp_path, root_ca):
    """The trust folder certs.d/HOST:PORT/ca.crt counts as a trusted CA."""
    leaf = make_leaf(root_ca, ["127.0.0.1"])
    registry = tls_registry(tmp_path, [leaf.cert], leaf.key)
    certs_d = tmp_path / "certs.d"
    support.write_trust(certs_d / registry.address, root_ca.cert)
    try:
        report = run_probe(registry.address, cert_dir=certs_d)
    finally:
        registry.stop()
    assert report.verdict == probe.TLS_OK
    assert report.evidence["trust_sources"] == [
        str(certs_d / registry.address / "ca.crt")
    ]


def test_tls_unknown_ca(tmp_path, root_ca):
    """A good chain with no trusted CA: unknown authority, with a note on the single cert."""
    leaf = make_leaf(root_ca, ["127.0.0.1"])
    registry = tls_registry(tmp_path, [leaf.cert], leaf.key)
    try:
        report = run_probe(registry.address)
        assert report.verdict == probe.UNKNOWN_AUTHORITY
        assert report.go_error == "x509: certificate signed by unknown authority"
        assert report.side == "client"
        assert_skopeo_parity(report, registry.address)
    finally:
        registry.stop()
    assert any("sent 1 certificate" in f.text for f in report.findings)


def test_tls_wrong_ca(tmp_path, root_ca, other_ca):
    """The client trusts a different CA than the one that issued the leaf."""
    leaf = make_leaf(root_ca, ["127.0.0.1"])
    registry = tls_registry(tmp_path, [leaf.cert], leaf.key)
    trust = support.write_trust(tmp_path / "trust", other_ca.cert)
    try:
        report = run_probe(registry.address, ca=[trust / "ca.crt"])
        assert report.verdict == probe.UNKNOWN_AUTHORITY
        assert_skopeo_parity(report, registry.address, trust)
    finally:
        registry.stop()


def test_tls_self_signed(tmp_path):
    """A self-signed leaf: unknown authority for Go, reported as self-signed."""
    leaf = make_leaf(
        None, ["127.0.0.1", "localhost"], common_name="registry self-signed"
    )
    registry = tls_registry(tmp_path, [leaf.cert], leaf.key)
    try:
        report = run_probe(registry.address)
        assert report.verdict == probe.SELF_SIGNED
        assert report.evidence["certificates"][0]["self_signed"] is True
        assert_skopeo_parity(report, registry.address)
        trust = support.write_trust(tmp_path / "trust", leaf.cert)
        trusted = run_probe(registry.address, ca=[trust / "ca.crt"])
    finally:
        registry.stop()
    assert trusted.verdict == probe.TLS_OK, (
        "trusting the self-signed leaf itself works, as in docker's certs.d"
    )


@pytest.mark.parametrize(
    ("host", "verdict", "go_error"),
    [
        (
            "127.0.0.1",
            probe.IP_SAN_MISSING,
            "x509: cannot validate certificate for 127.0.0.1 because it doesn't contain any IP SANs",
        ),
        (
            "localhost",
            probe.NAME_MISMATCH,
            "x509: certificate is valid for wrong-name.invalid, not localhost",
        ),
    ],
)
def test_tls_wrong_san(tmp_path, root_ca, host, verdict, go_error):
    """A SAN for another name: the IP and the DNS form of Go's hostname error."""
    leaf = make_leaf(root_ca, ["wrong-name.invalid"])
    registry = tls_registry(tmp_path, [leaf.cert], leaf.key)
    trust = support.write_trust(tmp_path / "trust", root_ca.cert)
    reference = f"{host}:{registry.port}"
    try:
        report = run_probe(reference, ca=[trust / "ca.crt"])
        assert report.verdict == verdict
        assert report.go_error == go_error
        assert_skopeo_parity(report, reference, trust)
    finally:
        registry.stop()
    assert report.evidence["certificates"][0]["dns_sans"] == ["wrong-name.invalid"]
    assert report.fixes[0].text.startswith(
        f"Reissue the registry's certificate with the SAN {'IP' if host[0].isdigit() else 'DNS'}:{host};"
    )
    assert (
        report.fixes[1].text
        == "Or connect by a name the certificate lists: wrong-name.invalid."
    )


def test_tls_wrong_ip_san(tmp_path, root_ca):
    """An IP SAN for another address lists the addresses it is valid for."""
    leaf = make_leaf(root_ca, ["192.0.2.10"])
    registry = tls_registry(tmp_path, [leaf.cert], leaf.key)
    trust = support.write_trust(tmp_path / "trust", root_ca.cert)
    try:
        report = run_probe(registry.address, ca=[trust / "ca.crt"])
        assert (
            report.go_error
            == "x509: certificate is valid for 192.0.2.10, not 127.0.0.1"
        )
        assert_skopeo_parity(report, registry.address, trust)
    finally:
        registry.stop()


@pytest.mark.parametrize(
    ("host", "go_error"),
    [
        (
            "127.0.0.1",
            "x509: certificate relies on legacy Common Name field, use SANs instead",
        ),
        (
            "localhost",
            "x509: certificate is not valid for any names, but wanted to match localhost",
        ),
    ],
)
def test_tls_cn_only(tmp_path, root_ca, host, go_error):
    """A CN-only certificate (CN=127.0.0.1, no SAN), which OpenSSL accepts and Go rejects."""
    leaf = make_leaf(root_ca, [], common_name="127.0.0.1")
    registry = tls_registry(tmp_path, [leaf.cert], leaf.key)
    trust = support.write_trust(tmp_path / "trust", root_ca.cert)
    reference = f"{host}:{registry.port}"
    try:
        report = run_probe(reference, ca=[trust / "ca.crt"])
        assert report.verdict == probe.CN_ONLY
        assert report.go_error == go_error
        assert_skopeo_parity(report, reference, trust)
    finally:
        registry.stop()
    assert report.evidence["certificates"][0]["has_san_extension"] is False
    assert "CN='127.0.0.1'" in report.summary


def test_tls_cn_only_fixes(tmp_path, root_ca):
    """A CN-only certificate on a TLS registry: reissue it, never a gateway to a TLS port."""
    from gateway import probe_cli

    leaf = make_leaf(root_ca, [], common_name="127.0.0.1")
    registry = tls_registry(tmp_path, [leaf.cert], leaf.key)
    trust = support.write_trust(tmp_path / "trust", root_ca.cert)
    try:
        report = run_probe(registry.address, ca=[trust / "ca.crt"])
    finally:
        registry.stop()
    text = probe_cli.render(report)
    assert report.verdict == probe.CN_ONLY
    assert report.fixes[0].side == "registry"
    assert report.fixes[0].command == "registry-gateway certs issue 127.0.0.1"
    assert "http.tls certificate and key" in report.fixes[0].text
    assert report.fixes[1].command == f"registry-gateway certs export --host {registry.address} --for docker"
    assert report.fixes[2].command.startswith("registry-gateway snippet containerd")
    assert len(report.fixes) == 3
    assert "--upstream" not in text
    assert "Or connect by a name the certificate lists" not in text


def test_tls_expired(tmp_path, root_ca):
    """An expired leaf: Go's text carries both times; the report shows both clocks."""
    not_after = (certs.now() - DAY).replace(microsecond=0)
    leaf = make_leaf(root_ca, ["127.0.0.1"], not_after=not_after)
    registry = tls_registry(tmp_path, [leaf.cert], leaf.key)
    trust = support.write_trust(tmp_path / "trust", root_ca.cert)
    try:
        report = run_probe(registry.address, ca=[trust / "ca.crt"])
        assert report.verdict == probe.EXPIRED
        assert report.go_error.endswith(
            f"is after {not_after.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        )
        assert_skopeo_parity(report, registry.address, trust)
    finally:
        registry.stop()
    assert report.evidence["clock_utc"] in report.summary


def test_tls_missing_intermediate(tmp_path, root_ca):
    """The registry serves the leaf without its intermediate: chain incomplete."""
    intermediate = make_ca("Probe Test Intermediate", root_ca)
    leaf = make_leaf(
        intermediate, ["127.0.0.1"], ca_issuers_url="http://ca.invalid/intermediate.crt"
    )
    registry = tls_registry(tmp_path, [leaf.cert], leaf.key)
    trust = support.write_trust(tmp_path / "trust", root_ca.cert)
    try:
        report = run_probe(registry.address, ca=[trust / "ca.crt"])
        assert report.verdict == probe.CHAIN_INCOMPLETE
        assert report.go_error == "x509: certificate signed by unknown authority"
        assert report.evidence["missing_issuer"] == "CN=Probe Test Intermediate"
        assert report.side == "registry"
        assert_skopeo_parity(report, registry.address, trust)
    finally:
        registry.stop()


def test_tls_full_chain_ok(tmp_path, root_ca):
    """The same leaf served with its intermediate verifies."""
    intermediate = make_ca("Probe Test Intermediate", root_ca)
    leaf = make_leaf(intermediate, ["127.0.0.1"])
    registry = tls_registry(tmp_path, [leaf.cert, intermediate.cert], leaf.key)
    trust = support.write_trust(tmp_path / "trust", root_ca.cert)
    try:
        report = run_probe(registry.address, ca=[trust / "ca.crt"])
    finally:
        registry.stop()
    assert report.verdict == probe.TLS_OK
    assert len(report.evidence["certificates"]) == 2


def test_plain_http_with_htpasswd(tmp_path):
    """Plain HTTP plus htpasswd: still the famous error first, then a note on credentials."""
    htpasswd = support.write_htpasswd(tmp_path / "htpasswd")
    registry = lab.RegistryProcess(htpasswd=htpasswd)
    registry.workdir = tmp_path
    registry.start()
    try:
        report = run_probe(registry.address)
        assert report.verdict == probe.PLAIN_HTTP_REGISTRY
        assert report.evidence["v2"]["status"] == 401
        assert report.evidence["auth"] == {
            "scheme": "basic",
            "params": {"realm": "lab-realm"},
        }
        assert_skopeo_parity(report, registry.address)
    finally:
        registry.stop()
    assert any("docker login" in f.text for f in report.findings)


def test_tls_with_htpasswd_untrusted(tmp_path, root_ca):
    """TLS plus htpasswd without the CA: the certificate error comes first."""
    htpasswd = support.write_htpasswd(tmp_path / "htpasswd")
    leaf = make_leaf(root_ca, ["127.0.0.1"])
    registry = tls_registry(tmp_path, [leaf.cert], leaf.key, htpasswd=htpasswd)
    try:
        report = run_probe(registry.address)
        assert report.verdict == probe.UNKNOWN_AUTHORITY
        assert report.evidence["v2"]["status"] == 401
        assert_skopeo_parity(report, registry.address)
    finally:
        registry.stop()
    docker = prediction(report, "docker")
    assert docker.ok
    assert "hides the missing login" in docker.rule


def test_http_server_not_a_registry(tmp_path):
    """`python -m http.server`: HTTP/0.9-style plaintext to a ClientHello, 404 on /v2/."""
    server = support.http_server(tmp_path)
    address = f"127.0.0.1:{server.port}"
    try:
        report = run_probe(address)
        assert report.verdict == probe.NOT_A_REGISTRY
        assert report.go_error == "tls: first record does not look like a TLS handshake"
        assert report.evidence["first_bytes"].startswith("<!DOCTYPE HTML>")
        assert report.evidence["v2"]["status"] == 404
        assert_skopeo_parity(report, address)
    finally:
        support.stop(server)
    assert "an HTML page" in report.summary
    # dockerd 20.10 treats 127.0.0.1 as insecure, falls back to plain HTTP and
    # quotes the whole 404 page; test_probe_dockerd checks this against a real dockerd.
    assert prediction(report, "docker").message == (
        "Error response from daemon: error parsing HTTP 404 response body: invalid "
        "character '<' looking for beginning of value: "
        '"<!DOCTYPE HTML>\\n<html lang=\\"en\\">\\n    <head>\\n        <meta '
        'charset=\\"utf-8\\">\\n        <title>Error response</title>\\n    </head>'
        "\\n    <body>\\n        <h1>Error response</h1>\\n        <p>Error code: "
        "404</p>\\n        <p>Message: File not found.</p>\\n        <p>Error code "
        "explanation: 404 - Nothing matches the given URI.</p>\\n    </body>\\n"
        '</html>\\n"'
    )
    assert prediction(report, "containerd").message.endswith(
        f"{address}/rig/test:v1: not found"
    )


def test_closed_port():
    """Nothing listens: Go's connection refused text, for every client."""
    address = f"127.0.0.1:{lab.free_port()}"
    report = run_probe(address)
    assert report.verdict == probe.REFUSED
    assert report.go_error == f"dial tcp {address}: connect: connection refused"
    assert prediction(report, "docker").url == f"http://{address}/v2/"
    assert_skopeo_parity(report, address)


def test_unresolvable_name():
    """A `.invalid` name never resolves: Go's lookup text naming the resolver."""
    report = run_probe("registry.invalid:5231")
    assert report.verdict == probe.UNRESOLVABLE
    assert report.go_error.startswith("dial tcp: lookup registry.invalid on ")
    assert report.go_error.endswith(": no such host")
    assert report.side == "client"
    assert_skopeo_parity(report, "registry.invalid:5231")


def bearer_registry(realm: str, service: str = "localhost:5000") -> web.Application:
    """A registry stand-in whose /v2/ asks for a Bearer token at `realm`."""

    async def v2(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "errors": [
                    {"code": "UNAUTHORIZED", "message": "authentication required"}
                ]
            },
            status=401,
            headers={
                "WWW-Authenticate": f'Bearer realm="{realm}",service="{service}"',
                "Docker-Distribution-Api-Version": "registry/2.0",
            },
        )

    app = web.Application()
    app.router.add_route("*", "/v2/{tail:.*}", v2)
    return app


def server_context(tmp_path, root_ca) -> ssl.SSLContext:
    leaf = make_leaf(root_ca, ["127.0.0.1", "localhost"])
    cert_path, key_path = support.write_pair(tmp_path / "server", [leaf.cert], leaf.key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


def test_realm_https_on_plain_port(tmp_path, root_ca, registry):
    """The registry's TLS is fine, but its https:// token realm speaks plain HTTP."""
    realm = f"https://{registry.address}/token"
    trust = support.write_trust(tmp_path / "trust", root_ca.cert)
    with support.ThreadedApp(
        bearer_registry(realm), server_context(tmp_path, root_ca)
    ) as server:
        address = f"127.0.0.1:{server.port}"
        report = run_probe(address, ca=[trust / "ca.crt"])
        assert report.verdict == probe.AUTH_REALM_PROBLEM
        assert report.evidence["auth"]["realm_transport"] == "http"
        assert_skopeo_parity(report, address, trust)
    texts = [f.text for f in report.findings]
    assert (
        any("service='localhost:5000' is an internal name" in t for t in texts) is False
    )
    assert any(
        f"does not cover the token realm at {registry.address}" in t for t in texts
    )


def test_realm_plain_http_url(tmp_path, root_ca, registry):
    """An http:// realm: a warning about clear-text passwords, and the token endpoint's 404."""
    realm = f"http://{registry.address}/token"
    trust = support.write_trust(tmp_path / "trust", root_ca.cert)
    with support.ThreadedApp(
        bearer_registry(realm, service="registry.example"),
        server_context(tmp_path, root_ca),
    ) as server:
        address = f"127.0.0.1:{server.port}"
        report = run_probe(address, ca=[trust / "ca.crt"])
        assert report.verdict == probe.AUTH_REALM_PROBLEM
        assert report.evidence["auth"]["realm_status"] == 404
        assert_skopeo_parity(report, address, trust)
    assert any(f.level == "Warning" and "plain HTTP" in f.text for f in report.findings)


@pytest.fixture
def gateway(gateway_process):
    yield gateway_process
    # lab.GatewayProcess keeps its log file object open for the whole session, which
    # pytest reports as an unclosed file; the child keeps its own descriptor.
    gateway_process._out.close()


def test_gateway_reports_tls_ok(gateway, local_ca):
    """The gateway with the generated CA: TLS registry OK, exit 0 for podman."""
    address = f"127.0.0.1:{gateway.port}"
    status, output, _ = support.cli(
        address,
        "--ca",
        str(local_ca / certs.CA_CERT),
        "--client",
        "podman",
        "--cert-dir",
        str(local_ca / "none"),
    )
    assert status == 0, output
    assert output.splitlines()[0] == f"{address}: TLS registry OK"
    assert "got 400 Bad Request from registry-gateway" in output


def test_gateway_json_object(gateway, local_ca):
    """`--json` prints the documented object with verdict, steps and clients."""
    address = f"localhost:{gateway.port}"
    status, output, errors = support.cli(
        address,
        "--ca",
        str(local_ca / certs.CA_CERT),
        "--json",
        "--cert-dir",
        str(local_ca / "none"),
    )
    assert errors == ""
    data = json.loads(output)
    assert data["verdict"] == probe.TLS_OK
    assert data["title"] == "TLS registry OK"
    assert [s["name"] for s in data["steps"]] == [
        "resolve",
        "connect",
        "tls",
        "plain-http",
        "v2",
    ]
    assert all(s["timeout_s"] == 5.0 for s in data["steps"])
    assert {c["client"] for c in data["clients"]} == {"docker", "containerd", "podman"}
    assert status == (0 if data["ok"] else 1)


def test_cli_exit_codes(registry):
    """Exit 1 when a client would fail, 2 for a usage error."""
    status, output, _ = support.cli(registry.address, "--client", "podman")
    assert status == 1
    assert "http: server gave HTTP response to HTTPS client" in output
    status, _, _ = support.cli(registry.address, "--client", "docker")
    assert status == 0, "docker pulls from 127.0.0.1 over plain HTTP"
    status, _, _ = support.cli(registry.address, "--client", "nerdctl")
    assert status == 2
    status, _, errors = support.cli("registry.local:http")
    assert status == 2
    assert "registry-gateway probe: error: Invalid port 'http'" in errors
    status, _, errors = support.cli(registry.address, "--ca", "/nonexistent/ca.crt")
    assert status == 1
    assert (
        errors
        == "Error: The CA file '/nonexistent/ca.crt' does not exist: pass the CA certificate the clients trust, e.g. certs/ca.crt.\n"
    )
    status, _, errors = support.cli()
    assert status == 2
    assert "give HOST[:PORT] to probe" in errors
    status, _, _ = support.cli(registry.address, "--timeout", "0")
    assert status == 2


EPHEMERAL = re.compile(r"read tcp 127\.0\.0\.1:\d+->")


def alert_context(tmp_path, root_ca) -> ssl.SSLContext:
    """A server context that answers every SNI name with an unrecognized_name alert."""
    context = server_context(tmp_path, root_ca)
    context.sni_callback = lambda *_: ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
    return context


@pytest.mark.parametrize(
    ("behaviour", "verdict", "go_error"),
    [
        ("close", probe.CLOSED, "EOF"),
        (
            "banner",
            probe.PLAINTEXT_NOT_HTTP,
            "tls: first record does not look like a TLS handshake",
        ),
        ("tls-alert", probe.TLS_ALERT, "remote error: tls: unrecognized name"),
        ("reset", probe.RESET, "read: connection reset by peer"),
    ],
)
def test_misbehaving_listener(tmp_path, root_ca, behaviour, verdict, go_error):
    """A listener that closes, resets, sends a banner or a TLS alert, by name."""
    with support.RawServer(behaviour, alert_context(tmp_path, root_ca)) as server:
        reference = f"localhost:{server.port}"
        report = run_probe(reference)
        assert report.verdict == verdict
        assert report.go_error.endswith(go_error)
        predicted = prediction(report, "podman").core
        real = skopeo_inspect(f"{reference}/{IMAGE}")
    # Go names the client's ephemeral port, which differs between the two runs.
    assert EPHEMERAL.sub("read tcp 127.0.0.1:<port>->", predicted) == EPHEMERAL.sub(
        "read tcp 127.0.0.1:<port>->", real
    )


@pytest.mark.slow
def test_silent_listener(root_ca):
    """A listener that accepts and never replies: Go's TLS handshake timeout (20 s in skopeo)."""
    with support.RawServer("silent") as server:
        reference = f"127.0.0.1:{server.port}"
        report = run_probe(reference)
        assert report.verdict == probe.SILENT
        assert report.steps[-1].duration_ms >= 2900
        assert_skopeo_parity(report, reference)


def test_ipv6_literal_reference(tmp_path):
    """skopeo cannot parse `[::1]:PORT/...`, so it fails before connecting; ctr can."""
    registry = lab.RegistryProcess(host="::1")
    registry.workdir = tmp_path
    registry.start()
    try:
        report = run_probe(registry.address)
        real = skopeo_inspect(f"{registry.address}/{IMAGE}")
    finally:
        registry.stop()
    assert report.verdict == probe.PLAIN_HTTP_REGISTRY
    assert report.target.authority == f"[::1]:{registry.port}"
    assert prediction(report, "podman").core == real == "invalid reference format"
    assert prediction(report, "containerd").ok


def test_gateway_loopback_ctr_fails(gateway_process, local_ca, capsys):
    """The gateway on 127.0.0.1: docker and podman pass, ctr fails, and its fix is shown."""
    from gateway.cli import main

    address = f"127.0.0.1:{gateway_process.port}"
    ca_file = local_ca / certs.CA_CERT
    status = main(["probe", address, "--ca", str(ca_file), "--no-system-trust"])
    out = capsys.readouterr().out
    headline = out.splitlines()[0]
    assert status == 1
    assert headline.startswith(
        f"{address}: TLS registry OK for docker and podman/skopeo; containerd/ctr would fail, because"
    )
    assert "\nFix, best first:\n" in out
    assert f'server = "https://{address}"' in out
    assert f"registry-gateway snippet containerd {address} --ca {ca_file}" in out


def test_gateway_loopback_podman_ok(gateway_process, local_ca, capsys):
    """With only podman selected nothing fails: exit 0, the plain title and no fixes."""
    from gateway.cli import main

    address = f"127.0.0.1:{gateway_process.port}"
    status = main(
        ["probe", address, "--ca", str(local_ca / certs.CA_CERT), "--client", "podman"]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert out.splitlines()[0] == f"{address}: TLS registry OK"
    assert "Fix, best first:" not in out


def test_probe_help_exit_status(capsys):
    """`probe --help` states the exit status for success, failure and usage errors."""
    from gateway.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["probe", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert exited.value.code == 0
    assert "Exit status: 0 when every selected client (--client) would succeed" in out
    assert "1 when any selected client would fail" in out
    assert "2 for a usage error" in out


def test_gateway_with_upstream_down(tmp_path, local_ca):
    """A gateway whose registry is down is reported as such, with the fix on the registry side."""
    from gateway.lab import GatewayProcess, free_port

    gateway = GatewayProcess(
        ["--listen", "127.0.0.1:0", "--upstream", f"http://127.0.0.1:{free_port()}", "--certs-dir", str(local_ca)]
    ).start()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "probe", f"127.0.0.1:{gateway.port}", "--ca", str(local_ca / "ca.crt"), "--json"],
            capture_output=True, text=True, timeout=60,
        )
    finally:
        gateway.stop()
    report = json.loads(result.stdout)
    assert result.returncode == 1
    assert report["verdict"] == "UPSTREAM_DOWN"
    assert "whose registry is not answering" in report["summary"]
    assert "nothing listens on" in report["summary"]
    assert report["fixes"][0]["side"] == "registry"
    assert "Start the registry behind" in report["fixes"][0]["text"]
