"""The gateway's own pages: /_gateway/ca.crt and the /_gateway/ status page."""

from __future__ import annotations

import re

import aiohttp
import aiohttp.web
import pytest
from yarl import URL

from gateway import certs, lab
from gateway.config import Config
from gateway.status import fingerprint_argument
from tests.conftest import running_gateway
from tests.test_auth import write_htpasswd


@pytest.fixture
async def session(client_ssl):
    connector = aiohttp.TCPConnector(ssl=client_ssl)
    async with aiohttp.ClientSession(connector=connector) as client:
        yield client


async def test_ca_download_matches_ca_file(upstream, local_ca, session):
    config = Config(upstream=URL(upstream.url), names=["localhost"])
    async with running_gateway(config, local_ca) as gateway:
        async with session.get(f"https://localhost:{gateway.bound[0].port}/_gateway/ca.crt") as response:
            assert response.status == 200
            assert response.content_type == "application/x-pem-file"
            body = await response.read()
    assert body == (local_ca / certs.CA_CERT).read_bytes()
    assert upstream.received == []


async def test_status_page_content(upstream, local_ca, session):
    """The page names the upstream state, the certificate, the CA fingerprint and the trust command."""
    async def registry_reply(request):
        return aiohttp.web.Response(status=200, body=b"{}", headers={"Docker-Distribution-Api-Version": "registry/2.0"})

    upstream.reply = registry_reply
    config = Config(upstream=URL(upstream.url), names=["registry.example", "localhost"])
    ca = certs.load_certs(local_ca / certs.CA_CERT)[0]
    async with running_gateway(config, local_ca) as gateway:
        port = gateway.bound[0].port
        async with session.get(f"https://localhost:{port}/_gateway/") as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            page = await response.text()
    assert "reachable: GET /v2/ answered 200" in page
    assert certs.fingerprint(ca) in page
    assert (
        f"registry-gateway trust localhost:{port} --fingerprint {fingerprint_argument(ca)} "
        "--for docker --install"
    ) in page
    assert f"C:\\ProgramData\\docker\\certs.d\\localhost{port}\\ca.crt" in page
    assert "<script" not in page
    assert not re.search(r'(src|href)="https?://', page), "no external assets"


async def test_status_page_reports_unreachable_upstream(local_ca, session):
    config = Config(upstream=URL(f"http://127.0.0.1:{lab.free_port()}"), names=["localhost"])
    async with running_gateway(config, local_ca) as gateway:
        async with session.get(f"https://localhost:{gateway.bound[0].port}/_gateway/") as response:
            page = await response.text()
    assert "not reachable" in page


async def test_gateway_paths_need_no_credentials(upstream, local_ca, session, tmp_path):
    """With Basic auth on, the CA and status page are still public; other paths are not."""
    config = Config(upstream=URL(upstream.url), names=["localhost"], htpasswd=write_htpasswd(tmp_path / "h"))
    async with running_gateway(config, local_ca) as gateway:
        base = f"https://localhost:{gateway.bound[0].port}"
        async with session.get(f"{base}/_gateway/ca.crt") as response:
            assert response.status == 200
        async with session.head(f"{base}/_gateway/") as response:
            assert response.status == 200
        async with session.post(f"{base}/_gateway/ca.crt") as response:
            assert response.status == 405
        async with session.get(f"{base}/_gateway/nothing") as response:
            assert response.status == 404
        async with session.get(f"{base}/v2/") as response:
            assert response.status == 401


def test_serve_prints_fingerprint_and_trust_command(registry, tmp_path, local_ca):
    """The fingerprint serve prints is the one on the status page."""
    process = lab.GatewayProcess(
        ["--listen", "127.0.0.1:0", "--upstream", registry.url, "--certs-dir", str(local_ca), "--name", "localhost"]
    ).start()
    try:
        status, _, body = lab.http_get(
            f"https://localhost:{process.port}/_gateway/",
            context=__import__("ssl").create_default_context(cafile=str(local_ca / certs.CA_CERT)),
        )
    finally:
        process.stop()
    printed = re.search(r"CA fingerprint \(SHA-256\): (\S+)", process.output).group(1)
    command = re.search(r"On each client, run: (.+)", process.output).group(1)
    assert status == 200
    assert printed in body.decode()
    assert command in body.decode()


async def test_gateway_path_without_slash_redirects(upstream, local_ca, session):
    config = Config(upstream=URL(upstream.url), names=["localhost"])
    async with running_gateway(config, local_ca) as gateway:
        url = f"https://localhost:{gateway.bound[0].port}/_gateway"
        async with session.get(url, allow_redirects=False) as response:
            assert response.status == 301
            assert response.headers["Location"] == "/_gateway/"
    assert upstream.received == []


async def test_stale_ca_not_offered(upstream, tmp_path, session, client_ssl):
    """After the CA is replaced under a running gateway, its new CA is not offered for the old leaf."""
    import shutil

    from gateway.status import TrustInfo

    folder = tmp_path / "certs"
    certs.ensure_serving_pair(folder, ["localhost", "127.0.0.1"])
    leaf = folder / certs.LEAF_CERT
    other = tmp_path / "other"
    certs.ensure_local_ca(other)
    trust = TrustInfo(leaf_path=leaf, ca_path=folder / certs.CA_CERT)
    assert trust.ca_certificate() is not None
    shutil.copy(other / certs.CA_CERT, folder / certs.CA_CERT)
    assert trust.ca_certificate() is None
