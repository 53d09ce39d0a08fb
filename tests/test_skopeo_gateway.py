"""skopeo, the same Go HTTP stack as docker, through the gateway subprocess."""

from __future__ import annotations

import json

import pytest

from gateway import lab

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def big_image(tmp_path_factory):
    """Several small layers and one of 64 MiB."""
    folder = tmp_path_factory.mktemp("big-image")
    digest = lab.build_oci_layout(
        folder, layer_sizes=(512, 4096, 70_000, 64 * 1024 * 1024), seed=7
    )
    return folder, digest


def layout_digests(folder) -> tuple[str, list[str]]:
    index = json.loads((folder / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    manifest = json.loads((folder / "blobs" / "sha256" / digest.split(":")[1]).read_text())
    return digest, [layer["digest"] for layer in manifest["layers"]]


def test_copy_roundtrip_with_generated_ca(gateway_process, cert_dir, big_image, tmp_path):
    """skopeo copy into the gateway and back, trusting only the generated CA."""
    folder, digest = big_image
    address = gateway_process.addresses[0]
    push = lab.skopeo(
        "copy", "--dest-cert-dir", str(cert_dir), f"oci:{folder}:v1", f"docker://{address}/skopeo/big:v1"
    )
    assert push.returncode == 0, push.stderr

    pulled = tmp_path / "pulled"
    pull = lab.skopeo(
        "copy", "--src-cert-dir", str(cert_dir), f"docker://{address}/skopeo/big:v1", f"oci:{pulled}:v1"
    )
    assert pull.returncode == 0, pull.stderr
    assert layout_digests(pulled) == layout_digests(folder)
    assert layout_digests(pulled)[0] == digest


def test_inspect_and_tag_list(gateway_process, cert_dir, big_image):
    """skopeo inspect and list-tags work through the gateway by name and by IP."""
    folder, digest = big_image
    port = gateway_process.port
    push = lab.skopeo(
        "copy", "--dest-cert-dir", str(cert_dir), f"oci:{folder}:v1",
        f"docker://localhost:{port}/skopeo/tags:v2",
    )
    assert push.returncode == 0, push.stderr
    for host in ("localhost", "127.0.0.1"):
        inspect = lab.skopeo("inspect", "--cert-dir", str(cert_dir), f"docker://{host}:{port}/skopeo/tags:v2")
        assert inspect.returncode == 0, inspect.stderr
        assert json.loads(inspect.stdout)["Digest"] == digest
        tags = lab.skopeo("list-tags", "--cert-dir", str(cert_dir), f"docker://{host}:{port}/skopeo/tags")
        assert tags.returncode == 0, tags.stderr
        assert json.loads(tags.stdout)["Tags"] == ["v2"]


def test_untrusted_gateway_rejected(gateway_process):
    """Without the CA, skopeo refuses the gateway's certificate with Go's text."""
    address = gateway_process.addresses[0]
    result = lab.skopeo("inspect", f"docker://{address}/skopeo/none:v1")
    assert result.returncode == 1
    assert lab.skopeo_error(result).endswith(
        f'pinging container registry {address}: Get "https://{address}/v2/": '
        "x509: certificate signed by unknown authority"
    )


def test_plain_registry_gives_famous_error(registry):
    """The wall this project removes, reproduced by skopeo against the plain registry."""
    result = lab.skopeo("inspect", f"docker://{registry.address}/skopeo/none:v1")
    assert result.returncode == 1
    assert lab.skopeo_error(result).endswith(
        f'Get "https://{registry.address}/v2/": http: server gave HTTP response to HTTPS client'
    )
