"""Atomic writes and backups: modes, owners, symbolic links."""

from __future__ import annotations

import os

import pytest

from gateway.files import atomic_write, backup, move_to_backup


def test_atomic_write_keeps_mode(tmp_path):
    path = tmp_path / "daemon.json"
    path.write_text("{}")
    path.chmod(0o640)
    atomic_write(path, b'{"a": 1}')
    assert path.read_bytes() == b'{"a": 1}'
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    assert [p.name for p in tmp_path.iterdir()] == ["daemon.json"]


def test_atomic_write_private_mode_for_new_file(tmp_path):
    path = tmp_path / "k.key"
    atomic_write(path, b"secret", mode=0o600)
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_atomic_write_follows_symlink(tmp_path):
    """Writing through a link replaces the target and leaves the link a link."""
    target = tmp_path / "real.json"
    target.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    atomic_write(link, b'{"b": 2}')
    assert link.is_symlink()
    assert target.read_bytes() == b'{"b": 2}'


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
def test_backup_keeps_owner(tmp_path):
    path = tmp_path / "daemon.json"
    path.write_text("{}")
    os.chown(path, 1234, 5678)
    copy = backup(path)
    assert (copy.stat().st_uid, copy.stat().st_gid) == (1234, 5678)
    assert copy.read_bytes() == path.read_bytes()
    atomic_write(path, b'{"c": 3}')
    assert (path.stat().st_uid, path.stat().st_gid) == (1234, 5678)


def test_backup_names_never_collide(tmp_path):
    path = tmp_path / "a.crt"
    path.write_text("one")
    first = backup(path, stamp="20260101-000000")
    second = backup(path, stamp="20260101-000000")
    assert first != second
    moved = move_to_backup(path, stamp="20260101-000000")
    assert not path.exists()
    assert moved.read_text() == "one"
