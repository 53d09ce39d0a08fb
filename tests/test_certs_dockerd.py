"""A real dockerd trusts the generated chain from the certs.d folder `certs export` wrote.

dockerd verifies TLS only for registries it does not treat as insecure, so the
gateway listens on [::1] and dockerd reaches it as `registry.test` (mapped to
::1 in dockerd's private /etc/hosts). For 127.0.0.1, dockerd skips certs.d.
"""

from __future__ import annotations

import shutil

import pytest

from gateway import lab
from tests.certs_support import run_cli
from tests.dockerd import TEST_NAME, last_line

pytestmark = pytest.mark.dockerd

# The gateway's 401 for a request without a client certificate, as docker prints it.
NO_CLIENT_CERT = "unauthorized: this registry requires a TLS client certificate"


@pytest.fixture(scope="module")
def v6_registry(tmp_path_factory):
    """A plain-HTTP registry on [::1] behind the gateways of this module."""
    process = lab.RegistryProcess(host="::1")
    process.workdir = tmp_path_factory.mktemp("certs-registry-v6")
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs-dockerd-image")
    lab.build_oci_layout(folder, layer_sizes=(1000, 200_000), seed=53)
    return folder


def make_certs(capsys, folder, *names: str) -> None:
    run_cli(capsys, "certs", "init", "--dir", str(folder))
    run_cli(capsys, "certs", "issue", "--dir", str(folder), *names)


def start_gateway(registry, folder, *extra: str) -> lab.GatewayProcess:
    return lab.GatewayProcess(
        ["--listen", "[::1]:0", "--upstream", registry.url, "--name", TEST_NAME,
         "--cert", str(folder / "gateway.crt"), "--key", str(folder / "gateway.key"), *extra]
    ).start()


def install_export(capsys, dockerd, folder, authority: str, tmp_path) -> None:
    """Run `certs export --for docker --out` and copy its certs.d folder into dockerd's /etc/docker."""
    out = tmp_path / "export"
    status, _, err = run_cli(
        capsys, "certs", "export", "--dir", str(folder), "--host", authority, "--for", "docker",
        "--out", str(out),
    )
    assert status == 0, err
    target = dockerd.etc_docker / "certs.d" / authority
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(out / "etc" / "docker" / "certs.d" / authority, target)


def push(dockerd, layout, reference: str):
    dockerd.load_image(layout, reference)
    return dockerd.docker("push", reference)


def test_dockerd_accepts_exported_ca(dockerd, v6_registry, layout, tmp_path, capsys):
    """docker push and pull succeed with only the exported ca.crt trusted."""
    folder = tmp_path / "certs"
    make_certs(capsys, folder, TEST_NAME, "::1")
    gateway = start_gateway(v6_registry, folder)
    authority = f"{TEST_NAME}:{gateway.port}"
    reference = f"{authority}/certs/dockerd:v1"
    try:
        install_export(capsys, dockerd, folder, authority, tmp_path)
        pushed = push(dockerd, layout, reference)
        dockerd.docker("rmi", reference)
        pulled = dockerd.docker("pull", reference)
    finally:
        gateway.stop()
    assert pushed.returncode == 0, pushed.stderr
    assert pulled.returncode == 0, pulled.stderr
    assert sorted(p.name for p in (dockerd.etc_docker / "certs.d" / authority).iterdir()) == ["ca.crt"]


def test_dockerd_rejects_wrong_san(dockerd, v6_registry, layout, tmp_path, capsys):
    """Paired failure: the same CA but a leaf for another name gives Go's name mismatch error."""
    folder = tmp_path / "certs"
    make_certs(capsys, folder, "other.test", "::1")
    gateway = start_gateway(v6_registry, folder)
    authority = f"{TEST_NAME}:{gateway.port}"
    try:
        install_export(capsys, dockerd, folder, authority, tmp_path)
        pushed = push(dockerd, layout, f"{authority}/certs/dockerd:v1")
    finally:
        gateway.stop()
    status, out, _ = run_cli(capsys, "certs", "check", "--dir", str(folder), "--name", authority)
    expected = "x509: certificate is valid for other.test, not registry.test"
    assert pushed.returncode == 1
    assert last_line(pushed) == f'Get "https://{authority}/v2/": {expected}'
    assert status == 1
    assert f'"{expected}"' in out


def test_dockerd_client_certificate(dockerd, v6_registry, layout, tmp_path, capsys):
    """With tls.client_ca, dockerd sends client.cert/client.key from certs.d for registry.test."""
    folder = tmp_path / "certs"
    make_certs(capsys, folder, TEST_NAME, "::1")
    config = tmp_path / "gateway.toml"
    config.write_text(f'[tls]\nclient_ca = "{folder / "ca.crt"}"\n')
    gateway = start_gateway(v6_registry, folder, "--config", str(config))
    authority = f"{TEST_NAME}:{gateway.port}"
    try:
        install_export(capsys, dockerd, folder, authority, tmp_path)
        without_pair = push(dockerd, layout, f"{authority}/certs/mtls:v1")
        run_cli(
            capsys, "certs", "issue-client", "--dir", str(folder),
            "--out", str(dockerd.etc_docker / "certs.d" / authority), "builder.test",
        )
        with_pair = push(dockerd, layout, f"{authority}/certs/mtls:v2")
    finally:
        gateway.stop()
    assert "Docker sends no client certificate to a registry it treats as insecure" in gateway.output
    assert without_pair.returncode == 1
    assert last_line(without_pair).startswith(NO_CLIENT_CERT)
    assert with_pair.returncode == 0, with_pair.stderr


def test_dockerd_loopback_sends_no_client_cert(dockerd, v6_registry, layout, tmp_path, capsys):
    """For 127.0.0.1, which dockerd treats as insecure, it skips certs.d and sends no client pair."""
    folder = tmp_path / "certs"
    make_certs(capsys, folder, "127.0.0.1")
    config = tmp_path / "gateway.toml"
    config.write_text(f'[tls]\nclient_ca = "{folder / "ca.crt"}"\n')
    gateway = lab.GatewayProcess(
        ["--listen", "127.0.0.1:0", "--upstream", v6_registry.url, "--name", "127.0.0.1",
         "--cert", str(folder / "gateway.crt"), "--key", str(folder / "gateway.key"),
         "--config", str(config)]
    ).start()
    authority = f"127.0.0.1:{gateway.port}"
    try:
        install_export(capsys, dockerd, folder, authority, tmp_path)
        run_cli(
            capsys, "certs", "issue-client", "--dir", str(folder),
            "--out", str(dockerd.etc_docker / "certs.d" / authority), "builder.test",
        )
        pushed = push(dockerd, layout, f"{authority}/certs/loopback:v1")
    finally:
        gateway.stop()
    folder = dockerd.etc_docker / "certs.d" / authority
    assert sorted(p.name for p in folder.iterdir()) == ["ca.crt", "client.cert", "client.key"]
    assert pushed.returncode == 1
    assert last_line(pushed).startswith(NO_CLIENT_CERT)
