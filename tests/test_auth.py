"""Optional Basic authentication and mTLS in front of an unauthenticated registry."""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil

import aiohttp
import bcrypt
import pytest
from yarl import URL

from gateway import certs, lab
from gateway.auth import load_htpasswd
from gateway.config import Config
from gateway.errors import ConfigError
from tests.conftest import running_gateway

USER, PASSWORD = "alice", "correct horse battery"


def write_htpasswd(path, user=USER, password=PASSWORD):
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"# users of the gateway\n{user}:{hashed}\n")
    return path


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_htpasswd_rejects_non_bcrypt(tmp_path):
    path = tmp_path / "htpasswd"
    path.write_text("bob:$apr1$abc$def\n")
    with pytest.raises(ConfigError) as raised:
        load_htpasswd(path)
    assert "htpasswd -B" in str(raised.value)
    assert "'bob'" in str(raised.value)


def test_htpasswd_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_htpasswd(tmp_path / "none")


async def test_basic_auth_gate(upstream, local_ca, client_ssl, tmp_path, caplog):
    """No or wrong credentials get 401 and never reach the registry; right ones pass, stripped."""
    config = Config(upstream=URL(upstream.url), names=["localhost"], htpasswd=write_htpasswd(tmp_path / "htpasswd"))
    caplog.set_level(logging.WARNING, logger="gateway.auth")
    connector = aiohttp.TCPConnector(ssl=client_ssl)
    async with running_gateway(config, local_ca) as gateway, aiohttp.ClientSession(connector=connector) as session:
        base = f"https://localhost:{gateway.bound[0].port}"
        async with session.get(f"{base}/v2/") as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"] == 'Basic realm="registry-gateway"'
            assert (await response.json())["errors"][0]["code"] == "UNAUTHORIZED"
        for _ in range(2):
            async with session.get(f"{base}/v2/", headers={"Authorization": basic(USER, "wrong")}) as response:
                assert response.status == 401
        assert upstream.received == []
        for _ in range(3):
            async with session.get(f"{base}/v2/", headers={"Authorization": basic(USER, PASSWORD)}) as response:
                assert response.status == 200
        assert gateway.proxy.auth.failures == 2
    assert len(upstream.received) == 3
    assert upstream.header("Authorization") == []
    failures = [r.getMessage() for r in caplog.records if r.name == "gateway.auth"]
    assert len(failures) == 2
    assert "'alice' from 127.0.0.1" in failures[-1]
    assert "2 failures" in failures[-1]
    assert all("wrong" not in line for line in failures)


def test_skopeo_push_with_gateway_credentials(registry, local_ca, cert_dir, tmp_path):
    """skopeo pushes through a gateway that requires Basic auth; wrong credentials fail."""
    htpasswd = write_htpasswd(tmp_path / "htpasswd")
    image = tmp_path / "image"
    lab.build_oci_layout(image, layer_sizes=(1000, 2000), seed=61)
    gateway = lab.GatewayProcess(
        ["--listen", "127.0.0.1:0", "--upstream", registry.url, "--certs-dir", str(local_ca), "--htpasswd", str(htpasswd)]
    ).start()
    try:
        address = gateway.addresses[0]
        denied = lab.skopeo(
            "copy", "--dest-cert-dir", str(cert_dir), "--dest-creds", f"{USER}:nope",
            f"oci:{image}:v1", f"docker://{address}/auth/app:v1",
        )
        assert denied.returncode == 1
        assert "unauthorized" in lab.skopeo_error(denied).lower()
        pushed = lab.skopeo(
            "copy", "--dest-cert-dir", str(cert_dir), "--dest-creds", f"{USER}:{PASSWORD}",
            f"oci:{image}:v1", f"docker://{address}/auth/app:v1",
        )
        assert pushed.returncode == 0, pushed.stderr
    finally:
        gateway.stop()
    assert "Authentication failed for user 'alice' from 127.0.0.1" in gateway.output


