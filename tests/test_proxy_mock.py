"""The gateway against a hand-written upstream, for what the real registry cannot be made to do.

The upstream records every request it receives, so each test compares what the
client sent, what reached the upstream, and what came back.
"""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gateway.config import Config, Route
from tests.conftest import running_gateway
from tests.mock_upstream import Upstream

PUBLIC = "registry.example"
STATE = "AbC%2B_x%3D"


def gateway_config(upstream: Upstream, **overrides) -> Config:
    config = Config(upstream=URL(upstream.url), names=[PUBLIC, "localhost"])
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


async def request(client, gateway, method: str, path: str, host: str | None = None, **kwargs):
    """Send to the gateway's loopback port while presenting `host` as the Host header."""
    port = gateway.bound[0].port
    headers = kwargs.pop("headers", {})
    if host is not None:
        headers = {"Host": host, **headers} if isinstance(headers, dict) else headers
    url = URL(f"https://localhost:{port}{path}", encoded=True)
    return await client.request(method, url, headers=headers, allow_redirects=False, **kwargs)


def location_reply(location: str):
    async def reply(request):
        return web.Response(
            status=202,
            headers={"Location": location, "Docker-Upload-UUID": "9f1c", "Range": "0-0"},
        )

    return reply


@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.1:{port}/v2/team/app/blobs/uploads/9f1c?_state=" + STATE,
        "https://registry.example/v2/team/app/blobs/uploads/9f1c?_state=" + STATE,
        "http://registry.example:5443/v2/team/app/blobs/uploads/9f1c?_state=" + STATE,
    ],
    ids=["upstream-origin", "public-name-no-port", "public-name-http"],
)
async def test_location_rewritten_to_public_origin(upstream, local_ca, client, location):
    """An upstream or wrong-port/scheme Location becomes https://public:port, query untouched."""
    upstream.reply = location_reply(location.format(port=upstream.port))
    async with running_gateway(gateway_config(upstream), local_ca) as gateway:
        response = await request(
            client, gateway, "POST", "/v2/team/app/blobs/uploads/", host=f"{PUBLIC}:5443"
        )
        async with response:
            assert response.status == 202
            assert response.headers["Location"] == (
                f"https://{PUBLIC}:5443/v2/team/app/blobs/uploads/9f1c?_state={STATE}"
            )
            assert response.headers["Docker-Upload-UUID"] == "9f1c"
            assert response.headers["Range"] == "0-0"
    assert upstream.header("Host") == [f"{PUBLIC}:5443"]
    assert upstream.header("X-Forwarded-Proto") == ["https"]
    assert upstream.header("X-Forwarded-Host") == [f"{PUBLIC}:5443"]
    assert upstream.header("X-Forwarded-Port") == ["5443"]


@pytest.mark.parametrize(
    "location",
    [
        "/v2/team/app/blobs/uploads/9f1c?_state=" + STATE,
        "https://bucket.s3.example.net/blobs/abc?X-Amz-Signature=f%2Fx%3D&X-Amz-Expires=1200",
    ],
    ids=["relative", "presigned-foreign"],
)
async def test_location_left_alone(upstream, local_ca, client, location):
    """A relative Location, or one on a foreign host, passes through byte for byte."""
    upstream.reply = location_reply(location)
    async with running_gateway(gateway_config(upstream), local_ca) as gateway:
        async with await request(client, gateway, "POST", "/v2/app/blobs/uploads/", host=f"{PUBLIC}:5443") as response:
            assert response.headers["Location"] == location


async def test_presigned_redirect_not_followed(upstream, local_ca, client):
    """A 307 to object storage reaches the client as 307 with the same Location."""
    target = "https://storage.example.net/docker/blob?sig=a%2Bb"

    async def reply(request):
        return web.Response(status=307, headers={"Location": target})

    upstream.reply = reply
    async with running_gateway(gateway_config(upstream), local_ca) as gateway:
        async with await request(client, gateway, "GET", "/v2/app/blobs/sha256:" + "a" * 64) as response:
            assert response.status == 307
            assert response.headers["Location"] == target
    assert len(upstream.received) == 1


