"""Shared fixtures: the real distribution registry, the gateway, trust material.

Every server binds to a loopback address on a port the OS picks.
"""

from __future__ import annotations

import contextlib
import shutil
import ssl
from pathlib import Path

import aiohttp
import pytest

from gateway import certs, lab
from gateway.config import Config, Listener
from gateway.server import Gateway, make_ssl_context
from gateway.status import TrustInfo
from tests.mock_upstream import Upstream


def pytest_collection_modifyitems(config, items):
    """Skip dockerd tests with the reason when this run cannot start a dockerd."""
    from tests import dockerd as dockerd_support

    reason = dockerd_support.unavailable_reason()
    if reason is None:
        return
    marker = pytest.mark.skip(reason=reason)
    for item in items:
        if "dockerd" in item.keywords:
            item.add_marker(marker)


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """One plain-HTTP distribution registry on 127.0.0.1 for the whole session."""
    process = lab.RegistryProcess(host="127.0.0.1")
    process.workdir = tmp_path_factory.mktemp("registry")
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def local_ca(tmp_path_factory) -> Path:
    """A certs folder holding a local CA and a leaf for the loopback names."""
    folder = tmp_path_factory.mktemp("certs")
    certs.ensure_serving_pair(folder, ["localhost", "127.0.0.1", "::1"])
    return folder


@pytest.fixture(scope="session")
def client_ssl(local_ca) -> ssl.SSLContext:
    """A client context that trusts only the local CA."""
    return ssl.create_default_context(cafile=str(local_ca / certs.CA_CERT))


@pytest.fixture(scope="session")
def cert_dir(local_ca, tmp_path_factory) -> Path:
    """A folder holding only ca.crt, as skopeo's --cert-dir expects."""
    folder = tmp_path_factory.mktemp("trust")
    shutil.copy(local_ca / certs.CA_CERT, folder / "ca.crt")
    return folder


@pytest.fixture(scope="session")
def gateway_process(registry, local_ca):
    """`python -m gateway serve` in front of the session registry."""
    process = lab.GatewayProcess(
        [
            "--listen", "127.0.0.1:0",
            "--upstream", registry.url,
            "--certs-dir", str(local_ca),
            "--name", "localhost",
        ]
    ).start()
    yield process
    process.stop()


@pytest.fixture
async def upstream():
    """A hand-written upstream on 127.0.0.1 that records what reaches it."""
    server = Upstream()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client(client_ssl):
    """An aiohttp client that trusts only the local CA and never decompresses."""
    connector = aiohttp.TCPConnector(ssl=client_ssl)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        yield session


@contextlib.asynccontextmanager
async def running_gateway(config: Config, local_ca: Path):
    """An in-process gateway for async tests; `config.listen` defaults to a free port."""
    if config.listen == Config().listen:
        config.listen = [Listener("127.0.0.1", 0)]
    context = make_ssl_context(local_ca / certs.LEAF_CERT, local_ca / certs.LEAF_KEY)
    trust = TrustInfo(leaf_path=local_ca / certs.LEAF_CERT, ca_path=local_ca / certs.CA_CERT)
    gateway = Gateway(config, context, trust)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


# The real dockerd fixture, shared by every test module that asks for `dockerd`.
from tests.dockerd import dockerd  # noqa: E402,F401
