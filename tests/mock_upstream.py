"""A hand-written aiohttp upstream, for what the real registry cannot be made to do.

It records every request it receives (method, raw path, headers in order,
body), and each test sets `reply` to shape the response.
"""

from __future__ import annotations

from aiohttp import web


class Upstream:
    """An aiohttp app whose replies each test sets; it keeps what it received."""

    def __init__(self):
        self.received: list[dict] = []
        self.reply = self.default_reply
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def default_reply(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=200, body=b"{}", content_type="application/json")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read() if request.body_exists else b""
        self.received.append(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": list(request.headers.items()),
                "body": body,
            }
        )
        return await self.reply(request)

    async def start(self) -> None:
        server = web.Server(self.handle)
        self.runner = web.ServerRunner(server)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def header(self, name: str, index: int = -1) -> list[str]:
        return [v for k, v in self.received[index]["headers"] if k.lower() == name.lower()]
