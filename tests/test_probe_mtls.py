"""The probe against servers that require a TLS client certificate (mTLS)."""

from __future__ import annotations

import json
import shutil
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import certs, lab, probe, trust
from tests import probe_support as support
from tests.certs_support import run_cli
from tests.probe_support import make_ca, make_leaf, prediction, run_probe

IMAGE = "rig/test:v1"
# Go's net/http prefixes this when the alert arrives before the request is
# written, which depends on timing, so the comparison leaves it out.
PEEK_FAIL = "readLoopPeekFailLocked: "


def without_peek_fail(text: str) -> str:
    return text.replace(PEEK_FAIL, "")


@pytest.fixture(scope="module")
def mtls_gateway(registry, local_ca, tmp_path_factory):
    """`registry-gateway serve` with tls.client_ca set to the local CA."""
    config = tmp_path_factory.mktemp("mtls") / "gateway.toml"
    config.write_text(f'[tls]\nclient_ca = "{local_ca / certs.CA_CERT}"\n')
    process = lab.GatewayProcess(
        [
            "--config", str(config),
            "--listen", "127.0.0.1:0",
            "--upstream", registry.url,
            "--certs-dir", str(local_ca),
        ]
    ).start()
    yield process
    process.stop()


def test_gateway_mtls_verdict(mtls_gateway, local_ca):
    report = run_probe(mtls_gateway.addresses[0], ca=[local_ca / certs.CA_CERT])
    assert report.verdict == probe.CLIENT_CERT_REQUIRED
    assert report.side == "client"
    assert not report.ok
    assert all(not c.ok for c in report.clients)
    assert "requires a TLS client certificate" in report.summary


def test_gateway_mtls_no_login_note(mtls_gateway, local_ca):
    report = run_probe(mtls_gateway.addresses[0], ca=[local_ca / certs.CA_CERT])
    texts = [f.text for f in report.findings]
    assert not any("docker login" in text for text in texts), texts


def test_gateway_mtls_fixes(mtls_gateway, local_ca):
    address = mtls_gateway.addresses[0]
    report = run_probe(address, ca=[local_ca / certs.CA_CERT])
    commands = [fix.command for fix in report.fixes]
    texts = " ".join(fix.text for fix in report.fixes)
    assert "registry-gateway certs issue-client NAME" in commands
    assert f"/etc/docker/certs.d/{address}/" in texts
    assert f"/etc/containers/certs.d/{address}/" in texts
    assert "client.cert" in texts
    assert "client.key" in texts


@pytest.mark.skipif(not support.have_skopeo(), reason="skopeo is not installed")
def test_gateway_mtls_skopeo_parity(mtls_gateway, local_ca, tmp_path):
    address = mtls_gateway.addresses[0]
    report = run_probe(address, ca=[local_ca / certs.CA_CERT])
    trust_dir = tmp_path / "trust"
    trust_dir.mkdir()
    shutil.copy(local_ca / certs.CA_CERT, trust_dir / "ca.crt")
    real = support.skopeo_inspect(f"{address}/{IMAGE}", trust_dir)
    assert prediction(report, "podman").core == real


def test_trust_verify_mtls_fails(mtls_gateway, local_ca):
    """`trust` reuses the probe: without a client certificate no client succeeds."""
    target = probe.parse_target(mtls_gateway.addresses[0])
    for client in ("docker", "containerd", "podman"):
        outcome = trust.verify(target, client, local_ca / certs.CA_CERT, 3.0)
        assert not outcome.ok, client
    podman = trust.verify(target, "podman", local_ca / certs.CA_CERT, 3.0)
    assert "requires a TLS client certificate" in podman.message


def test_cli_json_mtls(mtls_gateway, local_ca):
    status, out, _ = support.cli(
        mtls_gateway.addresses[0], "--ca", str(local_ca / certs.CA_CERT), "--json"
    )
    data = json.loads(out)
    assert status == 1
    assert data["verdict"] == "CLIENT_CERTIFICATE_REQUIRED"
    assert data["side"] == "client"
    assert data["ok"] is False


def test_tls13_certificate_required_alert(tmp_path):
    """OpenSSL's TLS 1.3 server sends certificate_required after the handshake."""
    root = make_ca("mTLS test root")
    leaf = make_leaf(root, ["127.0.0.1", "localhost"])
    cert_path, key_path = support.write_pair(tmp_path / "server", [leaf.cert], leaf.key)
    ca_path = support.write_trust(tmp_path / "trust", root.cert) / "ca.crt"
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    context.load_verify_locations(ca_path)
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    with support.RawServer("tls-alert", context) as server:
        reference = f"localhost:{server.port}"
        report = run_probe(reference, ca=[ca_path])
        real = ""
        if support.have_skopeo():
            real = support.skopeo_inspect(f"{reference}/{IMAGE}", ca_path.parent)
    assert report.verdict == probe.CLIENT_CERT_REQUIRED
    assert report.go_error == "remote error: tls: certificate required"
    assert not report.ok
    assert "TLS alert 'remote error: tls: certificate required'" in report.summary
    podman = prediction(report, "podman")
    assert podman.core.endswith(": remote error: tls: certificate required")
    if real:
        assert podman.core == without_peek_fail(real)
    for step in report.steps:
        assert "_ssl.c" not in step.detail, step
        assert "[Errno" not in step.detail, step


