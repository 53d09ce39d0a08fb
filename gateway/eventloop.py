"""The event loop that `serve` runs on: uvloop when installed, else asyncio's own.

uvloop implements the loop, its transports and TLS in Cython on libuv; the
gateway's hot path (TLS reads and writes, socket I/O) runs there instead of in
asyncio's pure-Python SSL protocol. The gateway needs nothing uvloop-specific,
so the standard loop is a complete fallback.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.errors import ConfigError

log = logging.getLogger("gateway.server")


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """Return the factory for `choice`: auto, uvloop or asyncio."""
    if choice == "asyncio" or sys.platform == "win32":
        # The accept loop peeks with add_reader, which needs a selector loop on Windows.
        return asyncio.SelectorEventLoop if sys.platform == "win32" else asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                "event_loop = \"uvloop\" is set but uvloop is not installed: run "
                "'pip install uvloop', or set event_loop = \"auto\"."
            ) from None
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def loop_name(factory: Callable[[], asyncio.AbstractEventLoop]) -> str:
    return "uvloop" if factory.__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, int], choice: str) -> int:
    """Run `main` to completion on the event loop `choice` selects."""
    factory = loop_factory(choice)
    log.debug("Event loop: %s", loop_name(factory))
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
