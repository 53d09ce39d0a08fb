"""Large and slow bodies: streamed both ways, never buffered, never cut by a total timeout."""

from __future__ import annotations

import asyncio
import hashlib
import io

import pytest
from aiohttp import web
from yarl import URL

from gateway import lab
from gateway.config import Config
from tests.conftest import running_gateway
from tests.mock_upstream import Upstream

MiB = 1024 * 1024


class CountingUpstream(Upstream):
    """Hashes request bodies as they arrive instead of keeping them."""

    def __init__(self):
        super().__init__()
        self.first_byte = asyncio.Event()
        self.total = 0
        self.sha256 = hashlib.sha256()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        async for chunk in request.content.iter_any():
            if not self.first_byte.is_set():
                self.first_byte.set()
            self.total += len(chunk)
            self.sha256.update(chunk)
        return web.Response(status=202, headers={"Range": f"0-{self.total - 1}"})


@pytest.fixture
async def counting_upstream():
    server = CountingUpstream()
    await server.start()
    yield server
    await server.stop()


@pytest.mark.slow
async def test_300mib_chunked_patch_streams(counting_upstream, local_ca, client):
    """A 300 MiB chunked PATCH arrives whole, and its first byte arrives before 64 MiB are sent."""
    size = 300 * MiB
    block = lab._random_bytes(MiB, seed=3)
    sent = hashlib.sha256()
    sent_when_first_byte_arrived: list[int] = []

    async def body():
        total = 0
        while total < size:
            if counting_upstream.first_byte.is_set() and not sent_when_first_byte_arrived:
                sent_when_first_byte_arrived.append(total)
            sent.update(block)
            total += len(block)
            yield block

    config = Config(upstream=URL(counting_upstream.url), names=["localhost"])
    async with running_gateway(config, local_ca) as gateway:
        url = f"https://localhost:{gateway.bound[0].port}/v2/big/blobs/uploads/u1"
        async with client.patch(url, data=body(), headers={"Content-Type": "application/octet-stream"}) as response:
            assert response.status == 202
            assert response.headers["Range"] == f"0-{size - 1}"
    assert counting_upstream.total == size
    assert counting_upstream.sha256.hexdigest() == sent.hexdigest()
    assert sent_when_first_byte_arrived, "the upstream saw no byte before the client finished"
    assert sent_when_first_byte_arrived[0] < 64 * MiB


async def test_slow_upload_not_cut_by_total_time(counting_upstream, local_ca, client):
    """An upload that lasts several idle timeouts in total, with short gaps, completes."""
    config = Config(upstream=URL(counting_upstream.url), names=["localhost"], idle_timeout=0.5)

    async def body():
        for _ in range(8):
            await asyncio.sleep(0.25)
            yield b"z" * 10_000

    async with running_gateway(config, local_ca) as gateway:
        url = f"https://localhost:{gateway.bound[0].port}/v2/slow/blobs/uploads/u1"
        async with client.patch(url, data=body()) as response:
            assert response.status == 202
    assert counting_upstream.total == 80_000


@pytest.mark.slow
async def test_large_blob_pull_keeps_content_length(registry, local_ca, client):
    """A 96 MiB blob pulled through the gateway keeps Content-Length and its digest."""
    data = lab._random_bytes(96 * MiB, seed=5)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    config = Config(upstream=URL(registry.url), names=["localhost"])
    async with running_gateway(config, local_ca) as gateway:
        base = f"https://localhost:{gateway.bound[0].port}"
        async with client.post(f"{base}/v2/stream/pull/blobs/uploads/") as response:
            location = response.headers["Location"]
        async with client.put(
            URL(f"{location}&digest={digest}", encoded=True), data=io.BytesIO(data),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
        ) as response:
            assert response.status == 201
        received = hashlib.sha256()
        async with client.get(f"{base}/v2/stream/pull/blobs/{digest}") as response:
            assert response.headers["Content-Length"] == str(len(data))
            assert "Transfer-Encoding" not in response.headers
            async for chunk in response.content.iter_chunked(MiB):
                received.update(chunk)
    assert "sha256:" + received.hexdigest() == digest


async def test_upstream_restart_recovers(tmp_path, local_ca, client):
    """With the registry stopped, pushes get 502 JSON; once it is back, the next push works."""
    registry = lab.RegistryProcess(host="127.0.0.1", workdir=tmp_path)
    registry.start()
    config = Config(upstream=URL(registry.url), names=["localhost"])
    try:
        async with running_gateway(config, local_ca) as gateway:
            base = f"https://localhost:{gateway.bound[0].port}"
            async with client.get(f"{base}/v2/") as response:
                assert response.status == 200
            registry.stop()
            async with client.post(f"{base}/v2/restart/app/blobs/uploads/") as response:
                assert response.status == 502
                assert (await response.json())["errors"][0]["code"] == "UNAVAILABLE"
            registry.process = None
            registry.start()
            async with client.post(f"{base}/v2/restart/app/blobs/uploads/") as response:
                assert response.status == 202
                location = response.headers["Location"]
            data = b"after the restart"
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            async with client.put(
                URL(f"{location}&digest={digest}", encoded=True), data=data,
                headers={"Content-Type": "application/octet-stream"},
            ) as response:
                assert response.status == 201
    finally:
        registry.stop()
