"""`workers = N`: several gateway processes on one port, in front of the real registry."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import time
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from gateway import lab
from gateway.config import load, parse_workers
from gateway.errors import ConfigError

PATCHES = 16
ACCESS_LINE = re.compile(r"gateway\.access \(worker (\d+)\): .*\"(\w+) ")


def child_pids(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(value) for value in path.read_text().split()] if path.exists() else []


def write_config(folder: Path, registry_url: str, workers: int) -> Path:
    path = folder / "gateway.toml"
    path.write_text(
        f'listen = ["127.0.0.1:0"]\nworkers = {workers}\n[upstream]\nurl = "{registry_url}"\n'
    )
    return path


@pytest.fixture
def two_workers(registry, local_ca, tmp_path):
    config = write_config(tmp_path, registry.url, 2)
    process = lab.GatewayProcess(
        ["--config", str(config), "--certs-dir", str(local_ca), "--name", "localhost"]
    ).start()
    yield process
    process.stop()


def test_parse_workers():
    assert parse_workers(1) == 1
    assert parse_workers(4) == 4
    assert parse_workers("auto") == min(os.cpu_count() or 1, 256)


@pytest.mark.parametrize("value", [0, -1, 257, "many", "2"])
def test_parse_workers_rejects(value):
    with pytest.raises(ConfigError) as raised:
        parse_workers(value)
    assert repr(value) in str(raised.value)


def test_workers_key_rejects_bool(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text("workers = true\n")
    with pytest.raises(ConfigError) as raised:
        load(path)
    assert "workers" in str(raised.value)


async def test_push_patches_land_on_both_workers(two_workers, client_ssl):
    """One chunked upload whose PATCHes, each on a new connection, reach both workers."""
    assert len(child_pids(two_workers.process.pid)) == 2
    base = f"https://localhost:{two_workers.port}"
    data = lab._random_bytes(PATCHES * 65536, seed=11)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    # force_close opens a new TCP connection per request, so the kernel picks a
    # worker for every PATCH.
    connector = aiohttp.TCPConnector(ssl=client_ssl, force_close=True)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as client:
        async with client.post(f"{base}/v2/workers/blobs/uploads/") as response:
            assert response.status == 202
            location = response.headers["Location"]
        for index in range(PATCHES):
            start = index * 65536
            async with client.patch(
                URL(location, encoded=True),
                data=data[start : start + 65536],
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{start}-{start + 65535}",
                },
            ) as response:
                assert response.status == 202, await response.text()
                location = response.headers["Location"]
        put_url = URL(location, encoded=True).update_query(digest=digest)
        async with client.put(put_url, data=b"") as response:
            assert response.status == 201, await response.text()
        async with client.get(f"{base}/v2/workers/blobs/{digest}") as response:
            assert response.status == 200
            pulled = await response.read()

    assert hashlib.sha256(pulled).hexdigest() == digest.removeprefix("sha256:")
    time.sleep(0.2)
    patch_workers = {
        worker for worker, method in ACCESS_LINE.findall(two_workers.read_output()) if method == "PATCH"
    }
    assert patch_workers == {"1", "2"}


def test_sigterm_stops_every_worker(registry, local_ca, tmp_path):
    """SIGTERM to the parent drains and stops both workers, and the parent exits 0."""
    config = write_config(tmp_path, registry.url, 2)
    process = lab.GatewayProcess(
        ["--config", str(config), "--certs-dir", str(local_ca), "--name", "localhost"]
    ).start()
    workers = child_pids(process.process.pid)
    assert len(workers) == 2

    code = process.stop()

    assert code == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_dead_worker_is_replaced(two_workers, client_ssl):
    """A worker killed from outside is replaced, and the port keeps serving."""
    before = child_pids(two_workers.process.pid)
    os.kill(before[0], signal.SIGKILL)

    deadline = time.monotonic() + 10
    after = before
    while time.monotonic() < deadline:
        after = child_pids(two_workers.process.pid)
        if len(after) == 2 and before[0] not in after:
            break
        time.sleep(0.1)

    assert before[0] not in after
    assert len(after) == 2
    assert "exited with status -9; starting a new one" in two_workers.read_output()
    status, _headers, _body = lab.http_get(
        f"https://localhost:{two_workers.port}/v2/", context=client_ssl
    )
    assert status == 200

