"""Safe file writes: atomic replacement, timestamped backups, private key modes."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path


def atomic_write(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half.

    The temporary file lives in the same folder (a rename is atomic only within one
    file system), is flushed with fsync before the rename, and gets `mode` before
    any byte is written, so a private key is never readable by others, even briefly.
    When `mode` is None, an existing file keeps its mode and owner; a new one gets 0644.
    A symbolic link is followed: its target is replaced and the link stays a link.
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)

    existing = None
    try:
        existing = path.stat()
    except FileNotFoundError:
        pass
    if mode is None:
        mode = (existing.st_mode & 0o7777) if existing else 0o644

    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, mode) if hasattr(os, "fchmod") else os.chmod(temp_name, mode)
        if existing is not None and hasattr(os, "fchown"):
            try:
                os.fchown(fd, existing.st_uid, existing.st_gid)
            except PermissionError:
                pass  # Only root may give a file away; keeping our own owner is the best left.
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: Path) -> None:
    # A rename is durable only once the folder entry is on disk; Windows has no
    # folder handles to fsync, so there the rename alone must do.
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup_path(path: Path, stamp: str | None = None) -> Path:
    """Return a free name `FILE.bak-YYYYmmdd-HHMMSS[-N]` beside `path`."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    candidate = path.with_name(f"{path.name}.bak-{stamp}")
    counter = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.bak-{stamp}-{counter}")
        counter += 1
    return candidate


def backup(path: Path, stamp: str | None = None) -> Path:
    """Copy `path` to a timestamped backup beside it, keeping mode, times and owner."""
    source = Path(path).resolve() if Path(path).is_symlink() else Path(path)
    target = backup_path(source, stamp)
    shutil.copy2(source, target)
    if hasattr(os, "chown"):
        info = source.stat()
        try:
            os.chown(target, info.st_uid, info.st_gid)
        except PermissionError:
            pass  # Only root may give a file away; the backup stays the caller's.
    return target


def move_to_backup(path: Path, stamp: str | None = None) -> Path:
    """Rename `path` to a timestamped backup beside it, so a new file can take its place."""
    target = backup_path(path, stamp)
    os.replace(path, target)
    return target
