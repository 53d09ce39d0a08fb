"""Expect: 100-continue: the gateway sends the 100 itself, on both request paths, and drops the field.

curl sends `Expect: 100-continue` with a large upload (a 4 MiB PUT here) and
then waits, one second by default, for the interim response before it sends
the body.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os

import pytest
from yarl import URL

from gateway.config import Config
from tests.conftest import running_gateway

# A bound for a broken gateway, which would never send the 100; not a speed check.
WAIT = 20


async def read_head(reader) -> tuple[int, dict[str, str]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


async def connect(gateway, client_ssl):
    return await asyncio.open_connection(
        "127.0.0.1", gateway.bound[0].port, ssl=client_ssl, server_hostname="localhost"
    )


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "aiohttp"])
async def test_expect_gets_100_first(registry, local_ca, client_ssl, fast_path):
    """The 100 comes before any body byte is sent, and the registry stores the blob whole."""
    blob = os.urandom(2 * 1024 * 1024 + 7)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    config = Config(upstream=URL(registry.url), names=["localhost"], fast_path=fast_path)
    async with running_gateway(config, local_ca) as gateway:
        reader, writer = await connect(gateway, client_ssl)
        writer.write(b"POST /v2/expect/app/blobs/uploads/ HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
        status, headers = await read_head(reader)
        assert status == 202
        await reader.readexactly(int(headers.get("content-length", "0")))
        location = URL(headers["location"])
        target = location.raw_path_qs + ("&" if location.query_string else "?") + "digest=" + digest
        writer.write(
            f"PUT {target} HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(blob)}\r\n\r\n".encode()
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(blob)
        status, headers = await read_head(reader)
        assert status == 201, headers
        assert headers["docker-content-digest"] == digest
        writer.close()


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "aiohttp"])
async def test_expect_not_forwarded(upstream, local_ca, client_ssl, fast_path):
    config = Config(upstream=URL(upstream.url), names=["localhost"], fast_path=fast_path)
    async with running_gateway(config, local_ca) as gateway:
        reader, writer = await connect(gateway, client_ssl)
        writer.write(b"PATCH /v2/x/blobs/uploads/u HTTP/1.1\r\nHost: localhost\r\nExpect: 100-Continue\r\nContent-Length: 5\r\n\r\n")
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        status, _ = await read_head(reader)
        writer.close()
    assert status == 200
    assert upstream.received[0]["body"] == b"hello"
    assert upstream.header("Expect", 0) == []


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "aiohttp"])
async def test_other_expectation_refused(upstream, local_ca, client_ssl, fast_path):
    """RFC 9110 section 10.1.1: an expectation the server cannot meet gets 417."""
    config = Config(upstream=URL(upstream.url), names=["localhost"], fast_path=fast_path)
    async with running_gateway(config, local_ca) as gateway:
        reader, writer = await connect(gateway, client_ssl)
        writer.write(b"PUT /v2/x/blobs/uploads/u HTTP/1.1\r\nHost: localhost\r\nExpect: 200-ok\r\nContent-Length: 0\r\n\r\n")
        status, headers = await read_head(reader)
        body = await reader.readexactly(int(headers["content-length"]))
        writer.close()
    assert status == 417
    assert json.loads(body)["errors"][0]["detail"] == {"expect": "200-ok"}
    assert upstream.received == []