async def test_malformed_location_gives_502(upstream, local_ca, client):
    """A Location that does not parse is answered with a registry-format 502."""
    upstream.reply = location_reply("http://[::1/v2/broken")
    async with running_gateway(gateway_config(upstream), local_ca) as gateway:
        async with await request(client, gateway, "POST", "/v2/app/blobs/uploads/") as response:
            assert response.status == 502
            assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
            body = await response.json()
    assert body["errors"][0]["code"] == "UNKNOWN"
    assert "Location" in body["errors"][0]["message"]


async def test_realm_on_upstream_rewritten(upstream, local_ca, client):
    """A Bearer realm on the upstream's address is given the public https origin."""

    async def reply(request):
        challenge = (
            f'Bearer realm="http://127.0.0.1:{upstream.port}/auth/token",'
            'service="registry",scope="repository:app:pull"'
        )
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})

    upstream.reply = reply
    async with running_gateway(gateway_config(upstream), local_ca) as gateway:
        async with await request(client, gateway, "GET", "/v2/", host=f"{PUBLIC}:5443") as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"] == (
                f'Bearer realm="https://{PUBLIC}:5443/auth/token",'
                'service="registry",scope="repository:app:pull"'
            )


async def test_basic_realm_untouched(upstream, local_ca, client):
    async def reply(request):
        return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="basic-realm"'})

    upstream.reply = reply
    async with running_gateway(gateway_config(upstream), local_ca) as gateway:
        async with await request(client, gateway, "GET", "/v2/") as response:
            assert response.headers["WWW-Authenticate"] == 'Basic realm="basic-realm"'


async def test_route_sends_prefix_to_second_upstream(upstream, local_ca, client):
    """A [[route]] prefix goes to the token service; its realm is rewritten the same way."""
    token_service = Upstream()

    async def token_reply(request):
        return web.json_response({"token": "t0k3n"})

    token_service.reply = token_reply
    await token_service.start()

    async def registry_reply(request):
        challenge = f'Bearer realm="http://127.0.0.1:{token_service.port}/auth/token",service="reg"'
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})

    upstream.reply = registry_reply
    config = gateway_config(
        upstream, routes=[Route(prefix="/auth", upstream=URL(token_service.url))]
    )
    try:
        async with running_gateway(config, local_ca) as gateway:
            async with await request(client, gateway, "GET", "/v2/", host=f"{PUBLIC}:5443") as response:
                realm = response.headers["WWW-Authenticate"]
            assert realm == f'Bearer realm="https://{PUBLIC}:5443/auth/token",service="reg"'
            async with await request(
                client, gateway, "GET", "/auth/token?service=reg&scope=repository%3Aapp%3Apull"
            ) as response:
                assert response.status == 200
                assert (await response.json())["token"] == "t0k3n"
        assert token_service.received[0]["raw_path"] == "/auth/token?service=reg&scope=repository%3Aapp%3Apull"
        assert all(r["raw_path"] == "/v2/" for r in upstream.received)
    finally:
        await token_service.stop()


async def test_forged_forwarding_headers_dropped(upstream, local_ca, client):
    """Client-sent X-Forwarded-* and Forwarded are replaced by the gateway's own."""

    async def reply(request):
        proto = request.headers.get("X-Forwarded-Proto", "http")
        host = request.headers.get("X-Forwarded-Host", request.host)
        return web.Response(status=202, headers={"Location": f"{proto}://{host}/v2/app/blobs/uploads/1"})

    upstream.reply = reply
    forged = {
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-For": "203.0.113.9",
        "Forwarded": "proto=http;host=evil.example",
        "X-Real-IP": "203.0.113.9",
    }
    async with running_gateway(gateway_config(upstream), local_ca) as gateway:
        async with await request(
            client, gateway, "POST", "/v2/app/blobs/uploads/", host=f"{PUBLIC}:5443", headers=forged
        ) as response:
            assert response.headers["Location"] == f"https://{PUBLIC}:5443/v2/app/blobs/uploads/1"
    assert upstream.header("X-Forwarded-Proto") == ["https"]
    assert upstream.header("X-Forwarded-Host") == [f"{PUBLIC}:5443"]
    assert upstream.header("X-Forwarded-For") == ["127.0.0.1"]
    assert upstream.header("Forwarded") == []
    assert upstream.header("X-Real-IP") == []


