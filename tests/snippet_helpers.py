"""Helpers shared by the snippet tests: run the command in-process, make a CA file.

`platform_root` points HOME and every client's default paths into a temporary
folder, and `real_client_files` records the real default files, so a test
can assert that neither was written.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import trustme

from gateway import cli, client_paths
from gateway.snippet_k3s import NODE_CERTS_DIR

# Captured at import, before any test changes HOME or the path table.
_REAL_PATHS = dict(client_paths.PATHS)
_REAL_HOME = os.path.expanduser("~")


def run_snippet(capsys, *args: str) -> tuple[int, str, str]:
    """Run `registry-gateway snippet ARGS` in-process; return status, stdout, stderr."""
    status = cli.main(["snippet", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def ca_file(tmp_path) -> Path:
    path = tmp_path / "ca.crt"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def platform_root(tmp_path, monkeypatch) -> Path:
    """Point HOME and every client's default paths under a folder, and return it.

    The folder is not created, so `not platform_root.exists()` shows that
    nothing was written to a platform's own paths.
    """
    root = tmp_path / "platform"
    monkeypatch.setenv("HOME", str(root / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    for key, paths in _REAL_PATHS.items():
        moved = client_paths.ClientPaths(
            _under(root, paths.config),
            _under(root, paths.certs_dir),
            paths.config_location
            if paths.config_location != paths.config
            else _under(root, paths.config),
        )
        monkeypatch.setitem(client_paths.PATHS, key, moved)
    return root


def _under(root: Path, path: str | None) -> str | None:
    # A ~ path follows HOME already. C:\ paths keep their backslashes, so the
    # Windows checks still see a path that is not native here.
    if path is None or path.startswith("~") or "\\" in path:
        return path
    return str(root / path.lstrip("/"))


def real_client_files(registry: str) -> dict[str, str | None]:
    """Return the SHA-256 of each real default file a snippet for `registry` may write.

    The value is None for a missing file. The paths are the linux and rootless
    ones of the unchanged table, with the real HOME, plus the k3s node CA path.
    """
    files = [Path(NODE_CERTS_DIR, registry, "ca.crt")]
    for (client, platform), paths in _REAL_PATHS.items():
        if platform not in ("linux", "rootless"):
            continue
        config = Path(_real_home(paths.config))
        files.append(config)
        if client == "podman":
            files.append(config.parent / "registries.conf.d" / "50-registry-gateway.conf")
        if paths.certs_dir is not None:
            folder = Path(_real_home(paths.certs_dir), registry)
            files += [folder / "ca.crt", folder / "hosts.toml"]
    return {str(path): digest(path) if path.is_file() else None for path in files}


def _real_home(path: str) -> str:
    return _REAL_HOME + path[1:] if path.startswith("~") else path
