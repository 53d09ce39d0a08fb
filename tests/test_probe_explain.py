"""`probe --explain`: pasted client errors, recognised and explained, then probed."""

from __future__ import annotations

import json

import pytest

from gateway import probe, probe_explain
from tests import probe_support as support

# Verbatim client lines as docker 20.10, ctr 1.6, podman 4.3, skopeo 1.9 print them.
DOCKER_PLAIN = 'Error response from daemon: Get "https://registry.test:5220/v2/": http: server gave HTTP response to HTTPS client'
CTR_UNKNOWN_CA = (
    'ctr: failed to resolve reference "registry.test:5221/rig/test:v1": failed to do request: '
    'Head "https://registry.test:5221/v2/rig/test/manifests/v1": x509: certificate signed by unknown authority'
)
PODMAN_IP_SAN = (
    "Error: initializing source docker://127.0.0.1:5222/rig/test:v1: pinging container registry 127.0.0.1:5222: "
    'Get "https://127.0.0.1:5222/v2/": x509: cannot validate certificate for 127.0.0.1 because it doesn\'t contain any IP SANs'
)
K3S_CN_ONLY = (
    'Failed to pull image "registry.example:5000/app:1": rpc error: code = Unknown desc = failed to pull and unpack image '
    '"registry.example:5000/app:1": failed to resolve reference "registry.example:5000/app:1": failed to do request: '
    'Head "https://registry.example:5000/v2/app/manifests/1": x509: certificate relies on legacy Common Name field, '
    "use SANs or temporarily enable Common Name matching with GODEBUG=x509ignoreCN=0"
)
REALM_PLAIN = (
    'Error response from daemon: Get "https://registry.example:5001/api/auth?account=u&scope=&service=localhost%3A5000": '
    "http: server gave HTTP response to HTTPS client"
)
NGINX_413 = "unknown: <html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx/1.22.1</center>"
SKOPEO_NO_HOST = (
    'time="2026-12-03T21:49:19Z" level=fatal msg="Error parsing image name \\"docker://registry.invalid:5231/rig/test:v1\\": '
    'pinging container registry registry.invalid:5231: Get \\"https://registry.invalid:5231/v2/\\": dial tcp: lookup '
    'registry.invalid on 10.255.255.53:53: no such host"'
)
GO120_UNKNOWN = 'Get "https://registry.example:5000/v2/": tls: failed to verify certificate: x509: certificate signed by unknown authority'
BUILDKIT_PLAIN = (
    "ERROR: failed to solve: failed to push registry.example:5000/app:1: failed to do request: "
    'Head "https://registry.example:5000/v2/app/blobs/sha256:0123": http: server gave HTTP response to HTTPS client'
)
OLD_DOCKER_PLAIN = (
    "Get https://192.0.2.10:5000/v2/: http: server gave HTTP response to HTTPS client"
)


@pytest.mark.parametrize(
    ("text", "verdict", "client", "host", "port"),
    [
        (DOCKER_PLAIN, probe.PLAIN_HTTP_REGISTRY, "docker", "registry.test", 5220),
        (CTR_UNKNOWN_CA, probe.UNKNOWN_AUTHORITY, "containerd", "registry.test", 5221),
        (PODMAN_IP_SAN, probe.IP_SAN_MISSING, "podman/skopeo", "127.0.0.1", 5222),
        (
            K3S_CN_ONLY,
            probe.CN_ONLY,
            "k3s/kubelet (containerd CRI)",
            "registry.example",
            5000,
        ),
        (SKOPEO_NO_HOST, probe.UNRESOLVABLE, "podman/skopeo", "registry.invalid", 5231),
        (GO120_UNKNOWN, probe.UNKNOWN_AUTHORITY, "unknown", "registry.example", 5000),
        (
            BUILDKIT_PLAIN,
            probe.PLAIN_HTTP_REGISTRY,
            "buildkit",
            "registry.example",
            5000,
        ),
        (OLD_DOCKER_PLAIN, probe.PLAIN_HTTP_REGISTRY, "unknown", "192.0.2.10", 5000),
    ],
)
def test_explain_recognises_client_lines(text, verdict, client, host, port):
    explanation = probe_explain.explain(text)
    assert explanation.recognised
    assert explanation.verdict == verdict
    assert explanation.client == client
    assert (explanation.host, explanation.port) == (host, port)


