"""The gateway in front of the real distribution registry, driven by an aiohttp client."""

from __future__ import annotations

import hashlib
import os

import aiohttp
import pytest
from yarl import URL

from gateway.config import Config
from gateway.lab import _random_bytes
from tests.conftest import running_gateway

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
async def gateway(registry, local_ca):
    config = Config(upstream=URL(registry.url), names=["localhost"])
    async with running_gateway(config, local_ca) as running:
        yield running


def base_url(gateway) -> str:
    return f"https://localhost:{gateway.bound[0].port}"


async def push_blob(client, base: str, repo: str, data: bytes) -> str:
    """Upload `data` as POST, one chunked PATCH without Content-Length, then PUT ?digest=."""
    async with client.post(f"{base}/v2/{repo}/blobs/uploads/") as response:
        assert response.status == 202
        location = response.headers["Location"]

    async def chunks():
        for start in range(0, len(data), 65536):
            yield data[start : start + 65536]

    async with client.patch(
        URL(location, encoded=True),
        data=chunks(),
        headers={"Content-Type": "application/octet-stream"},
    ) as response:
        assert response.status == 202, await response.text()
        location = response.headers["Location"]

    digest = digest_of(data)
    separator = "&" if "?" in location else "?"
    async with client.put(URL(f"{location}{separator}digest={digest}", encoded=True)) as response:
        assert response.status == 201, await response.text()
    return digest


async def put_manifest(client, base: str, repo: str, tag: str, config_digest: str, config_size: int, layers: list[tuple[str, int]]) -> bytes:
    manifest = (
        '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":'
        '"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[%s]}'
        % (
            OCI_MANIFEST,
            config_digest,
            config_size,
            ",".join(
                '{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%d}' % layer
                for layer in layers
            ),
        )
    ).encode()
    async with client.put(
        f"{base}/v2/{repo}/manifests/{tag}", data=manifest, headers={"Content-Type": OCI_MANIFEST}
    ) as response:
        assert response.status == 201, await response.text()
    return manifest


async def test_chunked_patch_upload_roundtrip(gateway, client):
    """A blob sent as one chunked PATCH without Content-Length arrives intact."""
    base = base_url(gateway)
    data = _random_bytes(3 * 1024 * 1024 + 17, seed=11)
    digest = await push_blob(client, base, "proxy/chunked", data)

    async with client.get(f"{base}/v2/proxy/chunked/blobs/{digest}") as response:
        assert response.status == 200
        body = await response.read()
    assert digest_of(body) == digest
    assert len(body) == len(data)


async def test_monolithic_put_upload(gateway, client):
    """POST then a single PUT ?digest= with the whole body and a Content-Length."""
    base = base_url(gateway)
    data = os.urandom(200_000)
    digest = digest_of(data)
    async with client.post(f"{base}/v2/proxy/mono/blobs/uploads/") as response:
        location = response.headers["Location"]
    separator = "&" if "?" in location else "?"
    async with client.put(
        URL(f"{location}{separator}digest={digest}", encoded=True),
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    ) as response:
        assert response.status == 201
        assert response.headers["Docker-Content-Digest"] == digest


async def test_many_patches_across_connections(gateway, client, client_ssl):
    """One upload session survives PATCHes on one connection and on fresh ones."""
    base = base_url(gateway)
    parts = [os.urandom(50_000) for _ in range(6)]
    async with client.post(f"{base}/v2/proxy/multi/blobs/uploads/") as response:
        location = response.headers["Location"]
    offset = 0
    for index, part in enumerate(parts):
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{offset}-{offset + len(part) - 1}",
            "Content-Length": str(len(part)),
        }
        if index % 2:
            connector = aiohttp.TCPConnector(ssl=client_ssl, force_close=True)
            async with aiohttp.ClientSession(connector=connector) as fresh:
                async with fresh.patch(URL(location, encoded=True), data=part, headers=headers) as response:
                    assert response.status == 202, await response.text()
                    location = response.headers["Location"]
                    assert response.headers["Range"] == f"0-{offset + len(part) - 1}"
        else:
            async with client.patch(URL(location, encoded=True), data=part, headers=headers) as response:
                assert response.status == 202, await response.text()
                location = response.headers["Location"]
        offset += len(part)
    whole = b"".join(parts)
    separator = "&" if "?" in location else "?"
    async with client.put(URL(f"{location}{separator}digest={digest_of(whole)}", encoded=True)) as response:
        assert response.status == 201


async def test_cross_repository_mount(gateway, client):
    """POST ?mount=&from= mounts an existing blob with 201 and the rewritten Location."""
    base = base_url(gateway)
    digest = await push_blob(client, base, "proxy/source", os.urandom(10_000))
    async with client.post(
        f"{base}/v2/proxy/target/blobs/uploads/?mount={digest}&from=proxy/source"
    ) as response:
        assert response.status == 201
        assert response.headers["Docker-Content-Digest"] == digest
        assert response.headers["Location"].startswith(f"{base}/v2/proxy/target/blobs/")


async def test_upload_location_is_public_https(gateway, client):
    """The registry's upload Location names the public https origin with its port."""
    base = base_url(gateway)
    async with client.post(f"{base}/v2/proxy/location/blobs/uploads/") as response:
        assert response.status == 202
        assert response.headers["Location"].startswith(f"{base}/v2/proxy/location/blobs/uploads/")
        assert "Docker-Upload-UUID" in response.headers
        assert response.headers["Range"] == "0-0"


async def head_headers(session, url: str) -> tuple[int, dict]:
    async with session.head(url, headers={"Accept": OCI_MANIFEST}) as response:
        body = await response.read()
        assert body == b""
        return response.status, dict(response.headers)


