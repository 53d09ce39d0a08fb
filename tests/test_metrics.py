"""`/metrics`: Prometheus counters of the gateway in front of the real registry."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import pytest

from gateway import certs, certstore, lab
from gateway.config import load, validate
from gateway.errors import ConfigError
from gateway.metrics import Metrics
from prometheus_client import generate_latest

METRICS_LINE = re.compile(r"Serving metrics on (http://\S+/metrics)")


def sample(text: str, name: str, **labels: str) -> float | None:
    """Return the value of metric `name` with exactly `labels` in exposition `text`."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if wanted else "") + r" (\S+)"
    match = re.search("^" + pattern + "$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def start_gateway(tmp_path: Path, upstream: str, local_ca: Path) -> tuple[lab.GatewayProcess, str]:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'listen = ["127.0.0.1:0"]\nmetrics_listen = "127.0.0.1:0"\nupstream = "{upstream}"\n'
    )
    process = lab.GatewayProcess(
        ["--config", str(config), "--certs-dir", str(local_ca), "--name", "localhost"]
    ).start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        match = METRICS_LINE.search(process.read_output())
        if match:
            return process, match.group(1)
        time.sleep(0.05)
    process.stop()
    raise AssertionError("the gateway logged no metrics address:\n" + process.read_output())


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def test_record_counts_method_and_status():
    metrics = Metrics()
    metrics.record("GET", 200, 0, 100)
    metrics.record("GET", 200, 0, 50)
    metrics.record("BREW", 405, 10, 0)

    text = generate_latest(metrics.registry).decode()

    assert sample(text, "gateway_requests_total", method="GET", status="200") == 2
    assert sample(text, "gateway_requests_total", method="other", status="405") == 1
    assert sample(text, "gateway_response_body_bytes_total") == 150
    assert sample(text, "gateway_request_body_bytes_total") == 10


def test_certificate_expiry_follows_file(local_ca, tmp_path):
    """The expiry gauge reads the certificate file again after it is replaced."""
    ca_chain, ca_key = certstore.load_ca(local_ca)
    cert_path = tmp_path / "gateway.crt"
    first = certs.issue_leaf(ca_chain[0], ca_key, certs.generate_key(), ["localhost"], days=30)
    certs.write_certs(cert_path, [first])
    metrics = Metrics()
    metrics.watch_certificate(cert_path)
    before = sample(generate_latest(metrics.registry).decode(), "gateway_certificate_expiry_seconds")

    second = certs.issue_leaf(ca_chain[0], ca_key, certs.generate_key(), ["localhost"], days=90)
    certs.write_certs(cert_path, [second])
    after = sample(generate_latest(metrics.registry).decode(), "gateway_certificate_expiry_seconds")
    cert_path.write_text("not a certificate\n")
    broken = sample(generate_latest(metrics.registry).decode(), "gateway_certificate_expiry_seconds")

    assert 29 * 86400 < before <= 30 * 86400
    assert 89 * 86400 < after <= 90 * 86400
    assert after - 60 < broken <= after


def test_metrics_listen_defaults_off(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('metrics_listen = ""\n')
    assert load(path).metrics_listen is None


def test_metrics_listen_with_workers(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('metrics_listen = "127.0.0.1:9464"\nworkers = 2\n')
    config = load(path)
    validate(config)
    assert config.workers == 2
    assert str(config.metrics_listen) == "127.0.0.1:9464"


def test_metrics_listen_rejects_listen_address(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('listen = ["127.0.0.1:5443"]\nmetrics_listen = "127.0.0.1:5443"\n')
    config = load(path)
    with pytest.raises(ConfigError) as raised:
        validate(config)
    assert "own port" in str(raised.value)


@pytest.mark.parametrize("value", ["9464", "127.0.0.1:99999", "[::1"])
def test_metrics_listen_error_names_key(tmp_path, value):
    """A malformed metrics_listen is reported under its own key, not as `listen`."""
    path = tmp_path / "gateway.toml"
    path.write_text(f'metrics_listen = "{value}"\n')
    with pytest.raises(ConfigError) as raised:
        load(path)
    assert f"metrics_listen address '{value}'" in str(raised.value)


def test_metrics_count_a_push(registry, local_ca, cert_dir, tmp_path):
    """A skopeo push through the gateway shows up in requests, bytes and gauges."""
    process, url = start_gateway(tmp_path, registry.url, local_ca)
    try:
        layout = tmp_path / "image"
        lab.build_oci_layout(layout, "v1", (1024, 200_000), seed=61)
        pushed = lab.skopeo(
            "copy", "--dest-cert-dir", str(cert_dir), f"oci:{layout}:v1",
            f"docker://localhost:{process.port}/metrics/push:v1",
        )
        assert pushed.returncode == 0, pushed.stderr
        text = scrape(url)
    finally:
        process.stop()

    assert sample(text, "gateway_requests_total", method="PUT", status="201") >= 3
    assert sample(text, "gateway_request_body_bytes_total") >= 200_000
    assert sample(text, "gateway_upstream_response_seconds_count") >= 3
    assert sample(text, "gateway_requests_in_flight") == 0
    assert sample(text, "gateway_open_connections") is not None
    assert sample(text, "gateway_certificate_expiry_seconds") > 86400


def test_metrics_count_upstream_errors(local_ca, client_ssl, tmp_path):
    """A request to an unreachable upstream counts as a 502 and an upstream error."""
    dead = f"http://127.0.0.1:{lab.free_port()}"
    process, url = start_gateway(tmp_path, dead, local_ca)
    try:
        status, _headers, _body = lab.http_get(
            f"https://localhost:{process.port}/v2/", context=client_ssl
        )
        text = scrape(url)
    finally:
        process.stop()

    assert status == 502
    assert sample(text, "gateway_requests_total", method="GET", status="502") == 1
    assert sample(text, "gateway_upstream_errors_total", kind="unreachable") == 1


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "aiohttp"])
async def test_own_response_bytes_counted(local_ca, client, fast_path, caplog):
    """The gateway's own bodies count at log level warning too, and a HEAD's count is 0."""
    import logging

    from yarl import URL

    from gateway.config import Config
    from tests.conftest import running_gateway

    caplog.set_level(logging.WARNING, logger="gateway.access")
    # Nothing listens on port 9 of 127.0.0.1, so every request gets the gateway's own 502.
    config = Config(upstream=URL("http://127.0.0.1:9"), names=["localhost"], fast_path=fast_path)
    async with running_gateway(config, local_ca) as gateway:
        metrics = gateway.proxy.metrics = Metrics()
        base = f"https://localhost:{gateway.bound[0].port}"
        async with client.get(f"{base}/_gateway/ca.crt") as response:
            ca_size = len(await response.read())
        async with client.head(f"{base}/v2/x/manifests/v1") as response:
            assert response.status == 502
            assert int(response.headers["Content-Length"]) > 0
            assert await response.read() == b""
    text = generate_latest(metrics.registry).decode()
    assert ca_size > 0
    assert sample(text, "gateway_response_body_bytes_total") == ca_size
    assert sample(text, "gateway_requests_total", method="HEAD", status="502") == 1