def test_explain_plain_http_names_gateway_fix():
    explanation = probe_explain.explain(DOCKER_PLAIN)
    assert (
        explanation.fix
        == "Put the gateway in front: registry-gateway serve --upstream http://registry.test:5220 --name registry.test --listen 0.0.0.0:5443"
    )
    assert explanation.url == "https://registry.test:5220/v2/"
    assert explanation.side == "gateway"


def test_explain_realm_url_is_not_the_registry():
    """A token realm URL in the error: the auth service is at fault, not /v2/."""
    explanation = probe_explain.explain(REALM_PLAIN)
    assert explanation.realm
    assert explanation.port == 5001
    assert any("token realm" in note for note in explanation.notes)


def test_explain_nginx_413():
    explanation = probe_explain.explain(NGINX_413)
    assert "caps request bodies" in explanation.meaning
    assert "client_max_body_size 0;" in explanation.fix


DOCKER_CLIENT_TIMEOUT = (
    'Error response from daemon: Get "https://registry.test:5000/v2/": net/http: request canceled '
    "while waiting for connection (Client.Timeout exceeded while awaiting headers)"
)
PUSH_TLS_TIMEOUT = 'Get "https://registry.test:5000/v2/": net/http: TLS handshake timeout'


@pytest.mark.parametrize(
    ("text", "client"),
    [(DOCKER_CLIENT_TIMEOUT, "docker"), (PUSH_TLS_TIMEOUT, "unknown")],
)
def test_explain_go_timeouts(text, client):
    explanation = probe_explain.explain(text)
    assert explanation.recognised
    assert explanation.verdict == probe.TIMEOUT
    assert explanation.client == client
    assert (explanation.host, explanation.port) == ("registry.test", 5000)


def test_explain_client_timeout_meaning():
    explanation = probe_explain.explain(DOCKER_CLIENT_TIMEOUT)
    assert explanation.matched == "Client.Timeout exceeded while awaiting headers"
    assert "no response headers" in explanation.meaning


def test_explain_unknown_client_wording():
    rendered = probe_explain.render(probe_explain.explain(PUSH_TLS_TIMEOUT), False)
    assert "from an unknown client, for registry.test:5000." in rendered
    assert "from unknown" not in rendered


def test_explain_go120_wrapper_note():
    explanation = probe_explain.explain(GO120_UNKNOWN)
    assert any("Go 1.20" in note for note in explanation.notes)


def test_explain_unrecognised_text():
    explanation = probe_explain.explain("something else went wrong")
    assert not explanation.recognised
    assert probe_explain.render(explanation, False).startswith(
        "Note: The pasted text matches no known"
    )


def test_explain_stdin_then_probes_reachable_host(registry):
    """`--explain -` reads standard input and probes the named host when it is reachable."""
    pasted = DOCKER_PLAIN.replace("registry.test:5220", registry.address)
    status, output, _ = support.cli("--explain", "-", "--json", stdin=pasted)
    data = json.loads(output)
    assert data["explain"]["verdict"] == probe.PLAIN_HTTP_REGISTRY
    assert data["probe"]["verdict"] == probe.PLAIN_HTTP_REGISTRY
    assert status == 1


def test_explain_unreachable_host_skips_probe():
    status, output, _ = support.cli("--explain", SKOPEO_NO_HOST)
    assert status == 1
    assert "is not reachable from here, so no probe ran" in output


PODMAN_IP_MISMATCH = (
    "Error: initializing source docker://127.0.0.1:5223/rig/test:v1: pinging container registry 127.0.0.1:5223: "
    'Get "https://127.0.0.1:5223/v2/": x509: certificate is valid for localhost, not 127.0.0.1'
)


@pytest.mark.parametrize(
    ("text", "san"),
    [
        (PODMAN_IP_MISMATCH, "IP:127.0.0.1"),
        (PODMAN_IP_MISMATCH.replace("127.0.0.1", "registry.test"), "DNS:registry.test"),
    ],
)
def test_explain_name_mismatch_san_kind(text, san):
    """The SAN to add is IP: for an address and DNS: for a name."""
    explanation = probe_explain.explain(text)
    assert explanation.verdict == probe.NAME_MISMATCH
    assert explanation.fix.startswith(f"Reissue the certificate with the SAN {san},")


def test_explain_cn_only_issues_certificate():
    """The legacy Common Name fix issues a certificate, never a gateway to the TLS port."""
    explanation = probe_explain.explain(K3S_CN_ONLY)
    assert explanation.fix.endswith("registry-gateway certs issue registry.example")
    assert "--upstream" not in explanation.fix
