"""Hostile and malformed input: smuggling shapes, oversized heads, slow clients, limits."""

from __future__ import annotations

import asyncio
import json
import ssl

import aiohttp
import pytest
from yarl import URL

from gateway.config import Config
from tests.conftest import running_gateway

SMUGGLING = {
    "content-length-and-chunked": (
        b"POST /v2/x/blobs/uploads/ HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "two-content-lengths": (
        b"POST /v2/x/blobs/uploads/ HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
        b"Content-Length: 6\r\n\r\nhello!"
    ),
    "invalid-chunk-size": (
        b"PATCH /v2/x/blobs/uploads/u HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nhello\r\n0\r\n\r\n"
    ),
    "bare-lf": b"GET /v2/ HTTP/1.1\nHost: localhost\n\n",
    "chunked-identity": (
        b"POST /v2/x/blobs/uploads/ HTTP/1.1\r\nHost: localhost\r\n"
        b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"
    ),
    "signed-content-length": (
        b"POST /v2/x/blobs/uploads/ HTTP/1.1\r\nHost: localhost\r\nContent-Length: +5\r\n\r\nhello"
    ),
    "lf-after-chunk-size": (
        b"PATCH /v2/x/blobs/uploads/u HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\nhello\r\n0\r\n\r\n"
    ),
}


def tls_context(local_ca) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(local_ca / "ca.crt"))


async def exchange(port: int, context: ssl.SSLContext, data: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes over TLS and read until the gateway closes the connection."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def parse_response(raw: bytes) -> tuple[int, dict, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


@pytest.mark.parametrize("name", sorted(SMUGGLING))
async def test_smuggling_shapes_rejected(upstream, local_ca, name):
    """Each request-smuggling shape gets a registry-JSON 400 and reaches nothing upstream."""
    config = Config(upstream=URL(upstream.url), names=["localhost"])
    async with running_gateway(config, local_ca) as gateway:
        raw = await exchange(gateway.bound[0].port, tls_context(local_ca), SMUGGLING[name])
    status, headers, body = parse_response(raw)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert headers["docker-distribution-api-version"] == "registry/2.0"
    assert json.loads(body)["errors"][0]["message"].startswith("the gateway rejected")
    assert upstream.received == []


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /v2/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 414),
        (b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431),
        (
            b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n"
            + b"".join(b"X-H%d: 1\r\n" % i for i in range(200))
            + b"\r\n",
            431,
        ),
    ],
    ids=["request-line", "header-field", "header-count"],
)
async def test_oversized_heads(upstream, local_ca, request_bytes, status):
    config = Config(upstream=URL(upstream.url), names=["localhost"])
    async with running_gateway(config, local_ca) as gateway:
        raw = await exchange(gateway.bound[0].port, tls_context(local_ca), request_bytes)
    got, headers, body = parse_response(raw)
    assert got == status
    assert json.loads(body)["errors"][0]["code"] == "UNSUPPORTED"
    assert upstream.received == []


async def test_head_limits_configurable(upstream, local_ca):
    """limits.max_request_line applies: a 600-byte target passes by default, not with 512."""
    request_bytes = b"GET /v2/" + b"c" * 600 + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    config = Config(upstream=URL(upstream.url), names=["localhost"])
    async with running_gateway(config, local_ca) as gateway:
        status, _, _ = parse_response(await exchange(gateway.bound[0].port, tls_context(local_ca), request_bytes))
    assert status == 200
    config = Config(upstream=URL(upstream.url), names=["localhost"], max_request_line=512)
    async with running_gateway(config, local_ca) as gateway:
        status, _, _ = parse_response(await exchange(gateway.bound[0].port, tls_context(local_ca), request_bytes))
    assert status == 414


async def test_slow_head_cut_off_others_served(upstream, local_ca, client_ssl):
    """A request head trickling in is cut at header_timeout while another client is served."""
    config = Config(upstream=URL(upstream.url), names=["localhost"], header_timeout=0.5)
    async with running_gateway(config, local_ca) as gateway:
        port = gateway.bound[0].port
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls_context(local_ca), server_hostname="localhost"
        )

        async def trickle():
            for byte in b"GET /v2/ HTTP/1.1\r\nHost: local":
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)

        trickling = asyncio.create_task(trickle())
        connector = aiohttp.TCPConnector(ssl=client_ssl)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get(f"https://localhost:{port}/v2/") as response:
                assert response.status == 200
        try:
            closed = await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:
            # The cut is an abort, which reaches a client still sending as a reset.
            closed = b""
        trickling.cancel()
        writer.close()
    assert closed == b""
    assert len(upstream.received) == 1


async def test_stalled_body_cut_off(upstream, local_ca):
    """A body that stops arriving gets 408 after client_idle_timeout; the upstream sees nothing."""
    config = Config(upstream=URL(upstream.url), names=["localhost"], client_idle_timeout=0.5)
    async with running_gateway(config, local_ca) as gateway:
        raw = await exchange(
            gateway.bound[0].port,
            tls_context(local_ca),
            b"PATCH /v2/x/blobs/uploads/u HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n",
        )
    status, _, body = parse_response(raw)
    assert status == 408
    assert "stalled" in json.loads(body)["errors"][0]["message"]
    assert upstream.received == []


async def test_max_connections_refused_cleanly(upstream, local_ca):
    """Past limits.max_connections a new connection gets a 503 in registry JSON."""
    config = Config(upstream=URL(upstream.url), names=["localhost"], max_connections=3)
    context = tls_context(local_ca)
    async with running_gateway(config, local_ca) as gateway:
        port = gateway.bound[0].port
        held = []
        for _ in range(3):
            held.append(await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost"))
        await asyncio.sleep(0.1)
        raw = await exchange(port, context, b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        for _, writer in held:
            writer.close()
    status, headers, body = parse_response(raw)
    assert status == 503
    assert headers["retry-after"] == "1"
    assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
    assert upstream.received == []


async def test_encoded_path_segments_not_decoded(registry, local_ca, client_ssl):
    """%2e%2e and %2F reach the registry as sent, so it answers as it would directly."""
    paths = ["/v2/a/%2e%2e/b/tags/list", "/v2/a%2Fb/tags/list", "/v2/a/%2E%2E%2Fb/manifests/x"]
    config = Config(upstream=URL(registry.url), names=["localhost"])
    connector = aiohttp.TCPConnector(ssl=client_ssl)
    async with running_gateway(config, local_ca) as gateway, aiohttp.ClientSession(connector=connector) as session:
        for path in paths:
            async with aiohttp.ClientSession() as direct:
                async with direct.get(URL(registry.url + path, encoded=True)) as response:
                    expected = (response.status, await response.read())
            async with session.get(URL(f"https://localhost:{gateway.bound[0].port}{path}", encoded=True)) as response:
                assert (response.status, await response.read()) == expected, path


async def test_failed_handshake_logged(upstream, local_ca, caplog):
    """A client the TLS settings refuse (only a non-forward-secret suite) shows in the log with why."""
    config = Config(upstream=URL(upstream.url), names=["localhost"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("AES128-SHA")
    caplog.set_level("INFO", logger="gateway.server")
    async with running_gateway(config, local_ca) as gateway:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.open_connection("127.0.0.1", gateway.bound[0].port, ssl=context, server_hostname="localhost")
        await asyncio.sleep(0.1)
    lines = [r.getMessage() for r in caplog.records if "TLS handshake from" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("TLS handshake from 127.0.0.1 failed: ")
    assert "NO_SHARED_CIPHER" in lines[0], lines[0]