async def test_trusted_proxy_headers_kept(upstream, local_ca, client):
    """From a peer in trusted_proxies, incoming forwarding values are kept and For appended."""
    import ipaddress

    config = gateway_config(upstream, trusted_proxies=[ipaddress.ip_network("127.0.0.0/8")])
    headers = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": f"{PUBLIC}:443",
        "X-Forwarded-For": "198.51.100.7",
    }
    async with running_gateway(config, local_ca) as gateway:
        async with await request(client, gateway, "GET", "/v2/", host=f"{PUBLIC}:5443", headers=headers):
            pass
    assert upstream.header("X-Forwarded-Host") == [f"{PUBLIC}:443"]
    assert upstream.header("X-Forwarded-For") == ["198.51.100.7, 127.0.0.1"]


async def test_forged_host_uses_primary_name(upstream, local_ca, client):
    """A Host that is not one of ours never steers the rewritten Location."""
    upstream.reply = location_reply(f"http://127.0.0.1:{upstream.port}/v2/app/blobs/uploads/1")
    async with running_gateway(gateway_config(upstream), local_ca) as gateway:
        port = gateway.bound[0].port
        async with await request(
            client, gateway, "POST", "/v2/app/blobs/uploads/", host="attacker.example:8443"
        ) as response:
            assert response.headers["Location"] == f"https://{PUBLIC}:{port}/v2/app/blobs/uploads/1"
    assert upstream.header("X-Forwarded-Host") == [f"{PUBLIC}:{port}"]


async def test_accept_lines_kept_in_order(upstream, local_ca, client):
    """Several Accept lines reach the upstream as sent, all of them, in order."""
    accept = [
        ("Accept", "application/vnd.oci.image.index.v1+json"),
        (
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json, "
            "application/vnd.docker.distribution.manifest.list.v2+json",
        ),
    ]
    from multidict import CIMultiDict

    async with running_gateway(gateway_config(upstream), local_ca) as gateway:
        async with await request(
            client, gateway, "GET", "/v2/library/alpine/manifests/3.20", headers=CIMultiDict(accept)
        ):
            pass
        async with await request(
            client, gateway, "HEAD", "/v2/library/alpine/manifests/3.20", headers=CIMultiDict(accept)
        ):
            pass
    for index in (0, 1):
        assert upstream.header("Accept", index) == [value for _, value in accept]


async def test_path_and_query_byte_identical(upstream, local_ca, client):
    """Percent-encoded paths and queries reach the upstream exactly as sent."""
    path = f"/v2/team/app/blobs/uploads/9f1c?_state={STATE}&digest=sha256%3Aab&x=%2e%2e%2F"
    async with running_gateway(gateway_config(upstream), local_ca) as gateway:
        async with await request(client, gateway, "PUT", path, data=b"") as response:
            assert response.status == 200
        async with await request(client, gateway, "GET", "/v2/a%2Fb/tags/list?n=1&last=a%20b"):
            pass
    assert upstream.received[0]["raw_path"] == path
    assert upstream.received[1]["raw_path"] == "/v2/a%2Fb/tags/list?n=1&last=a%20b"