def test_mtls_requires_client_certificate(registry, local_ca, tmp_path):
    """With tls.client_ca, skopeo without a client certificate fails; with client.cert/key it works."""
    ca_cert = certs.load_certs(local_ca / certs.CA_CERT)[0]
    ca_key = certs.load_key(local_ca / certs.CA_KEY)
    client_key = certs.generate_key()
    client_cert = certs.issue_leaf(ca_cert, ca_key, client_key, ["skopeo-client"], client=True)
    plain_trust = tmp_path / "plain"
    plain_trust.mkdir()
    shutil.copy(local_ca / certs.CA_CERT, plain_trust / "ca.crt")
    with_client = tmp_path / "with-client"
    with_client.mkdir()
    shutil.copy(local_ca / certs.CA_CERT, with_client / "ca.crt")
    certs.write_certs(with_client / "client.cert", [client_cert])
    certs.write_key(with_client / "client.key", client_key)

    config = tmp_path / "gateway.toml"
    config.write_text(f'[tls]\nclient_ca = "{local_ca / certs.CA_CERT}"\n')
    gateway = lab.GatewayProcess(
        ["--config", str(config), "--listen", "127.0.0.1:0", "--upstream", registry.url, "--certs-dir", str(local_ca)]
    ).start()
    try:
        address = gateway.addresses[0]
        refused = lab.skopeo("inspect", "--cert-dir", str(plain_trust), f"docker://{address}/mtls/none:v1")
        accepted = lab.skopeo("list-tags", "--cert-dir", str(with_client), f"docker://{address}/mtls/none")
    finally:
        gateway.stop()
    assert refused.returncode == 1
    assert "requires a TLS client certificate" in lab.skopeo_error(refused)
    assert f"in the client's certs.d folder for {address} " in lab.skopeo_error(refused)
    # The registry answers NAME_UNKNOWN for a repository with no tags: mTLS let it through.
    assert "invalid status code from registry 404" in lab.skopeo_error(accepted)
    assert "without a client certificate (tls.client_ca is set" in gateway.output


async def read_response(reader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


async def test_fast_path_password_checks(upstream, local_ca, client_ssl, tmp_path):
    """401, then a bcrypt check, then the cache: all on one connection that stays on the fast path."""
    config = Config(upstream=URL(upstream.url), names=["localhost"], htpasswd=write_htpasswd(tmp_path / "htpasswd"))
    async with running_gateway(config, local_ca) as gateway:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", gateway.bound[0].port, ssl=client_ssl, server_hostname="localhost"
        )
        credentials = basic(USER, PASSWORD)
        writer.write(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert (status, headers["www-authenticate"]) == (401, 'Basic realm="registry-gateway"')
        assert "connection" not in headers, "a bodyless 401 keeps the connection open"
        for _ in range(2):
            writer.write(f"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nAuthorization: {credentials}\r\n\r\n".encode())
            status, _, body = await read_response(reader)
            assert (status, body) == (200, b"{}")
        writer.write(f"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nAuthorization: {basic(USER, 'wrong')}\r\n\r\n".encode())
        assert (await read_response(reader))[0] == 401
        assert len(gateway.fast.connections) == 1, "the connection left the fast path"
        assert not gateway._server.connections, "the connection was handed to aiohttp"
        writer.write(b"PATCH /v2/x/blobs/uploads/u HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello")
        status, headers, _ = await read_response(reader)
        assert (status, headers["connection"]) == (401, "close")
        assert await reader.read() == b""
        writer.close()
    assert [r["method"] for r in upstream.received] == ["GET", "GET"]
    assert all(not upstream.header("Authorization", i) for i in range(2))


def test_missing_client_ca_error(local_ca, tmp_path):
    from gateway.errors import CertificateError
    from gateway.server import make_ssl_context

    with pytest.raises(CertificateError) as raised:
        make_ssl_context(local_ca / certs.LEAF_CERT, local_ca / certs.LEAF_KEY, tmp_path / "nope.crt")
    message = str(raised.value)
    assert "tls.client_ca" in message
    assert "nope.crt" in message
    assert "No such file or directory" in message
    assert "leave client_ca empty" in message


async def test_head_401_without_body(upstream, local_ca, client_ssl, tmp_path):
    """A HEAD without credentials gets the 401's fields and no body, so the next response is read right."""
    config = Config(upstream=URL(upstream.url), names=["localhost"], htpasswd=write_htpasswd(tmp_path / "htpasswd"))
    async with running_gateway(config, local_ca) as gateway:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", gateway.bound[0].port, ssl=client_ssl, server_hostname="localhost"
        )
        writer.write(b"HEAD /v2/x/manifests/v1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 401 ")
        assert b"Content-Length: 0" not in head
        credentials = basic(USER, PASSWORD)
        writer.write(f"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nAuthorization: {credentials}\r\n\r\n".encode())
        status, _, body = await read_response(reader)
        writer.close()
    assert (status, body) == (200, b"{}")