@pytest.mark.parametrize("kind", ["blob", "manifest"])
async def test_head_matches_registry(gateway, client, registry, kind):
    """HEAD through the gateway carries the registry's Content-Length and digest exactly."""
    base = base_url(gateway)
    layer = os.urandom(123_457)
    layer_digest = await push_blob(client, base, "proxy/head", layer)
    config_bytes = b'{"architecture":"amd64","os":"linux"}'
    config_digest = await push_blob(client, base, "proxy/head", config_bytes)
    manifest = await put_manifest(
        client, base, "proxy/head", "v1", config_digest, len(config_bytes), [(layer_digest, len(layer))]
    )
    path = f"/v2/proxy/head/blobs/{layer_digest}" if kind == "blob" else "/v2/proxy/head/manifests/v1"

    async with aiohttp.ClientSession(auto_decompress=False) as direct:
        direct_status, direct_headers = await head_headers(direct, registry.url + path)
    status, headers = await head_headers(client, base + path)

    assert status == direct_status == 200
    expected_length = str(len(layer) if kind == "blob" else len(manifest))
    assert headers["Content-Length"] == direct_headers["Content-Length"] == expected_length
    assert headers["Docker-Content-Digest"] == direct_headers["Docker-Content-Digest"]
    assert "Transfer-Encoding" not in headers
    # Header for header, but for the ones a hop sets itself.
    hop_set = {"date", "server", "connection", "keep-alive"}
    through = {k.lower(): v for k, v in headers.items() if k.lower() not in hop_set}
    direct = {k.lower(): v for k, v in direct_headers.items() if k.lower() not in hop_set}
    assert through == direct


async def test_range_get_gives_206(gateway, client):
    """A Range GET on a blob passes through as 206 with Content-Range."""
    base = base_url(gateway)
    data = os.urandom(100_000)
    digest = await push_blob(client, base, "proxy/range", data)
    async with client.get(
        f"{base}/v2/proxy/range/blobs/{digest}", headers={"Range": "bytes=100-199"}
    ) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
        assert await response.read() == data[100:200]


async def test_catalog_pagination_link(gateway, client):
    """The catalog's Link header with n=1 leads to the next page through the gateway."""
    base = base_url(gateway)
    await push_blob(client, base, "paging/a", b"a")
    await push_blob(client, base, "paging/b", b"b")
    seen = []
    url = f"{base}/v2/_catalog?n=1"
    for _ in range(50):
        async with client.get(URL(url, encoded=True)) as response:
            assert response.status == 200
            seen += (await response.json())["repositories"]
            link = response.headers.get("Link")
        if not link:
            break
        target = link.split(">", 1)[0].lstrip("<")
        url = target if target.startswith("https://") else base + target
    assert len(seen) >= 2
    assert seen == sorted(seen)


async def test_manifest_get_and_delete(gateway, client):
    """GET returns the manifest byte for byte; DELETE by digest gives 202."""
    base = base_url(gateway)
    config_bytes = b'{"os":"linux"}'
    config_digest = await push_blob(client, base, "proxy/delete", config_bytes)
    manifest = await put_manifest(client, base, "proxy/delete", "v1", config_digest, len(config_bytes), [])
    async with client.get(f"{base}/v2/proxy/delete/manifests/v1", headers={"Accept": OCI_MANIFEST}) as response:
        assert await response.read() == manifest
        assert response.headers["Docker-Content-Digest"] == digest_of(manifest)
    async with client.delete(f"{base}/v2/proxy/delete/manifests/{digest_of(manifest)}") as response:
        assert response.status == 202
    async with client.get(f"{base}/v2/proxy/delete/manifests/v1", headers={"Accept": OCI_MANIFEST}) as response:
        assert response.status == 404
        assert (await response.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"


async def test_error_status_and_body_pass_through(gateway, client, registry):
    """A registry error (404 BLOB_UNKNOWN) reaches the client with the same body."""
    path = "/v2/proxy/none/blobs/sha256:" + "0" * 64
    async with aiohttp.ClientSession() as direct:
        async with direct.get(registry.url + path) as response:
            direct_body = await response.read()
    async with client.get(base_url(gateway) + path) as response:
        assert response.status == 404
        assert await response.read() == direct_body


async def test_small_bodies_keep_registry_headers(gateway, client, registry):
    """Small bodies, sent whole with their headers, keep the registry's framing and type."""
    base = base_url(gateway)
    config_bytes = b'{"architecture":"amd64","os":"linux","small":1}'
    config_digest = await push_blob(client, base, "proxy/small", config_bytes)
    manifest = await put_manifest(client, base, "proxy/small", "v1", config_digest, len(config_bytes), [])

    async with aiohttp.ClientSession(auto_decompress=False) as direct:
        for method, path in (
            ("GET", "/v2/proxy/small/manifests/v1"),
            ("GET", "/v2/"),
            ("POST", "/v2/proxy/small/blobs/uploads/"),
            ("GET", "/v2/proxy/small/manifests/missing"),
        ):
            headers = {"Accept": OCI_MANIFEST}
            async with direct.request(method, registry.url + path, headers=headers) as response:
                direct_status, direct_headers = response.status, response.headers
                direct_body = await response.read()
            async with client.request(method, base + path, headers=headers) as response:
                status, proxied = response.status, response.headers
                body = await response.read()

            assert status == direct_status, path
            assert proxied.get("Content-Length") == direct_headers.get("Content-Length"), path
            assert proxied.get("Content-Type") == direct_headers.get("Content-Type"), path
            assert "Transfer-Encoding" not in proxied, path
            if method == "GET":
                assert body == direct_body, path
            if path.endswith("/v1"):
                assert body == manifest
