"""docker push and pull through the gateway with a real dockerd, verified TLS."""

from __future__ import annotations

import pytest

from gateway import lab
from tests.dockerd import TEST_NAME, last_line
from tests.test_certs_check_openssl import ed25519_root_and_leaf

pytestmark = pytest.mark.dockerd


@pytest.fixture(scope="module")
def v6_registry(tmp_path_factory):
    """A plain-HTTP registry on [::1], reached by dockerd as registry.test."""
    process = lab.RegistryProcess(host="::1")
    process.workdir = tmp_path_factory.mktemp("registry-v6")
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def v6_gateway(v6_registry, tmp_path_factory):
    certs_dir = tmp_path_factory.mktemp("gateway-v6-certs")
    process = lab.GatewayProcess(
        [
            "--listen", "[::1]:0",
            "--upstream", v6_registry.url,
            "--name", TEST_NAME,
            "--certs-dir", str(certs_dir),
        ]
    ).start()
    process.certs_dir = certs_dir
    yield process
    process.stop()


@pytest.fixture(scope="module")
def image_layout(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dockerd-image")
    lab.build_oci_layout(folder, layer_sizes=(1000, 300_000, 2_000_000), seed=41)
    return folder


def test_docker_push_pull_through_gateway(dockerd, v6_gateway, image_layout):
    """docker push and pull by name succeed with only certs.d/<host:port>/ca.crt."""
    reference = f"{TEST_NAME}:{v6_gateway.port}/dockerd/app:v1"
    dockerd.trust(f"{TEST_NAME}:{v6_gateway.port}", v6_gateway.certs_dir / "ca.crt")
    dockerd.load_image(image_layout, reference)

    push = dockerd.docker("push", reference)
    assert push.returncode == 0, push.stderr + push.stdout
    assert "digest: sha256:" in push.stdout

    removed = dockerd.docker("rmi", reference)
    assert removed.returncode == 0, removed.stderr
    pull = dockerd.docker("pull", reference)
    assert pull.returncode == 0, pull.stderr + pull.stdout
    assert f"Downloaded newer image for {reference}" in pull.stdout


def test_docker_push_without_ca_is_rejected(dockerd, v6_gateway, image_layout, tmp_path):
    """Without the CA in certs.d, dockerd refuses the gateway's certificate."""
    # Another name for the same gateway, with no certs.d folder, keeps the test independent.
    reference = f"{TEST_NAME}:{v6_gateway.port}/dockerd/untrusted:v1"
    folder = dockerd.etc_docker / "certs.d" / f"{TEST_NAME}:{v6_gateway.port}"
    saved = (folder / "ca.crt").read_bytes() if (folder / "ca.crt").exists() else None
    if saved is not None:
        (folder / "ca.crt").unlink()
    try:
        dockerd.load_image(image_layout, reference)
        push = dockerd.docker("push", reference)
    finally:
        if saved is not None:
            (folder / "ca.crt").write_bytes(saved)
    assert push.returncode == 1
    assert last_line(push) == (
        f'Get "https://{TEST_NAME}:{v6_gateway.port}/v2/": x509: certificate signed by unknown authority'
    )


def test_docker_push_to_plain_registry_fails(dockerd, v6_registry, image_layout):
    """The same push to the plain-HTTP registry by name fails with the famous error."""
    reference = f"{TEST_NAME}:{v6_registry.port}/dockerd/app:v1"
    dockerd.load_image(image_layout, reference)
    push = dockerd.docker("push", reference)
    assert push.returncode == 1
    assert last_line(push) == (
        f'Get "https://{TEST_NAME}:{v6_registry.port}/v2/": '
        "http: server gave HTTP response to HTTPS client"
    )


def test_docker_push_pull_ed25519(dockerd, v6_registry, image_layout, tmp_path):
    """dockerd pushes and pulls through a gateway serving an Ed25519 leaf from an Ed25519 CA."""
    root, leaf, key = ed25519_root_and_leaf(tmp_path / "pki", sans=f"DNS:{TEST_NAME}")
    gateway = lab.GatewayProcess(
        ["--listen", "[::1]:0", "--upstream", v6_registry.url, "--name", TEST_NAME,
         "--cert", str(leaf), "--key", str(key), "--certs-dir", str(tmp_path / "certs")]
    ).start()
    try:
        reference = f"{TEST_NAME}:{gateway.port}/dockerd/ed25519:v1"
        dockerd.trust(f"{TEST_NAME}:{gateway.port}", root)
        dockerd.load_image(image_layout, reference)
        push = dockerd.docker("push", reference)
        removed = dockerd.docker("rmi", reference)
        pull = dockerd.docker("pull", reference)
    finally:
        gateway.stop()
    assert push.returncode == 0, push.stderr + push.stdout
    assert "digest: sha256:" in push.stdout
    assert removed.returncode == 0, removed.stderr
    assert pull.returncode == 0, pull.stderr + pull.stdout
    assert f"Downloaded newer image for {reference}" in pull.stdout
    assert "has an Ed25519 key" in gateway.output
