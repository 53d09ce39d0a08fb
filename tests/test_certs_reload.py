"""The gateway's certificate at run time: hot reload, renewal, start-up log, mTLS.

A reload must leave open connections alone: a large upload started before the
swap completes, while a handshake made after it gets the new certificate.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import os
import signal
import ssl
import time

import aiohttp
import pytest
from cryptography import x509
from yarl import URL

from gateway import certs, lab, tlsreload
from gateway.config import Config, Listener
from gateway.lab import _random_bytes
from gateway.server import Gateway
from tests.certs_support import issue, new_ca, run_cli, skopeo_push, trust_dir, write_pair

UPLOAD_SIZE = 48 * 1024 * 1024
CHUNK = 256 * 1024
WAIT = 15.0


@pytest.fixture
def pki(tmp_path):
    """A local CA and a first leaf for localhost/127.0.0.1 in `tmp_path/serve`."""
    ca_cert, ca_key = new_ca(tmp_path / "certs")
    leaf, key = issue(ca_cert, ca_key, ["localhost", "127.0.0.1"])
    cert_path, key_path = write_pair(tmp_path / "certs", "gateway", [leaf], key)
    return ca_cert, ca_key, cert_path, key_path, leaf


def replace_pair(ca_cert, ca_key, cert_path, key_path, names=("localhost", "127.0.0.1")):
    """Write a fresh leaf over the served files, key first, as an operator's tool would."""
    leaf, key = issue(ca_cert, ca_key, list(names))
    certs.write_key(key_path, key)
    certs.write_certs(cert_path, [leaf])
    return leaf


def served_serial(port: int) -> int:
    """Make a new TLS handshake to 127.0.0.1:PORT and return the served leaf's serial."""
    pem = ssl.get_server_certificate(("127.0.0.1", port), timeout=10)
    return x509.load_pem_x509_certificate(pem.encode()).serial_number


