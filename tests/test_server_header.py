"""No response names the Python or aiohttp version in its Server field."""

from __future__ import annotations

import pytest
from yarl import URL

from gateway.config import Config
from tests.conftest import running_gateway


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "aiohttp"])
async def test_server_field(registry, local_ca, client, fast_path):
    """The registry sends no Server field; the fast path adds none, aiohttp only the product name."""
    config = Config(upstream=URL(registry.url), names=["localhost"], fast_path=fast_path)
    async with running_gateway(config, local_ca) as gateway:
        base = f"https://localhost:{gateway.bound[0].port}"
        async with client.get(f"{base}/v2/") as relayed:
            relayed_server = relayed.headers.getall("Server", [])
        async with client.get(f"{base}/_gateway/") as own:
            own_server = own.headers.getall("Server", [])
    assert relayed_server == ([] if fast_path else ["registry-gateway"])
    assert own_server == ["registry-gateway"]
    assert not any("Python" in value or "aiohttp" in value for value in relayed_server + own_server)
