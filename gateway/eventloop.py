"""The event loop that `serve` runs on: uvloop when installed, else asyncio's own.

uvloop implements the loop, its transports and TLS in Cython on libuv; the
gateway's hot path (TLS reads and writes, socket I/O) runs there instead of in
asyncio's pure-Python SSL protocol. The gateway needs nothing uvloop-specific,
so the standard loop is a complete fallback.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
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


# glibc's mallopt() parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Each TLS read of an upload returns a new bytes object of up to 256 KiB. glibc
# serves such a block with mmap() or by growing the heap, and gives the memory
# back to the kernel when it is freed, so every read paid for fresh zeroed pages:
# 45,000 page faults for a 512 MiB PUT. Kept in the heap, the same blocks are
# reused: 600 faults. The cost is at most TRIM_THRESHOLD of free memory kept.
MMAP_THRESHOLD = 1024 * 1024
TRIM_THRESHOLD = 8 * 1024 * 1024


def tune_allocator() -> bool:
    """Keep freed transfer buffers in the heap for reuse (glibc only); True if applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # mallopt returns 1 on success; musl's returns 0 and changes nothing.
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def run(main: Coroutine[Any, Any, int], choice: str) -> int:
    """Run `main` to completion on the event loop `choice` selects."""
    tune_allocator()
    factory = loop_factory(choice)
    log.debug("Event loop: %s", loop_name(factory))
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