def wait_until(condition, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


async def wait_async(condition, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


async def test_reload_during_upload(registry, pki, tmp_path):
    """A 48 MiB upload spans a reload and completes; a new handshake gets the new leaf."""
    ca_cert, ca_key, cert_path, key_path, first = pki
    reloader = tlsreload.CertificateReloader(cert_path, key_path, interval=0.2)
    config = Config(upstream=URL(registry.url), names=["localhost"], listen=[Listener("127.0.0.1", 0)])
    gateway = Gateway(config, reloader.context)
    await gateway.start()
    reloader.attach(gateway)
    port = gateway.bound[0].port
    client_ssl = ssl.create_default_context(cafile=str(tmp_path / "certs" / "ca.crt"))
    data = _random_bytes(UPLOAD_SIZE, seed=7)
    swapped = {}

    async def body():
        for index, start in enumerate(range(0, len(data), CHUNK)):
            if index == 20:
                swapped["leaf"] = replace_pair(ca_cert, ca_key, cert_path, key_path)
                swapped["reloaded"] = await wait_async(lambda: reloader.reloads == 1)
                swapped["serial"] = await asyncio.to_thread(served_serial, port)
            yield data[start : start + CHUNK]
            await asyncio.sleep(0)

    base = f"https://localhost:{port}"
    try:
        connector = aiohttp.TCPConnector(ssl=client_ssl)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as client:
            async with client.post(f"{base}/v2/certs/reload/blobs/uploads/") as response:
                assert response.status == 202
                location = response.headers["Location"]
            async with client.patch(URL(location, encoded=True), data=body()) as response:
                patch_status = response.status
                location = response.headers["Location"]
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            separator = "&" if "?" in location else "?"
            async with client.put(URL(f"{location}{separator}digest={digest}", encoded=True)) as response:
                put_status = response.status
            async with client.head(f"{base}/v2/certs/reload/blobs/{digest}") as response:
                head_status = response.status
                length = response.headers.get("Content-Length")
    finally:
        await reloader.stop()
        await gateway.stop()

    assert swapped["reloaded"] is True
    assert swapped["serial"] == swapped["leaf"].serial_number
    assert swapped["serial"] != first.serial_number
    assert patch_status == 202
    assert put_status == 201
    assert head_status == 200
    assert length == str(UPLOAD_SIZE)


async def test_broken_pair_rejected(pki, caplog, tmp_path):
    """A key that does not match is rejected with an error log; the old leaf stays served."""
    ca_cert, ca_key, cert_path, key_path, first = pki
    reloader = tlsreload.CertificateReloader(cert_path, key_path, interval=60)
    config = Config(names=["localhost"], listen=[Listener("127.0.0.1", 0)])
    gateway = Gateway(config, reloader.context)
    await gateway.start()
    reloader.attach(gateway)
    port = gateway.bound[0].port
    try:
        _other, other_key = issue(ca_cert, ca_key, ["localhost"])
        certs.write_key(key_path, other_key)
        with caplog.at_level(logging.INFO, logger="gateway.certs"):
            accepted = reloader.reload("test")
        serial_after_broken = await asyncio.to_thread(served_serial, port)
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]

        second = replace_pair(ca_cert, ca_key, cert_path, key_path)
        reloader.check()
        serial_after_fix = await asyncio.to_thread(served_serial, port)
    finally:
        await reloader.stop()
        await gateway.stop()
    assert accepted is False
    assert serial_after_broken == first.serial_number
    assert len(errors) == 1
    assert "Rejected the new certificate pair" in errors[0].getMessage()
    assert "does not match" in errors[0].getMessage()
    assert "BEGIN" not in caplog.text
    assert serial_after_fix == second.serial_number


def test_expired_pair_rejected(pki):
    """An expired new leaf is rejected and the reloader keeps the old one."""
    ca_cert, ca_key, cert_path, key_path, first = pki
    reloader = tlsreload.CertificateReloader(cert_path, key_path)
    start = certs.now() - datetime.timedelta(days=30)
    leaf, key = issue(ca_cert, ca_key, ["localhost"], days=1, not_before=start)
    certs.write_key(key_path, key)
    certs.write_certs(cert_path, [leaf])
    assert reloader.reload("test") is False
    assert reloader.leaf.serial_number == first.serial_number


def test_poll_retries_only_on_change(pki, caplog):
    """A rejected pair is not retried on every poll, only after the files change again."""
    ca_cert, ca_key, cert_path, key_path, _ = pki
    reloader = tlsreload.CertificateReloader(cert_path, key_path)
    cert_path.write_text("not a certificate\n")
    with caplog.at_level(logging.ERROR, logger="gateway.certs"):
        reloader.check()
        reloader.check()
        reloader.check()
    assert len(caplog.records) == 1
    replace_pair(ca_cert, ca_key, cert_path, key_path)
    reloader.check()
    assert reloader.reloads == 1


def test_renewal_when_owned(pki, tmp_path, caplog):
    """With the gateway's own CA, a leaf past two thirds of its life is renewed and reloaded."""
    ca_cert, ca_key, cert_path, key_path, _ = pki
    start = certs.now() - datetime.timedelta(days=300)
    old, key = issue(ca_cert, ca_key, ["localhost", "127.0.0.1"], days=397, not_before=start)
    certs.write_key(key_path, key)
    certs.write_certs(cert_path, [old])
    reloader = tlsreload.CertificateReloader(
        cert_path, key_path, names=["localhost"], renew_dir=tmp_path / "certs"
    )
    with caplog.at_level(logging.INFO, logger="gateway.certs"):
        reloader.check()
    new = certs.load_certs(cert_path)[0]
    assert reloader.reloads == 1
    assert new.serial_number != old.serial_number
    assert (new.not_valid_after_utc - new.not_valid_before_utc).days == 397
    assert certs.san_names(new) == (["localhost"], ["127.0.0.1"])
    assert os.stat(key_path).st_mode & 0o777 == 0o600
    assert "Renewed the certificate" in caplog.text


def test_no_renewal_of_user_leaf(pki):
    """An operator's own leaf (no renew folder) is never rewritten by the gateway."""
    ca_cert, ca_key, cert_path, key_path, _ = pki
    start = certs.now() - datetime.timedelta(days=300)
    old, key = issue(ca_cert, ca_key, ["localhost"], days=397, not_before=start)
    certs.write_key(key_path, key)
    certs.write_certs(cert_path, [old])
    reloader = tlsreload.CertificateReloader(cert_path, key_path)
    reloader.check()
    assert reloader.reloads == 0
    assert certs.load_certs(cert_path)[0].serial_number == old.serial_number


def test_renewal_not_due(pki, tmp_path):
    """A leaf with over a third of its life left is kept."""
    _, _, cert_path, key_path, first = pki
    reloader = tlsreload.CertificateReloader(cert_path, key_path, renew_dir=tmp_path / "certs")
    reloader.check()
    assert reloader.reloads == 0
    assert certs.load_certs(cert_path)[0].serial_number == first.serial_number


@pytest.fixture
def served(registry, pki):
    """`python -m gateway serve --cert --key` with the pair from `pki`."""
    _, _, cert_path, key_path, _ = pki
    process = lab.GatewayProcess(
        ["--listen", "127.0.0.1:0", "--upstream", registry.url, "--name", "localhost",
         "--cert", str(cert_path), "--key", str(key_path)]
    ).start()
    yield process
    process.stop()


def test_sighup_reload(served, pki):
    """SIGHUP makes the running gateway serve the new pair to new handshakes."""
    ca_cert, ca_key, cert_path, key_path, first = pki
    assert served_serial(served.port) == first.serial_number
    second = replace_pair(ca_cert, ca_key, cert_path, key_path)
    os.kill(served.process.pid, signal.SIGHUP)
    assert wait_until(lambda: "Reloaded the certificate (SIGHUP)" in served.read_output())
    assert served_serial(served.port) == second.serial_number


def test_file_change_reload(served, pki):
    """Without any signal, a changed pair is picked up within a few poll intervals."""
    ca_cert, ca_key, cert_path, key_path, _ = pki
    second = replace_pair(ca_cert, ca_key, cert_path, key_path)
    assert wait_until(lambda: served_serial(served.port) == second.serial_number)
    assert "Reloaded the certificate (the certificate or key file changed)" in served.read_output()


def test_startup_log(served):
    """At start-up the gateway logs the served SANs and the expiry date."""
    output = served.read_output()
    assert "Serving the certificate" in output
    assert "SANs DNS:localhost, IP:127.0.0.1; valid until" in output
    assert "(in 396 days)" in output


def test_mtls_client_certificate(registry, tmp_path, capsys):
    """With tls.client_ca, skopeo needs client.cert/client.key; the start-up note names Docker's gap."""
    folder = tmp_path / "certs"
    new_ca(folder)
    run_cli(capsys, "certs", "issue", "--dir", str(folder), "localhost", "127.0.0.1")
    with_client = trust_dir(tmp_path / "with-client", folder / "ca.crt")
    run_cli(capsys, "certs", "issue-client", "--dir", str(folder), "--out", str(with_client), "builder.lan")
    without_client = trust_dir(tmp_path / "without-client", folder / "ca.crt")
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'listen = ["127.0.0.1:0"]\nnames = ["localhost"]\n[upstream]\nurl = "{registry.url}"\n'
        f'[tls]\ncert = "{folder / "gateway.crt"}"\nkey = "{folder / "gateway.key"}"\n'
        f'client_ca = "{folder / "ca.crt"}"\n'
    )
    layout = tmp_path / "oci"
    lab.build_oci_layout(layout, layer_sizes=(256,))
    process = lab.GatewayProcess(["--config", str(config)]).start()
    try:
        denied = skopeo_push(layout, process.addresses[0], without_client, host="localhost")
        allowed = skopeo_push(layout, process.addresses[0], with_client, host="localhost")
    finally:
        process.stop()
    assert "Docker sends no client certificate to a registry it treats as insecure" in process.output
    assert "any 127.0.0.0/8 address" in process.output
    assert denied.returncode == 1
    assert lab.skopeo_error(denied).endswith("unauthorized: authentication required")
    assert allowed.returncode == 0, allowed.stderr
