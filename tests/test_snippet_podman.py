"""`registry-gateway snippet podman`: v2 drop-ins, v1 conversion, and skopeo reading them."""

from __future__ import annotations

import os
import subprocess
import tomllib

import pytest

from gateway import lab
from tests.snippet_helpers import (  # noqa: F401
    ca_file,
    digest,
    platform_root,
    real_client_files,
    run_snippet,
)

HOST = "registry.example:5000"
FAMOUS = "server gave HTTP response to HTTPS client"


def snippet(capsys, *extra, host=HOST):
    return run_snippet(capsys, "podman", host, *extra)


def registries(parsed: dict) -> dict:
    return {entry["location"]: entry for entry in parsed.get("registry", [])}


def test_new_drop_in(capsys):
    """Without --merge the output is a v2 drop-in with one insecure registry."""
    status, out, err = snippet(capsys, "--insecure")
    assert status == 0
    parsed = tomllib.loads(out)
    assert parsed == {"registry": [{"location": HOST, "insecure": True}]}
    assert "registries.conf.d/50-registry-gateway.conf" in err
    assert "Podman Machine" in err


def test_merge_into_v2_file(capsys, tmp_path):
    """A v2 file keeps its search list, other registries and comments."""
    path = tmp_path / "registries.conf"
    original = (
        'unqualified-search-registries = ["docker.io"]\n\n'
        "# the cache\n[[registry]]\n"
        'location = "cache.example"\nblocked = false\n'
    )
    path.write_text(original)
    status, out, err = snippet(capsys, "--insecure", "--merge", path)
    assert status == 0
    before, after = tomllib.loads(original), tomllib.loads(out)
    assert after["unqualified-search-registries"] == ["docker.io"]
    assert registries(after)["cache.example"] == registries(before)["cache.example"]
    assert registries(after)[HOST] == {"location": HOST, "insecure": True}
    assert "# the cache" in out
    assert "registries" not in after


def test_existing_entry_updated_once(capsys, tmp_path):
    path = tmp_path / "a.conf"
    path.write_text(f'[[registry]]\nlocation = "{HOST}"\ninsecure = false\nprefix = "{HOST}"\n')
    status, out, err = snippet(capsys, "--insecure", "--merge", path)
    parsed = tomllib.loads(out)
    assert parsed["registry"] == [{"location": HOST, "insecure": True, "prefix": HOST}]
    status, out2, err = snippet(capsys, "--insecure", "--merge", path, "--write")
    status, out3, err = snippet(capsys, "--insecure", "--merge", path, "--write")
    assert out2 == out3
    assert "already has insecure = true" in err


V1_MIXED = (
    'unqualified-search-registries = ["docker.io"]\n'
    "[registries.insecure]\n"
    "registries = ['hub.example:9080']\n"
)
V1_PURE = (
    "[registries.search]\nregistries = ['docker.io', 'quay.io']\n\n"
    "[registries.insecure]\nregistries = ['hub.example:9080']\n\n"
    "[registries.block]\nregistries = ['bad.example']\n"
)


@pytest.mark.parametrize(
    "text, error",
    [
        (V1_MIXED, "mixing sysregistry v1/v2 is not supported"),
        (V1_PURE, "registries.conf must be in v2 format but is in v1"),
    ],
)
def test_v1_file_converted(capsys, tmp_path, text, error):
    """v1 tables are converted whole to v2, never mixed with the new entry."""
    path = tmp_path / "registries.conf"
    path.write_text(text)
    status, out, err = snippet(capsys, "--insecure", "--merge", path)
    assert status == 0
    assert error in err
    parsed = tomllib.loads(out)
    assert "registries" not in parsed
    found = registries(parsed)
    assert found["hub.example:9080"]["insecure"] is True
    assert found[HOST]["insecure"] is True
    assert "docker.io" in parsed["unqualified-search-registries"]