async def test_hop_by_hop_headers_removed(upstream, local_ca, client):
    """Hop-by-hop headers and those named in Connection stop at the gateway, both ways."""

    async def reply(request):
        return web.Response(
            status=200,
            body=b"ok",
            headers={
                "Connection": "X-Upstream-Hop",
                "X-Upstream-Hop": "1",
                "Keep-Alive": "timeout=5",
                "Proxy-Authenticate": "Basic",
                "Docker-Content-Digest": "sha256:" + "b" * 64,
                "OCI-Subject": "sha256:" + "c" * 64,
            },
        )

    upstream.reply = reply
    headers = {
        "Connection": "X-Client-Hop",
        "X-Client-Hop": "1",
        "TE": "trailers",
        "Proxy-Authorization": "Basic c2VjcmV0",
        "Authorization": "Bearer end-to-end",
        "Upgrade": "h2c",
    }
    async with running_gateway(gateway_config(upstream), local_ca) as gateway:
        async with await request(client, gateway, "GET", "/v2/", headers=headers) as response:
            assert "X-Upstream-Hop" not in response.headers
            assert "Keep-Alive" not in response.headers
            assert "Proxy-Authenticate" not in response.headers
            assert response.headers["Docker-Content-Digest"] == "sha256:" + "b" * 64
            assert response.headers["OCI-Subject"] == "sha256:" + "c" * 64
    for name in ("X-Client-Hop", "TE", "Proxy-Authorization", "Upgrade"):
        assert upstream.header(name) == [], name
    assert upstream.header("Authorization") == ["Bearer end-to-end"]


async def test_api_version_header_added(upstream, local_ca, client):
    """A response without Docker-Distribution-Api-Version gets it."""
    async with running_gateway(gateway_config(upstream), local_ca) as gateway:
        async with await request(client, gateway, "GET", "/v2/") as response:
            assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"


async def test_no_compression_added(upstream, local_ca, client):
    """A compressible body comes back unchanged, without Content-Encoding."""
    body = b'{"schemaVersion":2}' * 500

    async def reply(request):
        return web.Response(status=200, body=body, content_type="application/json")

    upstream.reply = reply
    async with running_gateway(gateway_config(upstream), local_ca) as gateway:
        async with await request(
            client, gateway, "GET", "/v2/app/manifests/1", headers={"Accept-Encoding": "gzip"}
        ) as response:
            assert "Content-Encoding" not in response.headers
            assert await response.read() == body


async def test_gzip_body_not_decompressed(upstream, local_ca, client):
    """An upstream body with Content-Encoding: gzip passes through still compressed."""
    import gzip

    raw = gzip.compress(b"x" * 10_000)

    async def reply(request):
        return web.Response(status=200, body=raw, headers={"Content-Encoding": "gzip"})

    upstream.reply = reply
    async with running_gateway(gateway_config(upstream), local_ca) as gateway:
        async with await request(client, gateway, "GET", "/v2/x") as response:
            assert response.headers["Content-Encoding"] == "gzip"
            assert response.headers["Content-Length"] == str(len(raw))
            assert await response.read() == raw


async def test_upstream_refused_gives_502(local_ca, client):
    """With nothing on the upstream port, the client gets a registry-format 502."""
    from gateway.lab import free_port

    config = Config(upstream=URL(f"http://127.0.0.1:{free_port()}"), names=["localhost"])
    async with running_gateway(config, local_ca) as gateway:
        async with await request(client, gateway, "GET", "/v2/") as response:
            assert response.status == 502
            assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
            assert response.content_type == "application/json"
            error = (await response.json())["errors"][0]
    assert error["code"] == "UNAVAILABLE"
    assert "unreachable" in error["message"]


async def test_upstream_unresolvable_gives_502(local_ca, client):
    config = Config(upstream=URL("http://registry.invalid:5000"), names=["localhost"])
    async with running_gateway(config, local_ca) as gateway:
        async with await request(client, gateway, "GET", "/v2/") as response:
            assert response.status == 502
            assert (await response.json())["errors"][0]["detail"]["upstream"].startswith(
                "http://registry.invalid:5000/v2/"
            )


