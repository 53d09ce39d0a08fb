"""Logging helpers: rate limiting for warnings that a client or a dead upstream can repeat."""

from __future__ import annotations

import asyncio
import atexit
import logging
import re
import time


class RateLimitedLog:
    """Log at most `burst` records per `period` seconds for each key, then count the rest.

    The first record after a quiet period says how many were suppressed, so a
    flood of identical failures costs a few lines and still leaves its count.
    """

    def __init__(self, logger: logging.Logger, burst: int = 5, period: float = 60.0):
        self.logger = logger
        self.burst = burst
        self.period = period
        self._windows: dict[str, tuple[float, int, int]] = {}

    def warning(self, key: str, message: str, *args) -> bool:
        """Log `message` unless `key` used its burst in the current period; True if logged."""
        return self.log(logging.WARNING, key, message, *args)

    def info(self, key: str, message: str, *args) -> bool:
        """Like `warning`, at info."""
        return self.log(logging.INFO, key, message, *args)

    def log(self, level: int, key: str, message: str, *args) -> bool:
        """Log `message` at `level` unless `key` used its burst in the current period."""
        now = time.monotonic()
        start, logged, suppressed = self._windows.get(key, (now, 0, 0))
        if now - start >= self.period:
            start, logged = now, 0
        if logged >= self.burst:
            self._windows[key] = (start, logged, suppressed + 1)
            return False
        if suppressed:
            message += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        self.logger.log(level, message, *args)
        self._windows[key] = (start, logged + 1, 0)
        if len(self._windows) > 1000:
            # Keys are a fixed set in practice; this bounds memory if one ever is not.
            self._windows.clear()
        return True


# The format cli.setup_logging and the workers give the gateway's handler; the
# part between the logger name and the colon (" (worker 2)") is kept as is.
_STANDARD_FORMAT = re.compile(r"%\(asctime\)s %\(levelname\)s %\(name\)s([^%]*): %\(message\)s\Z")
BATCH_LINES = 256
# A line waits at most this long; the first line after a quiet spell goes out at once.
FLUSH_INTERVAL = 0.1


class AccessLog:
    """The access log: one line per request, cheap enough for the hot path.

    Through `logging`, a line costs a LogRecord, a Formatter pass, a lock and a
    write() with a flush: measured here, about 40 microseconds, a third of the
    fast path's CPU per small request. So when the gateway's logging has the
    standard setup, this class writes the same text itself. That setup is one
    plain StreamHandler on the `gateway` logger, the standard format and no
    filters. Lines then go out together, at most FLUSH_INTERVAL after they were
    logged, as with nginx's `access_log ... buffer= flush=`; the first line after
    a quiet spell is written at once. With any other setup (a test's capture
    handler, a file handler, filters), every line goes through `logging`.
    """

    def __init__(self, logger: logging.Logger):
        self.logger = logger
        self._pending: list[str] = []
        self._handler: logging.StreamHandler | None = None
        self._formatter: logging.Formatter | None = None
        self._tail = ""
        self._second = -1
        self._stamp = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_flush = 0.0
        atexit.register(self.flush)

    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def _direct_handler(self) -> logging.StreamHandler | None:
        parent = self.logger.parent
        handlers = parent.handlers if parent is not None else []
        handler = self._handler
        if (
            handler is not None
            and len(handlers) == 1
            and handlers[0] is handler
            and handler.formatter is self._formatter
        ):
            return handler
        self._handler = None
        if (
            parent is None
            or len(handlers) != 1
            or type(handlers[0]) is not logging.StreamHandler
            or self.logger.handlers
            or self.logger.filters
            or parent.filters
            or handlers[0].filters
            or not self.logger.propagate
            or handlers[0].level > logging.INFO
        ):
            return None
        formatter = handlers[0].formatter
        match = _STANDARD_FORMAT.match(getattr(formatter, "_fmt", "") or "")
        if (
            match is None
            or formatter.datefmt is not None
            or formatter.converter is not time.localtime
            or formatter.default_msec_format != "%s,%03d"
        ):
            return None
        self._handler = handlers[0]
        self._formatter = formatter
        self._tail = match.group(1)
        return self._handler

    def write(self, message: str) -> None:
        """Log one access line (already formatted) at info."""
        handler = self._direct_handler()
        if handler is None:
            self.flush()
            self.logger.info("%s", message)
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        pending = self._pending
        pending.append(
            f"{self._stamp},{int((now - second) * 1000):03d} INFO {self.logger.name}{self._tail}: {message}\n"
        )
        if len(pending) == 1:
            loop = self._loop
            if loop is None or not loop.is_running():
                # Looked up only when the loop changes: each lookup costs a getpid() call.
                loop = self._loop = asyncio._get_running_loop()
            if loop is None:
                self.flush()
                return
            delay = self._last_flush + FLUSH_INTERVAL - loop.time()
            if delay > 0:
                loop.call_later(delay, self.flush)
            else:
                loop.call_soon(self.flush)
        elif len(pending) >= BATCH_LINES:
            self.flush()

    def flush(self) -> None:
        """Write the pending lines now."""
        if not self._pending or self._handler is None:
            self._pending.clear()
            return
        text = "".join(self._pending)
        self._pending.clear()
        if self._loop is not None:
            self._last_flush = self._loop.time()
        handler = self._handler
        handler.acquire()
        try:
            handler.stream.write(text)
            handler.flush()
        except (OSError, ValueError):
            # logging also carries on when its stream fails (a closed pipe, a full disk).
            pass
        finally:
            handler.release()