def test_v1_conversion_details(capsys, tmp_path):
    path = tmp_path / "registries.conf"
    path.write_text(V1_PURE)
    status, out, err = snippet(capsys, "--insecure", "--merge", path)
    parsed = tomllib.loads(out)
    assert parsed["unqualified-search-registries"] == ["docker.io", "quay.io"]
    assert registries(parsed)["bad.example"] == {"location": "bad.example", "blocked": True}


def test_v1_write_needs_convert(capsys, tmp_path):
    """Writing a converted file needs --convert; without it the file stays as it was."""
    path = tmp_path / "registries.conf"
    path.write_text(V1_MIXED)
    before = digest(path)
    status, out, err = snippet(capsys, "--insecure", "--merge", path, "--write")
    assert status == 1
    assert "--convert" in err
    assert digest(path) == before
    status, out, err = snippet(capsys, "--insecure", "--merge", path, "--write", "--convert")
    assert status == 0
    assert "registries" not in tomllib.loads(path.read_text())
    assert [b.read_text() for b in tmp_path.glob("registries.conf.bak-*")] == [V1_MIXED]


def test_v1_main_file_warned_for_drop_in(capsys, tmp_path):
    """A drop-in next to a v1 main file prints the command that converts it."""
    (tmp_path / "registries.conf").write_text(V1_PURE)
    drop_in = tmp_path / "registries.conf.d" / "50-registry-gateway.conf"
    status, out, err = snippet(capsys, "--insecure", "--merge", drop_in, "--write")
    assert status == 0
    assert f"--merge {tmp_path / 'registries.conf'}" in err
    assert tomllib.loads(drop_in.read_text())["registry"][0]["location"] == HOST


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"[[registry]\n", "line 1 column"),
        (b'registry = "x"\n', "line 1 column 1: 'registry' must be an array of tables"),
        (b'a = 1\n[registry]\nlocation = "x"\n', "line 2 column 1: 'registry' must be an array"),
        (b"location = '\xfe'\n", "line 1 column 13: the byte 0xfe is not UTF-8"),
    ],
)
def test_bad_file_left_untouched(capsys, tmp_path, content, expected):
    path = tmp_path / "x.conf"
    path.write_bytes(content)
    status, out, err = snippet(capsys, "--insecure", "--merge", path, "--write")
    assert status == 1
    assert f"Error: {path} {expected}" in err
    assert path.read_bytes() == content
    assert list(tmp_path.iterdir()) == [path]


def test_folder_given_as_file(capsys, tmp_path):
    status, out, err = snippet(capsys, "--insecure", "--merge", tmp_path, "--write")
    assert status == 1
    assert "is a folder, not a file" in err


def test_ca_goes_to_containers_certs_d(capsys, tmp_path, monkeypatch, ca_file):
    monkeypatch.setenv("HOME", str(tmp_path))
    status, out, err = snippet(capsys, "--ca", ca_file, "--platform", "rootless", "--write")
    assert status == 0
    assert out == ca_file.read_text()
    written = tmp_path / ".config/containers/certs.d" / HOST / "ca.crt"
    assert written.read_bytes() == ca_file.read_bytes()


def _skopeo_inspect(registry, home) -> subprocess.CompletedProcess:
    # containers/image reads ~/.config/containers/registries.conf and its
    # registries.conf.d/ before the system files, for root too.
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run(
        ["skopeo", "inspect", "--raw", f"docker://{registry.address}/snippet/none:v1"],
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
    )


