"""`python -m bench.fastpath_driver N`: N manifest GETs through the fast path's Python, no sockets.

A ClientConnection and an UpstreamConnection get in-memory transports, and
each round feeds one request head in and one registry response back, so only
the gateway's own code runs: no TLS, no event loop I/O, no system calls. Run
under callgrind, the difference between N and 0 requests is the instruction
count per request, the same from run to run whatever else the machine does:

    for n in 0 5000; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python -m bench.fastpath_driver $n 2>&1 | grep Collected; done
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

from yarl import URL

from gateway import fastpath
from gateway.config import Config
from gateway.proxy import Proxy

REQUEST = (
    b"GET /v2/library/app/manifests/v1 HTTP/1.1\r\nHost: localhost:5443\r\nUser-Agent: docker/28.2.2\r\n"
    b"Accept: application/vnd.docker.distribution.manifest.v2+json\r\nAccept-Encoding: gzip\r\n\r\n"
)
DIGEST = b"sha256:" + b"a" * 64
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 529\r\n"
    b"Content-Type: application/vnd.docker.distribution.manifest.v2+json\r\n"
    b"Docker-Content-Digest: " + DIGEST + b"\r\nDocker-Distribution-Api-Version: registry/2.0\r\n"
    b'Etag: "' + DIGEST + b'"\r\nX-Content-Type-Options: nosniff\r\n'
    b"Date: Fri, 04 Dec 2026 01:00:00 GMT\r\n\r\n" + b"x" * 529
)


class MemoryTransport:
    """The transport calls the fast path makes, doing nothing."""

    def write(self, data) -> None:
        pass

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 5443)}.get(name, default)

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


async def drive(count: int) -> float:
    proxy = Proxy(Config(upstream=URL("http://127.0.0.1:5000"), names=["localhost"]))
    fast = fastpath.FastPath(proxy, None)
    fast.loop = asyncio.get_running_loop()
    upstream = fastpath.UpstreamConnection(fast.default_pool)
    upstream.connection_made(MemoryTransport())
    fast.default_pool.idle.append(upstream)
    client = fastpath.ClientConnection(fast)
    client.connection_made(MemoryTransport())
    started = time.perf_counter()
    for _ in range(count):
        client.data_received(REQUEST)
        if client.upstream is None:
            raise RuntimeError("the request did not reach the pooled upstream connection")
        client.upstream.data_received(RESPONSE)
        if client.state != fastpath.HEAD:
            raise RuntimeError("the response did not finish the request")
    return time.perf_counter() - started


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    # Access lines are measured in the real runs; here they would go to stderr.
    logging.getLogger("gateway").setLevel(logging.WARNING)
    elapsed = asyncio.run(drive(count))
    if count:
        print(f"{count} requests, {elapsed / count * 1e6:.1f} us of Python each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
