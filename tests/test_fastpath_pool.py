"""The fast path's upstream pool: a kept-alive connection the registry drops as a request goes out."""

from __future__ import annotations

import asyncio

import pytest
from yarl import URL

from gateway.config import Config
from tests.conftest import running_gateway

WAIT = 20


class DroppingUpstream:
    """A raw HTTP/1.1 upstream on 127.0.0.1 that closes its first connection on the second request.

    It reads whole request heads only (the requests here have no body) and
    records (connection number, request line) for each.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[int, str]] = []
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader, writer) -> None:
        self.connections += 1
        number = self.connections
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.seen.append((number, head.split(b"\r\n", 1)[0].decode()))
                if number == 1 and len(self.seen) == 2:
                    writer.close()  # dropped after the request arrived, before any response byte
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def stop(self) -> None:
        for writer in self.writers:
            writer.close()
        self.server.close()
        await self.server.wait_closed()


async def read_response(reader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return int(head.split(b" ")[1]), await reader.readexactly(length)


@pytest.mark.parametrize(("method", "replayed"), [("GET", True), ("DELETE", False)])
async def test_request_on_dropped_connection(local_ca, client_ssl, method, replayed):
    """A GET is sent again on a new connection; a DELETE is not replayed and gets a 502."""
    upstream = DroppingUpstream()
    url = await upstream.start()
    try:
        async with running_gateway(Config(upstream=URL(url), names=["localhost"]), local_ca) as gateway:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", gateway.bound[0].port, ssl=client_ssl, server_hostname="localhost"
            )
            writer.write(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert await read_response(reader) == (200, b"{}")
            writer.write(f"{method} /v2/x/manifests/v1 HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            status, body = await read_response(reader)
            writer.close()
    finally:
        await upstream.stop()
    request_line = f"{method} /v2/x/manifests/v1 HTTP/1.1"
    if replayed:
        assert (status, body) == (200, b"{}")
        assert upstream.seen == [(1, "GET /v2/ HTTP/1.1"), (1, request_line), (2, request_line)]
    else:
        assert status == 502
        assert b"closed the connection before it sent a response" in body
        assert upstream.seen == [(1, "GET /v2/ HTTP/1.1"), (1, request_line)]
