"""Logging helpers: rate limiting for warnings that a client or a dead upstream can repeat."""

from __future__ import annotations

import logging
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
        self.logger.warning(message, *args)
        self._windows[key] = (start, logged + 1, 0)
        if len(self._windows) > 1000:
            # Keys are a fixed set in practice; this bounds memory if one ever is not.
            self._windows.clear()
        return True
