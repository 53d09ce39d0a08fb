"""`workers = N`: several gateway processes on one port, in front of the real registry."""

from __future__ import annotations

import datetime
import hashlib
import http.client
import itertools
import os
import re
import shutil
import signal
import ssl
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from yarl import URL

from gateway import certs, certstore, lab
from gateway.config import load, parse_workers
from gateway.errors import ConfigError
from tests.certs_support import issue, new_ca, write_pair
from tests.test_metrics import METRICS_LINE, sample, scrape

PATCHES = 16
ACCESS_LINE = re.compile(r"gateway\.access \(worker (\d+)\): .*\"(\w+) ")
PROBE_LINE = re.compile(r"gateway\.access \(worker (\d+)\): .*\"GET /v2/probe-(\d+)/tags/list\"")
# The maximum of connections one probe round makes to reach both workers. If
# the kernel spread them like coin flips, 40 would miss a worker with odds of
# 2**-39 (an estimate: it hashes each connection's addresses and ports).
MAX_PROBES = 40
PROBE_NUMBERS = itertools.count()
WAIT = 20.0


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


def wait_until(condition, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def probe(port: int, context: ssl.SSLContext, number: int) -> int:
    """GET /v2/probe-NUMBER/tags/list on a new connection; return the served leaf's serial."""
    connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
    try:
        connection.request("GET", f"/v2/probe-{number}/tags/list")
        connection.getresponse().read()
        der = connection.sock.getpeercert(binary_form=True)
    finally:
        connection.close()
    return x509.load_der_x509_certificate(der).serial_number


def serials_by_worker(process: lab.GatewayProcess, context: ssl.SSLContext) -> dict[str, set[int]]:
    """Probe on new connections until both workers served one; map worker number to serials.

    The access log names the worker that served each probe's path. At most
    MAX_PROBES connections are made.
    """
    by_worker: dict[str, set[int]] = {}
    for _ in range(MAX_PROBES):
        number = next(PROBE_NUMBERS)
        serial = probe(process.port, context, number)
        # The access line is written when the response ends, so it may trail the client.
        wait_until(lambda: number in probed_by(process), 5)
        worker = probed_by(process).get(number)
        if worker is not None:
            by_worker.setdefault(worker, set()).add(serial)
        if len(by_worker) == 2:
            break
    return by_worker


def probed_by(process: lab.GatewayProcess) -> dict[int, str]:
    """Map each probe number in the access log to the worker that served it."""
    return {int(number): worker for worker, number in PROBE_LINE.findall(process.read_output())}


def log_lines(process: lab.GatewayProcess, text: str) -> list[str]:
    return [line for line in process.read_output().splitlines() if text in line]


@pytest.fixture
def operator_pair(tmp_path):
    """A CA of the test's own and a first leaf for localhost, as an operator brings them."""
    ca_cert, ca_key = new_ca(tmp_path / "pki")
    leaf, key = issue(ca_cert, ca_key, ["localhost", "127.0.0.1"])
    cert_path, key_path = write_pair(tmp_path / "pki", "gateway", [leaf], key)
    context = ssl.create_default_context(cafile=str(tmp_path / "pki" / "ca.crt"))
    return ca_cert, ca_key, cert_path, key_path, context


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


@pytest.mark.parametrize("upstream", ["running", "down"])
def test_workers_check_upstream_once(registry, local_ca, tmp_path, upstream):
    """With two workers, start-up logs the registry's /v2/ check once, as one process does."""
    url = registry.url if upstream == "running" else f"http://127.0.0.1:{lab.free_port()}"
    config = write_config(tmp_path, url, 2)
    process = lab.GatewayProcess(
        ["--config", str(config), "--certs-dir", str(local_ca), "--name", "localhost"]
    ).start()
    text = "is reachable" if upstream == "running" else "is not reachable"
    try:
        logged = wait_until(lambda: log_lines(process, text) != [], 10)
        # Leave the second worker time to log a duplicate line, if it were to check too.
        time.sleep(0.5)
    finally:
        process.stop()

    assert logged, process.output
    assert len(log_lines(process, f"Upstream {url}")) == 1, process.output


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



@pytest.mark.parametrize("trigger", ["SIGHUP", "file change"])
def test_reload_reaches_both_workers(registry, operator_pair, tmp_path, trigger):
    """After a new pair and a SIGHUP or a file change, both workers serve the new leaf."""
    ca_cert, ca_key, cert_path, key_path, context = operator_pair
    config = write_config(tmp_path, registry.url, 2)
    process = lab.GatewayProcess(
        ["--config", str(config), "--name", "localhost", "--cert", str(cert_path), "--key", str(key_path)]
    ).start()
    try:
        first = certs.load_certs(cert_path)[0]
        leaf, key = issue(ca_cert, ca_key, ["localhost", "127.0.0.1"])
        certs.write_key(key_path, key)
        certs.write_certs(cert_path, [leaf])
        if trigger == "SIGHUP":
            os.kill(process.process.pid, signal.SIGHUP)
            reason = "(SIGHUP)"
        else:
            reason = "(the certificate or key file changed)"

        def reloaded_workers() -> set[str]:
            lines = log_lines(process, f"Reloaded the certificate {reason}")
            return {re.search(r"\(worker (\d+)\)", line).group(1) for line in lines}

        both_reloaded = wait_until(lambda: reloaded_workers() == {"1", "2"})
        by_worker = serials_by_worker(process, context)
    finally:
        process.stop()

    assert both_reloaded, process.output
    assert set(by_worker) == {"1", "2"}
    assert by_worker["1"] == {leaf.serial_number}
    assert by_worker["2"] == {leaf.serial_number}
    assert first.serial_number != leaf.serial_number
    assert process.process.returncode == 0


def test_renewal_by_one_worker(registry, local_ca, tmp_path):
    """A leaf near its end is renewed by worker 1 alone, and worker 2 reloads the new one."""
    folder = tmp_path / "certs"
    shutil.copytree(local_ca, folder)
    cert_path = folder / certs.LEAF_CERT
    context = ssl.create_default_context(cafile=str(folder / certs.CA_CERT))
    config = write_config(tmp_path, registry.url, 2)
    process = lab.GatewayProcess(
        ["--config", str(config), "--certs-dir", str(folder), "--name", "localhost"]
    ).start()
    try:
        # Written after the start, because serve reissues such a leaf before the
        # workers exist.
        ca_chain, ca_key = certstore.load_ca(folder)
        start = certs.now() - datetime.timedelta(days=300)
        old, key = issue(ca_chain[0], ca_key, ["localhost", "127.0.0.1", "::1"], days=397, not_before=start)
        certs.write_key(folder / certs.LEAF_KEY, key)
        certs.write_certs(cert_path, [old])
        renewed = wait_until(lambda: bool(log_lines(process, "Renewed the certificate")))
        new = certs.load_certs(cert_path)[0]
        both_serve_new = wait_until(
            lambda: serials_by_worker(process, context) == {"1": {new.serial_number}, "2": {new.serial_number}}
        )
        renewal_lines = log_lines(process, "Renewed the certificate")
    finally:
        process.stop()

    assert renewed, process.output
    assert new.serial_number != old.serial_number
    assert not certs.leaf_needs_renewal(new)
    assert len(renewal_lines) == 1
    assert "(worker 1)" in renewal_lines[0]
    assert both_serve_new, process.output


@pytest.fixture
def metrics_workers(registry, local_ca, tmp_path):
    """Two workers with metrics_listen, their temporary files under `tmp_path/tmp`."""
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'listen = ["127.0.0.1:0"]\nworkers = 2\nmetrics_listen = "127.0.0.1:0"\n'
        f'[upstream]\nurl = "{registry.url}"\n'
    )
    (tmp_path / "tmp").mkdir()
    process = lab.GatewayProcess(
        ["--config", str(config), "--certs-dir", str(local_ca), "--name", "localhost"],
        env={**os.environ, "TMPDIR": str(tmp_path / "tmp")},
    ).start()
    found = wait_until(lambda: METRICS_LINE.search(process.read_output()) is not None, 10)
    assert found, process.read_output()
    yield process, METRICS_LINE.search(process.read_output()).group(1)
    process.stop()


