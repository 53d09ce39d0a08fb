"""A real dockerd for tests, in a private mount namespace (filled in by the dockerd fixture work)."""

from __future__ import annotations

import os
import shutil


def unavailable_reason() -> str | None:
    """Why this run cannot start a dockerd, or None when it can."""
    if os.geteuid() != 0:
        return "dockerd tests need root (unshare -m and bind mounts)"
    if shutil.which("dockerd") is None and not os.path.exists("/usr/sbin/dockerd"):
        return "dockerd is not installed: apt-get install docker.io"
    return None