async def test_stalled_upstream_gives_504(upstream, local_ca, client, caplog):
    """An upstream that sends no response within the idle timeout gives 504 and a warning."""

    release = asyncio.Event()

    async def reply(request):
        await asyncio.wait_for(release.wait(), 10)
        return web.Response(status=200)

    upstream.reply = reply
    config = gateway_config(upstream, idle_timeout=0.5)
    caplog.set_level(logging.WARNING, logger="gateway.proxy")
    async with running_gateway(config, local_ca) as gateway:
        async with await request(client, gateway, "GET", "/v2/slow") as response:
            assert response.status == 504
            assert (await response.json())["errors"][0]["message"] == "the upstream registry timed out"
    release.set()
    warnings = [r for r in caplog.records if r.name == "gateway.proxy"]
    assert len(warnings) == 1
    assert "/v2/slow" in warnings[0].getMessage()
    assert "request id" in warnings[0].getMessage()


async def test_slow_body_within_idle_timeout(upstream, local_ca, client):
    """A response whose chunks arrive slower than nothing-at-all but within the idle timeout completes."""

    async def reply(request):
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        for _ in range(4):
            await response.write(b"x" * 1000)
            await asyncio.sleep(0.3)
        await response.write_eof()
        return response

    upstream.reply = reply
    config = gateway_config(upstream, idle_timeout=0.6)
    async with running_gateway(config, local_ca) as gateway:
        async with await request(client, gateway, "GET", "/v2/trickle") as response:
            assert await response.read() == b"x" * 4000


async def test_upstream_break_mid_body_is_visible(upstream, local_ca, client):
    """An upstream that dies mid-body leaves the client with a broken, not a complete, response."""

    async def reply(request):
        response = web.StreamResponse(status=200, headers={"Content-Length": "100000"})
        await response.prepare(request)
        await response.write(b"y" * 1000)
        request.transport.abort()
        return response

    upstream.reply = reply
    async with running_gateway(gateway_config(upstream), local_ca) as gateway:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with await request(client, gateway, "GET", "/v2/broken") as response:
                await response.read()


async def test_access_log_line_without_secrets(upstream, local_ca, client, caplog):
    """One access line per request with status and bytes; no Authorization value or token."""
    caplog.set_level(logging.DEBUG, logger="gateway")
    async with running_gateway(gateway_config(upstream), local_ca) as gateway:
        async with await request(
            client, gateway, "GET", "/v2/?access_token=s3cr3t-token",
            headers={"Authorization": "Bearer s3cr3t-bearer"},
        ):
            pass
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    assert len(lines) == 1
    assert '"GET /v2/?access_token=***" 200' in lines[0]
    assert "out=2" in lines[0]
    assert "id=" in lines[0]
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert "s3cr3t" not in everything


async def test_absolute_form_target_rejected(upstream, local_ca):
    """A request target in absolute form for another host is rejected before the upstream."""
    import ssl as ssl_module

    async with running_gateway(gateway_config(upstream), local_ca) as gateway:
        context = ssl_module.create_default_context(cafile=str(local_ca / "ca.crt"))
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", gateway.bound[0].port, ssl=context, server_hostname="localhost"
        )
        writer.write(b"GET http://other.example/v2/ HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert data.startswith(b"HTTP/1.1 400")
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["errors"][0]["code"] == "UNSUPPORTED"
    assert upstream.received == []


async def test_https_upstream_on_plain_port_hint(registry, local_ca, client):
    """An https:// upstream in front of a plain-HTTP registry gets a 502 that says to use http://."""
    config = Config(upstream=URL(registry.url.replace("http://", "https://")), names=["localhost"])
    async with running_gateway(config, local_ca) as gateway:
        async with await request(client, gateway, "GET", "/v2/") as response:
            assert response.status == 502
            message = (await response.json())["errors"][0]["message"]
    assert f"give the upstream as http://{registry.address}" in message


async def test_access_log_counts_own_error_bodies(local_ca, client, caplog):
    from gateway.lab import free_port

    caplog.set_level(logging.INFO, logger="gateway.access")
    config = Config(upstream=URL(f"http://127.0.0.1:{free_port()}"), names=["localhost"])
    async with running_gateway(config, local_ca) as gateway:
        async with await request(client, gateway, "GET", "/v2/") as response:
            body = await response.read()
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    assert f"out={len(body)}" in lines[0]