def request_total(text: str) -> float:
    """Sum gateway_requests_total over every method and status in exposition `text`."""
    return sum(float(value) for value in re.findall(r"^gateway_requests_total\{.*\} (\S+)$", text, re.MULTILINE))


def send_requests(process: lab.GatewayProcess, client_ssl, count: int) -> set[str]:
    """Send `count` GET /v2/ on new connections; return the workers that served them."""
    for _ in range(count):
        status, _headers, _body = lab.http_get(f"https://localhost:{process.port}/v2/", context=client_ssl)
        assert status == 200
    wait_until(lambda: len(ACCESS_LINE.findall(process.read_output())) >= count, 5)
    return {worker for worker, _method in ACCESS_LINE.findall(process.read_output())}


def test_metrics_sum_over_workers(metrics_workers, client_ssl, tmp_path):
    """One /metrics listener reports the requests of both workers, and the expiry once."""
    process, url = metrics_workers
    count = 30
    workers = send_requests(process, client_ssl, count)
    # Each worker records a request when its response ends, so a scrape may
    # briefly trail the clients.
    settled = wait_until(lambda: request_total(scrape(url)) == count and sample(scrape(url), "gateway_requests_in_flight") == 0)
    text = scrape(url)
    folders = list((tmp_path / "tmp").glob("registry-gateway-metrics-*"))

    assert workers == {"1", "2"}
    assert settled, text
    assert request_total(text) == count
    assert sample(text, "gateway_requests_total", method="GET", status="200") == count
    assert sample(text, "gateway_upstream_response_seconds_count") == count
    assert len(re.findall(r"^gateway_certificate_expiry_seconds ", text, re.MULTILINE)) == 1
    assert sample(text, "gateway_certificate_expiry_seconds") > 86400
    assert len(re.findall(r"^gateway_open_connections ", text, re.MULTILINE)) == 1
    assert len(folders) == 1
    assert folders[0].stat().st_mode & 0o777 == 0o700
    process.stop()
    assert not folders[0].exists()


def test_metrics_keep_counts_of_dead_worker(metrics_workers, client_ssl, tmp_path):
    """Counts of a killed worker stay in the sum; its live gauges leave with it."""
    process, url = metrics_workers
    count = 20
    send_requests(process, client_ssl, count)
    assert wait_until(lambda: request_total(scrape(url)) == count)
    (folder,) = (tmp_path / "tmp").glob("registry-gateway-metrics-*")
    before = child_pids(process.process.pid)
    victim = before[1]
    assert (folder / f"gauge_livesum_{victim}.db").exists()

    os.kill(victim, signal.SIGKILL)
    replaced = wait_until(lambda: len(child_pids(process.process.pid)) == 2 and victim not in child_pids(process.process.pid))
    text = scrape(url)

    assert replaced
    assert request_total(text) == count
    assert (folder / f"counter_{victim}.db").exists()
    assert not (folder / f"gauge_livesum_{victim}.db").exists()
