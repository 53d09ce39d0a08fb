"""A real containerd and ctr against the same servers: ctr's last line equals the prediction.

ctr resolves and dials registries in its own process, so loopback servers and
`.invalid` names are enough; containerd only has to accept requests on its socket.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from gateway import certs, lab, probe
from tests import probe_support as support
from tests.probe_support import make_ca, make_leaf, prediction, run_probe

IMAGE = "rig/test:v1"
START_TIMEOUT = 20.0


@pytest.fixture(scope="module")
def ctr(tmp_path_factory):
    """A containerd with its own root, state and socket; yields a function that runs ctr."""
    if os.geteuid() != 0:
        pytest.skip("containerd needs root")
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.skip("containerd is not installed: apt-get install containerd")
    folder = Path(tmp_path_factory.mktemp("containerd"))
    socket_path = folder / "containerd.sock"
    (folder / "config.toml").write_text(
        "version = 2\n"
        f'root = "{folder / "root"}"\n'
        f'state = "{folder / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket_path}"\n'
        f'[ttrpc]\n  address = "{folder / "containerd.sock.ttrpc"}"\n'
        f'[debug]\n  address = "{folder / "debug.sock"}"\n'
    )
    log = open(folder / "containerd.log", "wb")
    process = subprocess.Popen(
        ["containerd", "-c", str(folder / "config.toml")],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ctr", "--address", str(socket_path), *args],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    try:
        deadline = time.monotonic() + START_TIMEOUT
        while run("version").returncode != 0:
            assert process.poll() is None, (folder / "containerd.log").read_text()
            assert time.monotonic() < deadline, "containerd did not answer in time"
            time.sleep(0.1)
        yield run
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def ctr_pull_error(ctr, reference: str) -> str:
    result = ctr("images", "pull", f"{reference}/{IMAGE}")
    assert result.returncode == 1, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return lines[-1]


def tls_registry(tmp_path, names=("127.0.0.1", "localhost")) -> lab.RegistryProcess:
    leaf = make_leaf(make_ca("Probe ctr Root"), list(names))
    cert_path, key_path = support.write_pair(tmp_path / "server", [leaf.cert], leaf.key)
    registry = lab.RegistryProcess(tls_cert=cert_path, tls_key=key_path)
    registry.workdir = tmp_path / "registry"
    registry.workdir.mkdir()
    return registry.start()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_ctr_plain_http_to_tls_port(ctr, tmp_path, host):
    """ctr speaks plain HTTP to loopback names, and the registry's Go TLS server returns 400."""
    registry = tls_registry(tmp_path)
    reference = f"{host}:{registry.port}"
    try:
        report = run_probe(reference, client="containerd")
        real = ctr_pull_error(ctr, reference)
    finally:
        registry.stop()
    assert report.verdict == probe.UNKNOWN_AUTHORITY, (
        "ctr never checks the certificate here"
    )
    assert prediction(report, "containerd").message == real
    assert real.endswith("400 Bad Request")


def test_ctr_refused(ctr):
    reference = f"127.0.0.1:{lab.free_port()}"
    report = run_probe(reference, client="containerd")
    assert prediction(report, "containerd").message == ctr_pull_error(ctr, reference)


def test_ctr_unresolvable(ctr):
    report = run_probe("registry.invalid:5231", client="containerd")
    assert prediction(report, "containerd").message == ctr_pull_error(
        ctr, "registry.invalid:5231"
    )


def test_ctr_http_server(ctr, tmp_path):
    """A web server that is not a registry: ctr reports the image as not found."""
    server = support.http_server(tmp_path)
    reference = f"127.0.0.1:{server.port}"
    try:
        report = run_probe(reference, client="containerd")
        real = ctr_pull_error(ctr, reference)
    finally:
        support.stop(server)
    assert prediction(report, "containerd").message == real


def test_ctr_gateway_on_loopback(ctr, gateway_process, local_ca):
    """The gateway on 127.0.0.1: ctr's plain HTTP reaches a TLS listener."""
    reference = f"127.0.0.1:{gateway_process.port}"
    report = run_probe(reference, ca=[local_ca / certs.CA_CERT], client="containerd")
    gateway_process._out.close()
    real = ctr_pull_error(ctr, reference)
    predicted = prediction(report, "containerd")
    assert predicted.message == real, report.evidence.get("plain_http_reply")
    assert not predicted.unverified
