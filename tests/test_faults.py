"""The fault matrix against the real registry and the gateway as a process.

Figures (file descriptors, RSS) are read from /proc for the gateway's PID and
printed, so `pytest -s` shows them; assertions use generous bounds.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import resource
import signal
import ssl
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from gateway import lab

MiB = 1024 * 1024


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS line")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def socket_count(pid: int) -> int:
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                count += 1
        except FileNotFoundError:
            pass
    return count


async def settle(check, timeout: float = 10.0) -> None:
    """Wait until check() is true, polling; fail with the last state after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


@pytest.fixture
def own_registry(tmp_path):
    registry = lab.RegistryProcess(host="127.0.0.1", workdir=tmp_path / "registry")
    registry.workdir.mkdir()
    registry.start()
    yield registry
    registry.stop()


@pytest.fixture
def own_gateway(own_registry, local_ca):
    process = lab.GatewayProcess(
        ["--listen", "127.0.0.1:0", "--upstream", own_registry.url, "--certs-dir", str(local_ca)]
    ).start()
    yield process
    process.stop()


@pytest.fixture
async def session(client_ssl):
    connector = aiohttp.TCPConnector(ssl=client_ssl, limit=200)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as client:
        yield client


async def push_blob(session, base: str, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with session.post(f"{base}/v2/{repo}/blobs/uploads/") as response:
        assert response.status == 202, await response.text()
        location = response.headers["Location"]
    async with session.put(
        URL(f"{location}&digest={digest}", encoded=True),
        data=io.BytesIO(data),
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
    ) as response:
        assert response.status == 201, await response.text()
    return digest


async def test_upstream_down_at_startup(tmp_path, local_ca, session):
    """The gateway starts without its registry, answers 502 with rate-limited warnings, then recovers."""
    port = lab.free_port()
    gateway = lab.GatewayProcess(
        ["--listen", "127.0.0.1:0", "--upstream", f"http://127.0.0.1:{port}", "--certs-dir", str(local_ca)]
    ).start()
    registry = lab.RegistryProcess(host="127.0.0.1", port=port, workdir=tmp_path)
    try:
        base = f"https://localhost:{gateway.port}"
        for _ in range(20):
            async with session.get(f"{base}/v2/") as response:
                assert response.status == 502
                assert (await response.json())["errors"][0]["code"] == "UNAVAILABLE"
        registry.start()
        async with session.get(f"{base}/v2/") as response:
            assert response.status == 200
    finally:
        registry.stop()
        gateway.stop()
    warnings = [line for line in gateway.output.splitlines() if "WARNING gateway.proxy: Upstream" in line]
    print(f"20 failed requests gave {len(warnings)} warning lines")
    assert 1 <= len(warnings) <= 5


@pytest.mark.slow
async def test_upstream_dies_mid_pull(own_registry, own_gateway, session):
    """Killing the registry mid-download leaves the client with a broken, short body."""
    base = f"https://localhost:{own_gateway.port}"
    data = lab._random_bytes(300 * MiB, seed=21)
    digest = await push_blob(session, base, "faults/pull", data)
    received = 0
    with pytest.raises(aiohttp.ClientPayloadError):
        async with session.get(f"{base}/v2/faults/pull/blobs/{digest}") as response:
            assert response.headers["Content-Length"] == str(len(data))
            async for chunk in response.content.iter_chunked(MiB):
                received += len(chunk)
                if received >= 4 * MiB and own_registry.process.poll() is None:
                    own_registry.process.kill()
                    own_registry.process.wait()
                await asyncio.sleep(0)
    print(f"client received {received} of {len(data)} bytes before the break")
    assert received < len(data)


@pytest.mark.slow
async def test_upstream_dies_mid_push_then_push_succeeds(own_registry, own_gateway, session):
    """Killing the registry mid-upload fails the push; after a restart the same push succeeds."""
    base = f"https://localhost:{own_gateway.port}"
    data = lab._random_bytes(64 * MiB, seed=22)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with session.post(f"{base}/v2/faults/push/blobs/uploads/") as response:
        location = response.headers["Location"]

    async def body():
        for start in range(0, len(data), MiB):
            if start == 8 * MiB:
                own_registry.process.kill()
                own_registry.process.wait()
            yield data[start : start + MiB]
            await asyncio.sleep(0.001)

    try:
        async with session.patch(URL(location, encoded=True), data=body()) as response:
            failed_status = response.status
    except aiohttp.ClientError:
        failed_status = None
    assert failed_status != 202

    own_registry.process = None
    own_registry.start()
    assert await push_blob(session, base, "faults/push", data) == digest
    async with session.head(f"{base}/v2/faults/push/blobs/{digest}") as response:
        assert response.status == 200
        assert response.headers["Docker-Content-Digest"] == digest
        assert response.headers["Content-Length"] == str(len(data))


@pytest.mark.slow
async def test_client_aborts_leak_nothing(own_gateway, session, local_ca):
    """200 aborted uploads and 200 aborted downloads leave no sockets, fds or RSS behind."""
    base = f"https://localhost:{own_gateway.port}"
    pid = own_gateway.process.pid
    blob = lab._random_bytes(32 * MiB, seed=23)
    digest = await push_blob(session, base, "faults/abort", blob)
    context = ssl.create_default_context(cafile=str(local_ca / "ca.crt"))

    async def aborted_upload():
        async with session.post(f"{base}/v2/faults/abort/blobs/uploads/") as response:
            location = URL(response.headers["Location"], encoded=True)
        reader, writer = await asyncio.open_connection("127.0.0.1", own_gateway.port, ssl=context, server_hostname="localhost")
        writer.write(
            f"PATCH {location.raw_path_qs} HTTP/1.1\r\nHost: localhost:{own_gateway.port}\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 10000000\r\n\r\n".encode()
            + blob[: 256 * 1024]
        )
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.transport.abort()

    async def aborted_download():
        reader, writer = await asyncio.open_connection("127.0.0.1", own_gateway.port, ssl=context, server_hostname="localhost")
        writer.write(
            f"GET /v2/faults/abort/blobs/{digest} HTTP/1.1\r\nHost: localhost:{own_gateway.port}\r\n\r\n".encode()
        )
        await writer.drain()
        await reader.readexactly(512 * 1024)
        writer.transport.abort()

    # Warm up so that pools, caches and arenas reach their working size first.
    for _ in range(20):
        await aborted_upload()
        await aborted_download()
    await asyncio.sleep(1.0)
    fds_before, sockets_before, rss_before = fd_count(pid), socket_count(pid), rss_kib(pid)

    for _ in range(200):
        await aborted_upload()
        await aborted_download()
    await settle(lambda: socket_count(pid) <= sockets_before + 2)
    fds_after, sockets_after, rss_after = fd_count(pid), socket_count(pid), rss_kib(pid)
    print(
        f"after 400 aborts: fds {fds_before}->{fds_after}, sockets {sockets_before}->{sockets_after}, "
        f"RSS {rss_before}->{rss_after} KiB"
    )
    assert fds_after <= fds_before + 2
    assert rss_after - rss_before < 16 * 1024
    async with session.get(f"{base}/v2/") as response:
        assert response.status == 200


@pytest.mark.slow
async def test_concurrent_pushes_and_pulls(own_gateway, session):
    """64 concurrent pushes of distinct blobs, then 64 concurrent pulls, all digests right."""
    base = f"https://localhost:{own_gateway.port}"
    blobs = [lab._random_bytes(256 * 1024 + i * 1024, seed=100 + i) for i in range(64)]
    digests = await asyncio.gather(
        *(push_blob(session, base, f"faults/load{i % 4}", data) for i, data in enumerate(blobs))
    )
    assert digests == ["sha256:" + hashlib.sha256(b).hexdigest() for b in blobs]

    async def pull(index: int) -> str:
        async with session.get(f"{base}/v2/faults/load{index % 4}/blobs/{digests[index]}") as response:
            assert response.status == 200
            return "sha256:" + hashlib.sha256(await response.read()).hexdigest()

    assert await asyncio.gather(*(pull(i) for i in range(64))) == digests


@pytest.mark.slow
async def test_idle_keepalive_connections_bounded(own_gateway, local_ca):
    """2,000 idle keep-alive TLS connections are held; RSS per connection is reported and bounded."""
    pid = own_gateway.process.pid
    # This process holds the client ends: make room for them where the soft limit is 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    context = ssl.create_default_context(cafile=str(local_ca / "ca.crt"))
    request = f"GET /v2/ HTTP/1.1\r\nHost: localhost:{own_gateway.port}\r\n\r\n".encode()
    rss_before = rss_kib(pid)
    connections = []
    try:
        for start in range(0, 2000, 100):
            batch = await asyncio.gather(
                *(
                    asyncio.open_connection("127.0.0.1", own_gateway.port, ssl=context, server_hostname="localhost")
                    for _ in range(100)
                )
            )
            for reader, writer in batch:
                writer.write(request)
            for reader, writer in batch:
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200"), head[:40]
                await reader.readexactly(2)
            connections += batch
        await asyncio.sleep(0.5)
        open_sockets = socket_count(pid)
        rss_after = rss_kib(pid)
        per_connection = (rss_after - rss_before) / len(connections)
        print(f"2000 idle TLS connections: RSS {rss_before}->{rss_after} KiB, {per_connection:.1f} KiB each")
        assert open_sockets >= 2000
        assert per_connection < 128
        # Every one of them is still usable.
        reader, writer = connections[-1]
        writer.write(request)
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    finally:
        for _, writer in connections:
            writer.transport.abort()


async def test_sigterm_exit_code_idle(own_gateway):
    """SIGTERM on an idle gateway exits 0 at once."""
    own_gateway.process.send_signal(signal.SIGTERM)
    assert own_gateway.process.wait(10) == 0
