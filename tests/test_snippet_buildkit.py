"""`registry-gateway snippet buildkit`: buildkitd.toml and the buildx create command."""

from __future__ import annotations

import json
import tomllib

import pytest

from tests.snippet_helpers import ca_file, run_snippet  # noqa: F401

HOST = "registry.example:5000"


def snippet(capsys, *extra):
    return run_snippet(capsys, "buildkit", HOST, *extra)


def test_new_file_http(capsys):
    status, out, err = snippet(capsys, "--insecure")
    assert status == 0
    assert out == '[registry."registry.example:5000"]\n  http = true\n'
    assert tomllib.loads(out) == {"registry": {HOST: {"http": True}}}
    assert (
        "docker buildx create --name registry-gateway --driver docker-container "
        "--buildkitd-config /etc/buildkit/buildkitd.toml --use" in err
    )
    assert "docker buildx rm registry-gateway" in err


def test_builder_note_names_old_option(capsys):
    """The note names --config, the option older buildx releases use for the file."""
    status, out, err = snippet(capsys, "--insecure")
    assert status == 0
    assert "(older buildx releases name the option --config)" in err


def test_new_file_ca(capsys, ca_file):
    status, out, err = snippet(capsys, "--ca", ca_file)
    assert status == 0
    assert tomllib.loads(out) == {"registry": {HOST: {"ca": [str(ca_file.resolve())]}}}


ORIGINAL = """\
debug = true  # while we test

[worker.oci]
  max-parallelism = 4

[registry."docker.io"]
  mirrors = ["mirror.example"]
"""


def test_merge_keeps_other_tables(capsys, tmp_path):
    path = tmp_path / "buildkitd.toml"
    path.write_text(ORIGINAL)
    status, out, err = snippet(capsys, "--insecure", "--merge", path)
    assert status == 0
    before, after = tomllib.loads(ORIGINAL), tomllib.loads(out)
    assert after["registry"].pop(HOST) == {"http": True}
    assert after == before
    assert out.startswith(ORIGINAL)
    assert f"--buildkitd-config {path}" in err


def test_merge_ca_appends_once(capsys, tmp_path, ca_file):
    path = tmp_path / "buildkitd.toml"
    path.write_text(f'[registry."{HOST}"]\n  ca = ["/etc/other.pem"]\n  http = true\n')
    status, out, err = snippet(capsys, "--ca", ca_file, "--merge", path, "--write")
    status, out, err = snippet(capsys, "--ca", ca_file, "--merge", path, "--write")
    assert tomllib.loads(path.read_text())["registry"][HOST]["ca"] == [
        "/etc/other.pem", str(ca_file.resolve())
    ]
    assert "http = true" in err
    assert len(list(tmp_path.glob("buildkitd.toml.bak-*"))) == 1


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"[registry\n", "line 1 column"),
        (b'registry = "x"\n', "line 1 column 1: 'registry' must be a table"),
        (b'[registry]\n"registry.example:5000" = 1\n', "line 2 column 1: 'registry.example:5000' must be a table"),
        (b'[registry."registry.example:5000"]\nca = "x"\n', "line 2 column 1: 'ca' must be a list"),
        (b"debug = \xc3\n", "line 1 column 9: the byte 0xc3 is not UTF-8"),
    ],
)
def test_bad_file_left_untouched(capsys, tmp_path, content, expected, ca_file):
    path = tmp_path / "buildkitd.toml"
    path.write_bytes(content)
    status, out, err = snippet(capsys, "--ca", ca_file, "--merge", path, "--write")
    assert status == 1
    assert f"Error: {path} {expected}" in err
    assert path.read_bytes() == content
    assert sorted(tmp_path.iterdir()) == sorted([path, ca_file])


def test_rootless_default_path(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    status, out, err = snippet(capsys, "--insecure", "--platform", "rootless", "--write", "--json")
    assert status == 0
    data = json.loads(out)
    written = tmp_path / ".config/buildkit/buildkitd.toml"
    assert data["files"][0]["path"] == str(written)
    assert data["files"][0]["written"] is True
    assert tomllib.loads(written.read_text()) == {"registry": {HOST: {"http": True}}}
    assert data["commands"][0].startswith("docker buildx create")
