"""The fast path's lingering close after the registry responds early to an upload.

The upstream here responds as soon as it has the request head, before it reads
any body byte, as a registry does when the head alone decides (a missing token,
an unknown upload). The client keeps sending its body and reads only
afterwards. If the gateway closed at once, the body bytes that followed would
make its kernel send a reset, which can erase the response before the client
reads it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time

import pytest

from gateway.fastpath import LINGERING_BYTES, LINGERING_TIME
from gateway.metrics import Metrics
from tests.conftest import running_gateway
from tests.test_fastpath import MiB, RawUpstream, gateway_config, open_tls, settle
from tests.test_hostile import parse_response, tls_context

BODY = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
EARLY_RESPONSES = {
    "401": (401, 0.0),
    # The body trails the head, so the gateway must stop relaying at the head.
    "416-slow-body": (416, 0.5),
}
PIECE = 64 * 1024


def early_answer(status: int, body_delay: float):
    """A `serve` that responds once it has the request head, then counts the body bytes it gets."""

    async def serve(upstream, reader, writer):
        upstream.requests.append(await reader.readuntil(b"\r\n\r\n"))
        upstream.body_read = 0
        writer.write(
            b"HTTP/1.1 %d Error\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (status, len(BODY))
        )
        await writer.drain()
        await asyncio.sleep(body_delay)
        writer.write(BODY)
        await writer.drain()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            piece = await reader.read(65536)
            if not piece:
                return
            upstream.body_read += len(piece)

    return serve


def upload_head(length: int) -> bytes:
    return (
        b"PATCH /v2/a/blobs/uploads/u HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % length
    )


async def send_paced(writer, total: int, piece: int, pause: float, time_limit: float) -> tuple[int, bool]:
    """Send up to `total` bytes in `piece`-sized writes; return the bytes sent and whether sending failed."""
    sent = 0
    deadline = time.monotonic() + time_limit
    while sent < total and time.monotonic() < deadline:
        size = min(piece, total - sent)
        try:
            writer.write(b"u" * size)
            await asyncio.wait_for(writer.drain(), 5)
        except (ConnectionError, TimeoutError):
            return sent, True
        sent += size
        await asyncio.sleep(pause)
    return sent, False


def access_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gateway.access"]


def upload_then_read(port: int, context: ssl.SSLContext, size: int) -> dict:
    """Send a whole upload over a blocking socket, then read the response, as http.client does.

    Nothing reads the socket while the body goes out, so the response waits in
    the kernel's receive buffer.
    """
    result = {"sent": 0, "send_error": None, "raw": b""}
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw_socket:
        with context.wrap_socket(raw_socket, server_hostname="localhost") as sock:
            started = time.monotonic()
            try:
                sock.sendall(upload_head(size))
                while result["sent"] < size:
                    sock.sendall(b"u" * PIECE)
                    result["sent"] += PIECE
                    time.sleep(0.01)
            except OSError as exc:
                result["send_error"] = exc
            result["sending_time"] = time.monotonic() - started
            try:
                while True:
                    piece = sock.recv(65536)
                    if not piece:
                        break
                    result["raw"] += piece
            except OSError as exc:
                result["read_error"] = exc
            result["closed_after"] = time.monotonic() - started
    return result


@pytest.mark.parametrize("name", sorted(EARLY_RESPONSES))
async def test_early_response_read_after_upload(local_ca, caplog, name):
    """A client that reads only after sending 4 MiB still gets the registry's whole early response."""
    caplog.set_level(logging.INFO, logger="gateway.access")
    status, body_delay = EARLY_RESPONSES[name]
    upstream = await RawUpstream(early_answer(status, body_delay)).start()
    size = 4 * MiB
    try:
        async with running_gateway(gateway_config(upstream.url, True), local_ca) as gateway:
            metrics = gateway.proxy.metrics = Metrics()
            port = gateway.bound[0].port
            result = await asyncio.to_thread(upload_then_read, port, tls_context(local_ca), size)
            await settle(lambda: not gateway.fast.connections)
            in_flight = gateway.proxy.in_flight
            counted = metrics.requests.labels("PATCH", str(status))._value.get()
    finally:
        await upstream.stop()

    response_status, headers, response_body = parse_response(result["raw"])
    assert response_status == status
    assert headers["connection"] == "close"
    assert response_body == BODY
    assert "read_error" not in result
    assert upstream.body_read < size // 4
    assert result["send_error"] is None
    assert result["sent"] == size
    # The response waited unread for over 0.5 s.
    assert result["sending_time"] > 0.5
    assert result["closed_after"] - result["sending_time"] < 2
    assert in_flight == 0
    assert counted == 1
    lines = access_lines(caplog)
    assert len(lines) == 1
    assert f'"PATCH /v2/a/blobs/uploads/u" {status} ' in lines[0]


async def read_all(reader) -> tuple[bytes, float]:
    """Read until the connection ends, however it ends; return the bytes and when it ended."""
    data = b""
    try:
        while True:
            piece = await reader.read(65536)
            if not piece:
                break
            data += piece
    except ConnectionError:
        pass
    return data, time.monotonic()


@pytest.mark.parametrize(
    "piece, pause",
    [(16 * 1024, 0.01), (256 * 1024, 0.0)],
    ids=["slow-time-bound", "fast-byte-bound"],
)
async def test_endless_upload_cut_after_bound(local_ca, caplog, piece, pause):
    """A client that never stops sending after the early response is cut after the time or byte bound."""
    caplog.set_level(logging.INFO, logger="gateway.access")
    upstream = await RawUpstream(early_answer(401, 0.0)).start()
    size = 1024 * MiB
    try:
        config = gateway_config(upstream.url, True)
        async with running_gateway(config, local_ca) as gateway:
            reader, writer = await open_tls(gateway.bound[0].port, local_ca)
            writer.write(upload_head(size))
            started = time.monotonic()
            reading = asyncio.create_task(read_all(reader))
            sent, send_failed = await send_paced(writer, 4 * LINGERING_BYTES, piece, pause, 20)
            sending_time = time.monotonic() - started
            raw, ended_at = await asyncio.wait_for(reading, 5)
            writer.transport.abort()
            await settle(lambda: not gateway.fast.connections)
            sweep_interval = gateway.fast.sweep_interval
    finally:
        await upstream.stop()

    assert send_failed
    response_status, headers, response_body = parse_response(raw)
    assert response_status == 401
    assert response_body == BODY
    lingered = ended_at - started
    if pause:
        assert lingered >= LINGERING_TIME - 0.5
        assert sending_time < LINGERING_TIME + sweep_interval + 2
    else:
        # What the kernel's socket buffers and the TLS layer hold adds a few MiB.
        assert sent >= LINGERING_BYTES
        assert sent < LINGERING_BYTES + 16 * MiB
    assert upstream.body_read < 2 * MiB
    assert len(access_lines(caplog)) == 1
