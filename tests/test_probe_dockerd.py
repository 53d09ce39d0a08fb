"""A real dockerd against the same servers: its last line equals the probe's prediction.

The registries listen on [::1] and are reached as registry.test, which only
dockerd's private /etc/hosts maps to ::1, so dockerd verifies them like remote
registries. The probe therefore runs inside dockerd's mount namespace too.
"""

from __future__ import annotations

import json
import ssl
import sys

import pytest

from gateway import certs, lab, probe
from tests import probe_support as support
from tests.dockerd import TEST_NAME, last_line

pytestmark = pytest.mark.dockerd

IMAGE = "rig/test:v1"


def probe_in_namespace(dockerd, reference: str) -> dict:
    """Run `registry-gateway probe --json` where dockerd resolves registry.test."""
    result = dockerd.run_in_namespace(
        sys.executable,
        "-m",
        "gateway",
        "probe",
        reference,
        "--json",
        "--client",
        "docker",
        "--image",
        IMAGE,
        "--cert-dir",
        str(dockerd.etc_docker / "certs.d"),
        "--timeout",
        "3",
    )
    assert result.stdout, result.stderr
    return json.loads(result.stdout)


def v6_registry(tmp_path, cert=None, key=None) -> lab.RegistryProcess:
    registry = lab.RegistryProcess(host="::1", tls_cert=cert, tls_key=key)
    registry.workdir = tmp_path / "registry"
    registry.workdir.mkdir()
    return registry.start()


def docker_pull_error(dockerd, reference: str) -> str:
    pull = dockerd.docker("pull", f"{reference}/{IMAGE}", timeout=60)
    assert pull.returncode == 1, pull.stdout
    return last_line(pull)


@pytest.fixture(scope="module")
def image_layout(tmp_path_factory):
    folder = tmp_path_factory.mktemp("probe-dockerd-image")
    lab.build_oci_layout(folder, layer_sizes=(1000,), seed=43)
    return folder


def test_dockerd_push_line(dockerd, tmp_path, image_layout):
    """docker push prints the predicted push line, without the daemon prefix."""
    registry = v6_registry(tmp_path)
    reference = f"{TEST_NAME}:{registry.port}"
    try:
        report = probe_in_namespace(dockerd, reference)
        dockerd.load_image(image_layout, f"{reference}/{IMAGE}")
        push = dockerd.docker("push", f"{reference}/{IMAGE}", timeout=60)
    finally:
        registry.stop()
    assert push.returncode == 1
    assert report["clients"][0]["push_message"] == last_line(push)
    assert f"The push refers to repository [{reference}/rig/test]" in push.stdout


def test_dockerd_plain_http_registry(dockerd, tmp_path):
    """A plain-HTTP registry by name: docker prints exactly the predicted line."""
    registry = v6_registry(tmp_path)
    reference = f"{TEST_NAME}:{registry.port}"
    try:
        report = probe_in_namespace(dockerd, reference)
        real = docker_pull_error(dockerd, reference)
    finally:
        registry.stop()
    assert report["verdict"] == probe.PLAIN_HTTP_REGISTRY
    assert report["evidence"]["addresses"] == ["::1"]
    assert report["evidence"]["resolved_from"] == "hosts file"
    assert report["clients"][0]["message"] == real
    assert real.endswith("http: server gave HTTP response to HTTPS client")


@pytest.mark.parametrize(
    ("case", "verdict"),
    [
        ("unknown-ca", probe.UNKNOWN_AUTHORITY),
        ("wrong-san", probe.NAME_MISMATCH),
        ("cn-only", probe.CN_ONLY),
        ("expired", probe.EXPIRED),
    ],
)
def test_dockerd_tls_failures(dockerd, tmp_path, case, verdict):
    """A TLS registry by name whose certificate dockerd rejects, four ways."""
    root = support.make_ca(f"Probe dockerd Root {case}")
    names = {"wrong-san": ["wrong-name.invalid"], "cn-only": []}.get(case, [TEST_NAME])
    not_after = certs.now() - support.DAY if case == "expired" else None
    leaf = support.make_leaf(
        root,
        names,
        common_name=TEST_NAME if case == "cn-only" else "probe-test",
        not_after=not_after,
    )
    cert_path, key_path = support.write_pair(tmp_path / "server", [leaf.cert], leaf.key)
    registry = v6_registry(tmp_path, cert_path, key_path)
    reference = f"{TEST_NAME}:{registry.port}"
    if case != "unknown-ca":
        support.write_trust(dockerd.etc_docker / "certs.d" / reference, root.cert)
    try:
        report = probe_in_namespace(dockerd, reference)
        real = docker_pull_error(dockerd, reference)
    finally:
        registry.stop()
    assert report["verdict"] == verdict
    assert support.without_clock(
        report["clients"][0]["message"]
    ) == support.without_clock(real)
    assert real.startswith(
        f'Error response from daemon: Get "https://{reference}/v2/": x509: '
    )