def test_bad_certificate_alert_first():
    """A bad_certificate alert as the first reply to the ClientHello."""
    with support.RawServer("bad-certificate-alert") as server:
        reference = f"localhost:{server.port}"
        report = run_probe(reference)
        real = support.skopeo_inspect(f"{reference}/{IMAGE}") if support.have_skopeo() else ""
    assert report.verdict == probe.CLIENT_CERT_REQUIRED
    assert report.go_error == "remote error: tls: bad certificate"
    assert report.side == "client"
    assert not report.ok
    podman = prediction(report, "podman")
    assert podman.core.endswith(": remote error: tls: bad certificate")
    if real:
        assert podman.core == real


@dataclass
class ClientCARegistry(lab.RegistryProcess):
    """The distribution registry with `http.tls.clientcas`: it requires a client certificate."""

    client_ca: Path | None = None

    def config_text(self) -> str:
        text = super().config_text()
        key_line = f"    key: {json.dumps(str(self.tls_key))}\n"
        clientcas = f"    clientcas:\n      - {json.dumps(str(self.client_ca))}\n"
        return text.replace(key_line, key_line + clientcas)


def test_go_registry_clientcas(tmp_path):
    """The Go registry (TLS 1.3) sends bad_certificate after the handshake; skopeo agrees."""
    root = make_ca("clientcas test root")
    leaf = make_leaf(root, ["127.0.0.1", "localhost"])
    cert_path, key_path = support.write_pair(tmp_path / "server", [leaf.cert], leaf.key)
    trust_dir = support.write_trust(tmp_path / "trust", root.cert)
    registry = ClientCARegistry(
        tls_cert=cert_path, tls_key=key_path, client_ca=trust_dir / "ca.crt"
    )
    registry.workdir = tmp_path / "registry"
    registry.workdir.mkdir()
    registry.start()
    try:
        report = run_probe(registry.address, ca=[trust_dir / "ca.crt"])
        real = ""
        if support.have_skopeo():
            real = support.skopeo_inspect(f"{registry.address}/{IMAGE}", trust_dir)
    finally:
        registry.stop()
    assert report.verdict == probe.CLIENT_CERT_REQUIRED
    assert report.go_error == "remote error: tls: bad certificate"
    assert not report.ok
    if real:
        assert prediction(report, "podman").core == without_peek_fail(real)


def test_tls12_handshake_failure_alert(tmp_path):
    """OpenSSL's TLS 1.2 server rejects a missing client certificate mid-handshake."""
    root = make_ca("TLS 1.2 test root")
    leaf = make_leaf(root, ["127.0.0.1", "localhost"])
    cert_path, key_path = support.write_pair(tmp_path / "server", [leaf.cert], leaf.key)
    trust_dir = support.write_trust(tmp_path / "trust", root.cert)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    context.load_verify_locations(trust_dir / "ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with support.RawServer("tls-alert", context) as server:
        reference = f"localhost:{server.port}"
        report = run_probe(reference, ca=[trust_dir / "ca.crt"])
        real = ""
        if support.have_skopeo():
            real = support.skopeo_inspect(f"{reference}/{IMAGE}", trust_dir)
    assert report.evidence["first_bytes_kind"] == "tls-handshake"
    assert report.verdict == probe.TLS_ALERT
    assert report.go_error == "remote error: tls: handshake failure"
    assert not report.ok
    if real:
        assert prediction(report, "podman").core == real


def test_trust_cli_mtls_would_fail(mtls_gateway, local_ca, tmp_path, capsys):
    """`trust` writes the CA, then reports that podman still fails without a client pair."""
    ca = certs.load_certs(local_ca / certs.CA_CERT)[0]
    fingerprint = certs.fingerprint(ca).replace(":", "").lower()
    authority = f"localhost:{mtls_gateway.port}"
    status, out, err = run_cli(
        capsys, "trust", authority, "--fingerprint", fingerprint,
        "--for", "podman", "--out", str(tmp_path),
    )
    assert status == 1
    assert "would succeed" not in out
    assert "podman/skopeo: would still fail" in out
    assert "requires a TLS client certificate" in out
