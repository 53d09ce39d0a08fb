"""Helpers shared by the snippet tests: run the command in-process, make a CA file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import trustme

from gateway import cli


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