@pytest.mark.skipif(lab.shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_skopeo_reads_drop_in(capsys, tmp_path, registry, monkeypatch):
    """containers/image (skopeo) reads the rootless drop-in and then talks plain HTTP."""
    monkeypatch.setenv("HOME", str(tmp_path))
    before = _skopeo_inspect(registry, tmp_path)
    assert before.returncode != 0
    assert FAMOUS in before.stderr

    status, out, err = snippet(
        capsys, "--insecure", "--platform", "rootless", "--write", host=registry.address
    )
    assert status == 0
    drop_in = tmp_path / ".config/containers/registries.conf.d/50-registry-gateway.conf"
    assert drop_in.read_text() == out
    after = _skopeo_inspect(registry, tmp_path)
    assert FAMOUS not in after.stderr
    assert "manifest unknown" in after.stderr


@pytest.mark.skipif(lab.shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_skopeo_reads_converted_v1(capsys, tmp_path, registry, monkeypatch):
    """skopeo rejects the mixed file and accepts its conversion written in place."""
    monkeypatch.setenv("HOME", str(tmp_path))
    conf = tmp_path / ".config/containers/registries.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(V1_MIXED)
    before = _skopeo_inspect(registry, tmp_path)
    assert "mixing sysregistry v1/v2 is not supported" in before.stderr

    status, out, err = snippet(
        capsys, "--insecure", "--platform", "rootless", "--merge", conf, "--write", "--convert",
        host=registry.address,
    )
    assert status == 0
    assert conf.read_text() == out
    after = _skopeo_inspect(registry, tmp_path)
    assert "sysregistry" not in after.stderr
    assert FAMOUS not in after.stderr
    assert "manifest unknown" in after.stderr


def test_machine_write_rejected(capsys):
    """On macOS and Windows the files live in the Podman Machine VM, never on the host."""
    status, out, err = snippet(capsys, "--insecure", "--platform", "desktop", "--write")
    assert status == 1
    assert "podman machine ssh" in err


def test_ca_notes_follow_write(capsys, tmp_path, monkeypatch, ca_file):
    """Without --write the note names where to save the CA; with it, only the write is reported."""
    monkeypatch.setenv("HOME", str(tmp_path))
    written = tmp_path / ".config/containers/certs.d" / HOST / "ca.crt"
    status, out, err = snippet(capsys, "--ca", ca_file, "--platform", "rootless")
    assert status == 0
    assert f"Note: Save the CA above as {written}; podman reads it on the next pull" in err
    assert "Note: wrote" not in err
    assert not written.exists()

    status, out, err = snippet(capsys, "--ca", ca_file, "--platform", "rootless", "--write")
    assert status == 0
    assert "Save the CA" not in err
    assert f"Note: podman reads {written} on the next pull or push" in err
    assert f"Note: wrote {written}." in err


def test_ca_beside_merged_drop_in(capsys, tmp_path, platform_root, ca_file):
    """A drop-in in COPY/registries.conf.d takes its CA to COPY/certs.d, as podman lays them out."""
    before = real_client_files(HOST)
    drop_in = tmp_path / "copy" / "registries.conf.d" / "50-registry-gateway.conf"
    written = tmp_path / "copy" / "certs.d" / HOST / "ca.crt"
    status, out, err = snippet(capsys, "--ca", ca_file, "--merge", drop_in, "--write")
    assert status == 0
    assert written.read_bytes() == ca_file.read_bytes()
    assert not drop_in.parent.exists()
    assert not platform_root.exists()
    assert real_client_files(HOST) == before


@pytest.mark.parametrize("platform", ["linux", "desktop"])
def test_ca_merge_note_names_platform_path(capsys, tmp_path, platform_root, ca_file, platform):
    """The note names where the CA went and the only path podman reads it from."""
    copy = tmp_path / "copy" / "registries.conf"
    written = tmp_path / "copy" / "certs.d" / HOST / "ca.crt"
    platform_path = platform_root / "etc/containers/certs.d" / HOST / "ca.crt"
    machine = "the Podman Machine VM" if platform == "desktop" else "the machine"
    status, out, err = snippet(capsys, "--ca", ca_file, "--platform", platform, "--merge", copy)
    assert status == 0
    assert out == ca_file.read_text()
    assert f"Note: The CA goes to {written} because --merge names {copy}" in err
    assert f"podman reads it only from {platform_path}, so copy it there on {machine}" in err
    assert "Save the CA" not in err
    assert not written.exists()
