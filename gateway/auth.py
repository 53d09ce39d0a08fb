"""Optional HTTP Basic authentication in front of a registry that has none.

Many LAN registries run without any authentication. With `[auth] htpasswd`, the
gateway checks every request against an htpasswd file of bcrypt hashes (the
format `htpasswd -B` writes and the distribution registry reads) before it
forwards anything. The Authorization header is not passed on, since the registry
behind the gateway does not know these users.

bcrypt is slow on purpose (about 50-100 ms at cost 10-12) and docker sends the
credentials with every request of a push, so a verified user:password pair is
remembered for CACHE_SECONDS under an HMAC with a per-process random key; the
cache never holds a password.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
import time
from pathlib import Path

import bcrypt

from gateway.errors import ConfigError
from gateway.logs import RateLimitedLog

log = logging.getLogger("gateway.auth")
failure_log = RateLimitedLog(log)

CACHE_SECONDS = 300.0
CACHE_MAX = 1024
REALM = "registry-gateway"
BCRYPT_PREFIXES = ("$2y$", "$2b$", "$2a$")


def load_htpasswd(path: Path) -> dict[str, bytes]:
    """Read `user:hash` lines; only bcrypt hashes are accepted."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"htpasswd file {str(path)!r} not found: create it with "
            f"'htpasswd -B -c {path} USER' or fix auth.htpasswd."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read htpasswd file {str(path)!r}: {exc}.") from None
    users: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            raise ConfigError(f"Invalid line {number} in {str(path)!r}: expected USER:HASH.")
        if not hashed.startswith(BCRYPT_PREFIXES):
            raise ConfigError(
                f"Line {number} of {str(path)!r} for user {user!r} is not a bcrypt hash: "
                f"recreate it with 'htpasswd -B {path} {user}'."
            )
        users[user] = hashed.encode()
    if not users:
        raise ConfigError(f"The htpasswd file {str(path)!r} lists no users.")
    return users


class BasicAuth:
    """Checks Authorization headers against an htpasswd file and counts failures."""

    def __init__(self, users: dict[str, bytes]):
        self._users = users
        self._key = os.urandom(32)
        self._verified: dict[bytes, float] = {}
        self.failures = 0

    @classmethod
    def from_file(cls, path: Path) -> "BasicAuth":
        return cls(load_htpasswd(path))

    def _remembered(self, fingerprint: bytes) -> bool:
        expires = self._verified.get(fingerprint)
        if expires is None:
            return False
        if expires < time.monotonic():
            del self._verified[fingerprint]
            return False
        return True

    def _remember(self, fingerprint: bytes) -> None:
        if len(self._verified) >= CACHE_MAX:
            self._verified.clear()
        self._verified[fingerprint] = time.monotonic() + CACHE_SECONDS

    def cached_user(self, header: str | None) -> str | None:
        """Return the user name when `header` contains credentials verified recently, else None.

        No bcrypt runs here, so the fast path can ask without leaving the event loop.
        """
        user, password = parse_basic(header)
        if user is None:
            return None
        fingerprint = hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        return user if self._remembered(fingerprint) else None

    async def check(self, header: str | None, peer: str | None) -> str | None:
        """Return the user name when `header` holds valid credentials, else None."""
        user, password = parse_basic(header)
        if user is None:
            return None
        fingerprint = hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        if self._remembered(fingerprint):
            return user
        hashed = self._users.get(user)
        if hashed is not None:
            # bcrypt takes tens of milliseconds of CPU; off the event loop it
            # does not stall every other transfer.
            loop = asyncio.get_running_loop()
            if await loop.run_in_executor(None, bcrypt.checkpw, password.encode(), hashed):
                self._remember(fingerprint)
                return user
        self.failures += 1
        failure_log.warning(
            "auth-failed",
            "Authentication failed for user %r from %s (%d failures since start)",
            user,
            peer or "-",
            self.failures,
        )
        return None


def parse_basic(header: str | None) -> tuple[str | None, str]:
    """Split a `Basic` Authorization header into user and password; (None, "") if absent or bad."""
    if not header:
        return None, ""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None, ""
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, ""
    user, sep, password = decoded.partition(":")
    if not sep:
        return None, ""
    return user, password