def test_dockerd_local_audit_needs_reload(dockerd, monkeypatch, tmp_path):
    """--local compares daemon.json with `docker info`: an entry not yet loaded is flagged."""
    from gateway import probe_local

    reference = f"{TEST_NAME}:5299"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{dockerd.socket}")
    monkeypatch.setenv("DOCKER_CONFIG", str(dockerd.cli_config))
    paths = probe_local.AuditPaths(
        daemon_json=dockerd.daemon_json,
        certs_dir=dockerd.etc_docker / "certs.d",
        hosts_file=dockerd.hosts,
        docker_env_file=tmp_path / "default-docker",
        containerd_config=tmp_path / "containerd.toml",
        registries_conf=tmp_path / "registries.conf",
        docker_bin="/usr/bin/docker",
    )
    saved = dockerd.daemon_json.read_text()
    dockerd.write_daemon_json({"insecure-registries": [reference]})
    try:
        before = probe_local.audit(probe.parse_target(reference), paths)
        dockerd.reload()
        after = probe_local.audit(probe.parse_target(reference), paths)
    finally:
        dockerd.daemon_json.write_text(saved)
        dockerd.reload()
    assert before.insecure
    assert before.effective_insecure is False
    assert any("send it SIGHUP" in f.text for f in before.findings)
    assert after.effective_insecure is True
    assert not any("send it SIGHUP" in f.text for f in after.findings)


def test_dockerd_http_server_by_name(dockerd, tmp_path):
    """A web server that is not a registry, by name: Go's first-record error."""
    server = support.http_server(tmp_path, host="::1")
    reference = f"{TEST_NAME}:{server.port}"
    try:
        report = probe_in_namespace(dockerd, reference)
        real = docker_pull_error(dockerd, reference)
    finally:
        support.stop(server)
    assert report["verdict"] == probe.NOT_A_REGISTRY
    assert report["clients"][0]["message"] == real
    assert real.endswith("tls: first record does not look like a TLS handshake")


def test_dockerd_http_server_by_ip(dockerd, tmp_path):
    """On 127.0.0.1 dockerd falls back to plain HTTP and quotes the 404 page."""
    server = support.http_server(tmp_path)
    reference = f"127.0.0.1:{server.port}"
    try:
        report = probe_in_namespace(dockerd, reference)
        real = docker_pull_error(dockerd, reference)
    finally:
        support.stop(server)
    assert report["clients"][0]["message"] == real
    assert real.startswith(
        "Error response from daemon: error parsing HTTP 404 response body"
    )


@pytest.mark.parametrize("case", ["refused-ip", "refused-name", "unresolvable"])
def test_dockerd_connect_failures(dockerd, case):
    """Nothing listening (by IP and by name) and an unresolvable name."""
    port = lab.free_port("::1") if case == "refused-name" else lab.free_port()
    reference = {
        "refused-ip": f"127.0.0.1:{port}",
        "refused-name": f"{TEST_NAME}:{port}",
        "unresolvable": "registry.invalid:5231",
    }[case]
    report = probe_in_namespace(dockerd, reference)
    real = docker_pull_error(dockerd, reference)
    assert report["clients"][0]["message"] == real


def test_dockerd_realm_on_plain_port(dockerd, tmp_path):
    """TLS registry by name whose https:// token realm speaks plain HTTP."""
    from tests.test_probe_servers import bearer_registry

    root = support.make_ca("Probe dockerd Root realm")
    leaf = support.make_leaf(root, [TEST_NAME])
    cert_path, key_path = support.write_pair(tmp_path / "server", [leaf.cert], leaf.key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    realm_server = v6_registry(tmp_path)
    realm = f"https://{TEST_NAME}:{realm_server.port}/token"
    try:
        with support.ThreadedApp(bearer_registry(realm), context, host="::1") as server:
            reference = f"{TEST_NAME}:{server.port}"
            support.write_trust(dockerd.etc_docker / "certs.d" / reference, root.cert)
            report = probe_in_namespace(dockerd, reference)
            real = docker_pull_error(dockerd, reference)
    finally:
        realm_server.stop()
    assert report["verdict"] == probe.AUTH_REALM_PROBLEM
    assert report["clients"][0]["message"] == real
