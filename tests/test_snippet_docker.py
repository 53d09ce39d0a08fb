"""`registry-gateway snippet docker`: daemon.json merges, entry checks, certs.d CA."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from gateway import cli, client_paths

from tests.snippet_helpers import ca_file, digest, run_snippet  # noqa: F401

KEY = "insecure-registries"


def merge(capsys, path, host="registry.example:5000", *extra):
    return run_snippet(capsys, "docker", host, "--insecure", "--merge", path, *extra)


def test_missing_file_gets_new_list(capsys, tmp_path):
    """A client with no daemon.json (operator case: push from another host fails)."""
    status, out, err = merge(capsys, tmp_path / "daemon.json", "192.0.2.10:5000")
    assert status == 0
    assert json.loads(out) == {KEY: ["192.0.2.10:5000"]}
    assert "sudo systemctl reload docker" in err
    assert "docker info" in err
    assert not (tmp_path / "daemon.json").exists()


def test_misspelt_key_replaced_in_place(capsys, tmp_path):
    """The singular key is renamed where it stood, never kept beside the right one."""
    path = tmp_path / "daemon.json"
    path.write_text(
        '{"insecure-registry": ["registry.example:8080"], "tlsverify": true, "debug": false}'
    )
    status, out, err = merge(capsys, path, "registry.example:8080")
    assert status == 0
    assert out == (
        '{"insecure-registries": ["registry.example:8080"], "tlsverify": true, '
        '"debug": false}\n'
    )
    assert "'insecure-registry' is not a dockerd setting" in err
    assert "dockerd --validate" in err
    assert "_comment" not in out


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"insecureRegistries": ["a.example:1"]}', {KEY: ["a.example:1", "registry.example:5000"]}),
        (
            '{"insecure-registries": ["a.example:1"], "insecure_registries": ["b.example:2"]}',
            {KEY: ["a.example:1", "b.example:2", "registry.example:5000"]},
        ),
    ],
)
def test_near_miss_keys_merged(capsys, tmp_path, text, expected):
    """Other spellings of the key are folded into the one dockerd reads."""
    path = tmp_path / "daemon.json"
    path.write_text(text)
    status, out, err = merge(capsys, path)
    assert status == 0
    assert json.loads(out) == expected
    assert "is not a dockerd setting" in err


@pytest.mark.parametrize(
    "text, position",
    [
        ('{"log-driver":"json-file"}\n{ "insecure-registries":"192.0.2.10:5000"] }\n', "line 2 column 1"),
        ('{"insecure-registries": ["192.0.2.10:5000"],}', "line 1 column 45"),
        ('{"debug": true,\n "x": [1, 2,\n}', "line 3 column 1"),
        ("{'debug': true}", "line 1 column 2"),
    ],
)
def test_broken_json_left_untouched(capsys, tmp_path, text, position):
    """A file that is not JSON is never written, and the error names line and column."""
    path = tmp_path / "daemon.json"
    path.write_text(text)
    before = digest(path)
    status, out, err = merge(capsys, path, "192.0.2.10:5000", "--write")
    assert status == 1
    assert out == ""
    assert f"Error: {path} {position}:" in err
    assert "--repair" in err
    assert digest(path) == before
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("extra", [(), ("--repair",)])
def test_comment_named_not_repaired(capsys, tmp_path, extra):
    """dockerd rejects comments, and --repair cannot remove them, so it is not offered."""
    path = tmp_path / "daemon.json"
    path.write_text('{\n  // our mirror\n  "debug": true\n}\n')
    before = digest(path)
    status, out, err = merge(capsys, path, "192.0.2.10:5000", "--write", *extra)
    assert status == 1
    assert out == ""
    assert f"Error: {path} line 2 column 3:" in err
    assert "dockerd does not accept comments" in err
    assert "remove the comment '// our mirror' on line 2" in err
    assert "--repair" not in err
    assert digest(path) == before
    assert list(tmp_path.iterdir()) == [path]


def test_every_comment_line_named(capsys, tmp_path):
    """All comment lines are named, and comment marks inside strings are not comments."""
    path = tmp_path / "daemon.json"
    path.write_text(
        '{\n  "data-root": "/srv//docker#1", /* moved */\n'
        '  "debug": true # on\n}\n'
    )
    status, out, err = merge(capsys, path, "192.0.2.10:5000")
    assert status == 1
    assert f"Error: {path} line 2 column 34:" in err
    assert "remove the comment '/* moved */' on line 2" in err
    assert ", and the comment on line 3," in err
    assert "--repair" not in err


def test_repair_appended_object(capsys, tmp_path):
    """An object appended with >> is repaired only on request, and shown first."""
    path = tmp_path / "daemon.json"
    path.write_text('{"log-driver":"json-file"}\n{ "insecure-registries":"192.0.2.10:5000"] }\n')
    before = digest(path)
    status, out, err = merge(capsys, path, "192.0.2.10:5000", "--repair")
    assert status == 0
    assert out == '{"log-driver": "json-file", "insecure-registries": ["192.0.2.10:5000"]}\n'
    assert "Dropped the text from line 2 column 1" in err
    assert digest(path) == before


def test_repair_trailing_comma(capsys, tmp_path):
    """A trailing comma is removed by --repair and the entry merged once."""
    path = tmp_path / "daemon.json"
    path.write_text('{"insecure-registries": ["192.0.2.10:5000"],}')
    status, out, err = merge(capsys, path, "192.0.2.10:5000", "--repair")
    assert status == 0
    assert json.loads(out) == {KEY: ["192.0.2.10:5000"]}
    assert "Removed a comma" in err


def test_repair_writes_with_backup(capsys, tmp_path):
    """--repair --write replaces the broken file and keeps it as the backup."""
    path = tmp_path / "daemon.json"
    original = b'{"debug": true,}\n'
    path.write_bytes(original)
    status, out, err = merge(capsys, path, "192.0.2.10:5000", "--repair", "--write")
    assert status == 0
    assert json.loads(path.read_text()) == {"debug": True, KEY: ["192.0.2.10:5000"]}
    backups = list(tmp_path.glob("daemon.json.bak-*"))
    assert len(backups) == 1
    assert backups[0].read_bytes() == original


def test_string_value_becomes_list(capsys, tmp_path):
    """A string where dockerd needs a list is turned into a list."""
    path = tmp_path / "daemon.json"
    path.write_text('{"insecure-registries": "192.0.2.10:5000"}')
    status, out, err = merge(capsys, path, "192.0.2.10:5000")
    assert status == 0
    assert out == '{"insecure-registries": ["192.0.2.10:5000"]}\n'
    assert "was a string" in err


@pytest.mark.parametrize(
    "requested, entry",
    [
        ("http://registry.example:5000/", "registry.example:5000"),
        ("HTTPS://Registry.Example", "registry.example"),
        ("registry.example:5000/v2/", "registry.example:5000"),
        ("  registry.example:5000 ", "registry.example:5000"),
        ("[2001:db8::1]:5000", "[2001:db8::1]:5000"),
        ("192.0.2.0/24", "192.0.2.0/24"),
    ],
)
def test_entry_normalised(capsys, tmp_path, requested, entry):
    """Scheme, path, spaces and case are removed, each with a note."""
    status, out, err = merge(capsys, tmp_path / "daemon.json", requested)
    assert status == 0
    assert json.loads(out) == {KEY: [entry]}
    assert "://" not in out
    if requested != entry:
        assert "Note:" in err


def test_path_removal_is_noted(capsys, tmp_path):
    status, out, err = merge(capsys, tmp_path / "d.json", "registry.example:5000/v2/")
    assert "Removed the path /v2/" in err


def test_portless_entry_warns_about_image(capsys, tmp_path):
    """An entry without the image's port does not match it, which is warned."""
    status, out, err = merge(
        capsys, tmp_path / "d.json", "HTTPS://Registry.Example", "--image",
        "registry.example:5000/app:1",
    )
    assert status == 0
    assert "Warning: The image 'registry.example:5000/app:1' is on 'registry.example:5000'" in err


def test_portless_entry_warns_without_image(capsys, tmp_path):
    status, out, err = merge(capsys, tmp_path / "d.json", "registry.example")
    assert "has no port" in err


@pytest.mark.parametrize(
    "requested, reason",
    [
        ("*.example:5000", "wildcard"),
        ("ftp://registry.example", "scheme ftp://"),
        ("registry.example:99999", "not a number from 1 to 65535"),
        ("registry.example:port", "not a number from 1 to 65535"),
        ("bad host:5000", "neither host[:port] nor a CIDR"),
        ("[::1:5000", "neither host[:port] nor a CIDR"),
        ("", "no host name"),
    ],
)
def test_invalid_entry_rejected(capsys, tmp_path, requested, reason):
    """An entry that is neither host[:port] nor a CIDR exits 1 and writes nothing."""
    path = tmp_path / "daemon.json"
    path.write_text("{}\n")
    status, out, err = merge(capsys, path, requested, "--write")
    assert status == 1
    assert reason in err
    assert err.startswith("Error: ")
    assert path.read_text() == "{}\n"


def test_desktop_names_settings_page(capsys):
    """Docker Desktop gets the JSON for its settings page, not a Linux path."""
    status, out, err = run_snippet(
        capsys, "docker", "registry.example:5000", "--insecure", "--platform", "desktop"
    )
    assert status == 0
    assert json.loads(out) == {KEY: ["registry.example:5000"]}
    assert "Settings > Docker Engine" in err
    assert "Apply & Restart" in err
    assert "/etc/docker" not in err


def test_desktop_write_needs_file(capsys):
    status, out, err = run_snippet(
        capsys, "docker", "registry.example:5000", "--insecure", "--platform", "desktop",
        "--write",
    )
    assert status == 1
    assert "--merge FILE" in err


@pytest.mark.parametrize(
    "platform, command",
    [("windows", "Restart-Service docker"), ("rootless", "systemctl --user restart docker")],
)
def test_reload_step_per_platform(capsys, platform, command):
    status, out, err = run_snippet(
        capsys, "docker", "registry.example:5000", "--insecure", "--platform", platform
    )
    assert status == 0
    assert command in err


LAYOUTS = [
    # Four-space indentation, a nested object and an inline list elsewhere.
    (
        '{\n    "debug": true,\n    "log-opts": {"max-size": "10m"},\n'
        '    "dns": ["192.0.2.53"]\n}\n',
        '{\n    "debug": true,\n    "log-opts": {"max-size": "10m"},\n'
        '    "dns": ["192.0.2.53"],\n    "insecure-registries": ["registry.example:5000"]\n}\n',
    ),
    # Tabs, and an existing list written one entry per line.
    (
        '{\n\t"insecure-registries": [\n\t\t"a.example:1"\n\t],\n\t"debug": false\n}',
        '{\n\t"insecure-registries": [\n\t\t"a.example:1",\n\t\t"registry.example:5000"\n'
        '\t],\n\t"debug": false\n}',
    ),
    # An empty object in a file of its own.
    ("{}\n", '{\n  "insecure-registries": ["registry.example:5000"]\n}\n'),
    # A BOM, which Windows editors write, is kept.
    ('\ufeff{"debug": true}', '\ufeff{"debug": true, "insecure-registries": ["registry.example:5000"]}'),
]


@pytest.mark.parametrize("before, after", LAYOUTS)
def test_merge_keeps_layout(capsys, tmp_path, before, after):
    """Only the list changes: other keys keep their order and indentation."""
    path = tmp_path / "daemon.json"
    path.write_text(before, encoding="utf-8")
    status, out, err = merge(capsys, path)
    assert status == 0
    assert out == after if after.endswith("\n") else out == after + "\n"


@pytest.mark.parametrize(
    "before",
    [
        {"debug": True, "storage-driver": "overlay2", "log-opts": {"max-size": "10m"}},
        {"insecure-registries": ["a.example:1", "10.0.0.0/8"], "registry-mirrors": []},
        {"features": {"buildkit": True}, "labels": ["é=ü"], "data-root": "/srv/docker"},
        {"default-address-pools": [{"base": "172.30.0.0/16", "size": 24}], "mtu": 1400},
    ],
)
@pytest.mark.parametrize("indent", [None, 2, "\t"])
def test_merge_keeps_other_keys(capsys, tmp_path, before, indent):
    """Every other key and value survives, in the same order."""
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps(before, indent=indent, ensure_ascii=False), encoding="utf-8")
    status, out, err = merge(capsys, path)
    assert status == 0
    after = json.loads(out)
    assert [key for key in after if key != KEY] == [key for key in before if key != KEY]
    for key, value in before.items():
        if key != KEY:
            assert after[key] == value
    assert after[KEY] == before.get(KEY, []) + ["registry.example:5000"]


def test_merge_is_idempotent(capsys, tmp_path):
    """A second merge adds no duplicate and changes nothing."""
    path = tmp_path / "daemon.json"
    path.write_text('{"debug": true}\n')
    merge(capsys, path, "registry.example:5000", "--write")
    first = path.read_text()
    status, out, err = merge(capsys, path, "registry.example:5000", "--write")
    assert status == 0
    assert out == first
    assert json.loads(out)[KEY] == ["registry.example:5000"]
    assert "already has this content" in err
    assert len(list(tmp_path.glob("daemon.json.bak-*"))) == 1


def test_existing_entries_normalised(capsys, tmp_path):
    """Entries dockerd would reject or strip are cleaned, and duplicates dropped."""
    path = tmp_path / "daemon.json"
    path.write_text('{"insecure-registries": ["http://a.example:1", "a.example:1", "b.example:2/"]}')
    status, out, err = merge(capsys, path, "b.example:2")
    assert status == 0
    assert json.loads(out) == {KEY: ["a.example:1", "b.example:2"]}
    assert "duplicate entry 'a.example:1'" in err


def test_invalid_existing_entry_warned(capsys, tmp_path):
    path = tmp_path / "daemon.json"
    path.write_text('{"insecure-registries": ["*.test:5240"]}')
    status, out, err = merge(capsys, path)
    assert status == 0
    assert "'*.test:5240' is neither host[:port] nor a CIDR" in err


@pytest.mark.parametrize("host", ["127.0.0.1:5000", "localhost:5000", "[::1]:5000"])
def test_loopback_needs_nothing(capsys, tmp_path, host):
    """dockerd always treats loopback as insecure, so the file stays as it is."""
    path = tmp_path / "daemon.json"
    path.write_text('{"debug": true}')
    status, out, err = merge(capsys, path, host, "--write")
    assert status == 0
    assert out == '{"debug": true}\n'
    assert "nothing to add" in err
    assert path.read_text() == '{"debug": true}'
    assert list(tmp_path.glob("*.bak-*")) == []


def test_cidr_entry_covers_address(capsys, tmp_path):
    path = tmp_path / "daemon.json"
    path.write_text('{"insecure-registries": ["192.0.2.0/24"]}')
    status, out, err = merge(capsys, path, "192.0.2.10:5000")
    assert json.loads(out) == {KEY: ["192.0.2.0/24"]}
    assert "covers 192.0.2.10:5000" in err


def test_mirror_for_private_registry_warned(capsys, tmp_path):
    """registry-mirrors applies to Docker Hub only, so a private one there is a mistake."""
    path = tmp_path / "daemon.json"
    path.write_text('{"registry-mirrors": ["http://registry.example:5000"]}')
    status, out, err = merge(capsys, path)
    assert status == 0
    assert "mirrors only for Docker Hub" in err
    assert json.loads(out)["registry-mirrors"] == ["http://registry.example:5000"]


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"[]", "line 1 column 1: the file is a JSON list"),
        (b'  "text"', "line 1 column 3: the file is a JSON string"),
        (b'{"insecure-registries": 5}', "line 1 column 25: 'insecure-registries' must be a list"),
        (b'{"insecure-registries": [1]}', "line 1 column 25: 'insecure-registries' must be a list"),
        (b'{"insecure-registries": {"a": 1}}', "line 1 column 25: 'insecure-registries' must be a list of strings"),
        (b'{"debug": "\xff"}', "line 1 column 12: the byte 0xff is not UTF-8"),
    ],
)
def test_wrong_shape_left_untouched(capsys, tmp_path, content, expected):
    """A list where an object belongs, a wrong type or non-UTF-8 bytes: exit 1, no change."""
    path = tmp_path / "daemon.json"
    path.write_bytes(content)
    status, out, err = merge(capsys, path, "registry.example:5000", "--write")
    assert status == 1
    assert f"Error: {path} {expected}" in err
    assert path.read_bytes() == content
    assert list(tmp_path.iterdir()) == [path]


def test_folder_instead_of_file(capsys, tmp_path):
    status, out, err = merge(capsys, tmp_path, "registry.example:5000", "--write")
    assert status == 1
    assert "is a folder, not a file" in err
    assert list(tmp_path.iterdir()) == []


def test_read_only_file_left_untouched(capsys, tmp_path):
    """A read-only mode is respected even for root, before any backup is made."""
    path = tmp_path / "daemon.json"
    path.write_text('{"debug": true}')
    path.chmod(0o444)
    status, out, err = merge(capsys, path, "registry.example:5000", "--write")
    assert status == 1
    assert "is read-only (mode 0444)" in err
    assert f"chmod u+w {path}" in err
    assert path.read_text() == '{"debug": true}'
    assert list(tmp_path.iterdir()) == [path]


def test_write_keeps_mode_and_backup(capsys, tmp_path):
    """--write backs up the old file, keeps its mode and writes what it printed."""
    path = tmp_path / "daemon.json"
    original = b'{\n  "debug": true\n}\n'
    path.write_bytes(original)
    path.chmod(0o640)
    status, out, err = merge(capsys, path, "registry.example:5000", "--write")
    assert status == 0
    assert path.read_text() == out
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    backups = list(tmp_path.glob("daemon.json.bak-*"))
    assert len(backups) == 1
    assert backups[0].read_bytes() == original
    assert f"wrote {path}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["daemon.json", backups[0].name])


def test_no_write_without_flag(capsys, tmp_path):
    path = tmp_path / "daemon.json"
    path.write_text("{}")
    merge(capsys, path)
    assert path.read_text() == "{}"
    assert list(tmp_path.iterdir()) == [path]


def test_write_default_rootless_path(capsys, tmp_path, monkeypatch):
    """--write without --merge uses the platform's file, here rootless under $HOME."""
    monkeypatch.setenv("HOME", str(tmp_path))
    status, out, err = run_snippet(
        capsys, "docker", "registry.example:5000", "--insecure", "--platform", "rootless",
        "--write",
    )
    assert status == 0
    written = tmp_path / ".config/docker/daemon.json"
    assert json.loads(written.read_text()) == {KEY: ["registry.example:5000"]}


def test_mode_is_required(capsys):
    status, out, err = run_snippet(capsys, "docker", "registry.example:5000")
    assert status == 1
    assert "--ca FILE" in err
    assert "--insecure" in err
    assert "registry-gateway probe registry.example:5000" in err


def test_ca_and_insecure_exclusive(capsys, tmp_path):
    with pytest.raises(SystemExit) as raised:
        run_snippet(capsys, "docker", "r.example:1", "--insecure", "--ca", tmp_path / "x")
    assert raised.value.code == 2


def test_ca_goes_to_certs_d(capsys, tmp_path, monkeypatch, ca_file):
    """--ca prints the CA for certs.d/HOST:PORT/ca.crt and writes it there."""
    monkeypatch.setenv("HOME", str(tmp_path))
    status, out, err = run_snippet(
        capsys, "docker", "registry.example:5000", "--ca", ca_file, "--platform",
        "rootless", "--write",
    )
    assert status == 0
    assert out == ca_file.read_text()
    written = tmp_path / ".config/docker/certs.d/registry.example:5000/ca.crt"
    assert written.read_bytes() == ca_file.read_bytes()


@pytest.mark.parametrize("platform", ["linux", "rootless"])
def test_ca_beside_merged_copy(capsys, tmp_path, monkeypatch, ca_file, platform):
    """With --merge COPY, the CA goes to the certs.d beside COPY, not the platform's."""
    # The platform's own paths point into tmp_path, so a regression never reaches /etc.
    platform_root = tmp_path / "platform"
    monkeypatch.setenv("HOME", str(platform_root))
    monkeypatch.setitem(
        client_paths.PATHS,
        ("docker", "linux"),
        client_paths.ClientPaths(
            str(platform_root / "daemon.json"),
            str(platform_root / "certs.d"),
            str(platform_root / "daemon.json"),
        ),
    )
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    copy = copy_dir / "daemon.json"
    copy.write_text('{"debug": true}')
    status, out, err = run_snippet(
        capsys, "docker", "registry.example:5000", "--ca", ca_file, "--platform", platform,
        "--merge", copy, "--write",
    )
    assert status == 0
    written = copy_dir / "certs.d" / "registry.example:5000" / "ca.crt"
    assert written.read_bytes() == ca_file.read_bytes()
    assert sorted(p.name for p in copy_dir.iterdir()) == ["certs.d", "daemon.json"]
    assert copy.read_text() == '{"debug": true}'
    assert not platform_root.exists()
    assert f"The CA goes to {written}" in err
    assert "dockerd reads it only from" in err


def test_ca_windows_beside_merged_copy(capsys, tmp_path, ca_file):
    """On Windows too a copy gets its certs.d beside it, with the colon-free folder name."""
    copy = tmp_path / "daemon.json"
    written = tmp_path / "certs.d" / "registry.example5000" / "ca.crt"
    status, out, err = run_snippet(
        capsys, "docker", "registry.example:5000", "--ca", ca_file, "--platform", "windows",
        "--merge", copy, "--write",
    )
    assert status == 0
    assert written.read_bytes() == ca_file.read_bytes()
    assert (
        r"dockerd reads it only from C:\ProgramData\docker\certs.d\registry.example5000\ca.crt,"
        " so copy it there on the Windows machine, then run Restart-Service docker." in err
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "certs.d"]


def test_ca_windows_folder_has_no_colon(capsys, ca_file):
    status, out, err = run_snippet(
        capsys, "docker", "registry.example:5000", "--ca", ca_file, "--platform", "windows"
    )
    assert status == 0
    assert r"C:\ProgramData\docker\certs.d\registry.example5000\ca.crt" in err


def test_ca_with_insecure_entry_warned(capsys, tmp_path, ca_file):
    """certs.d is not read for a registry dockerd lists as insecure."""
    path = tmp_path / "daemon.json"
    path.write_text('{"insecure-registries": ["registry.example:5000"]}')
    status, out, err = run_snippet(
        capsys, "docker", "registry.example:5000", "--ca", ca_file, "--merge", path
    )
    assert status == 0
    assert "does not load certs.d for an insecure registry" in err


@pytest.mark.parametrize(
    "content, expected",
    [("not a certificate\n", "holds no PEM certificate"), (None, "does not exist")],
)
def test_bad_ca_file_rejected(capsys, tmp_path, content, expected):
    ca = tmp_path / "ca.crt"
    if content is not None:
        ca.write_text(content)
    status, out, err = run_snippet(capsys, "docker", "registry.example:5000", "--ca", ca)
    assert status == 1
    assert expected in err


def test_ca_with_private_key_rejected(capsys, tmp_path, ca_file):
    ca = tmp_path / "bundle.pem"
    ca.write_text(ca_file.read_text() + "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n")
    status, out, err = run_snippet(capsys, "docker", "registry.example:5000", "--ca", ca)
    assert status == 1
    assert "private key" in err


def test_json_output(capsys, tmp_path):
    """--json prints the files and commands as data, and nothing on stderr."""
    path = tmp_path / "daemon.json"
    path.write_text('{"debug": true}')
    status, out, err = merge(capsys, path, "registry.example:5000", "--json")
    assert status == 0
    data = json.loads(out)
    assert data["files"][0]["path"] == str(path)
    assert json.loads(data["files"][0]["content"]) == {"debug": True, KEY: ["registry.example:5000"]}
    assert data["files"][0]["changed"] is True
    assert "sudo systemctl reload docker" in data["commands"]
    assert any(m["level"] == "warning" for m in data["messages"])
    assert err == ""


def test_module_entry_point(tmp_path):
    """`python -m gateway snippet` keeps standard output to the file content alone."""
    path = tmp_path / "daemon.json"
    path.write_text('{"debug": true}')
    completed = subprocess.run(
        [sys.executable, "-m", "gateway", "snippet", "docker", "registry.example:5000",
         "--insecure", "--merge", str(path)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == {"debug": True, KEY: ["registry.example:5000"]}
    assert "Traceback" not in completed.stderr


def test_windows_default_path_needs_windows(capsys, tmp_path, monkeypatch):
    """C:\\ paths are relative names on Linux, so they are never read or written here."""
    monkeypatch.chdir(tmp_path)
    status, out, err = run_snippet(
        capsys, "docker", "registry.example:5000", "--insecure", "--platform", "windows",
        "--write",
    )
    assert status == 1
    assert "only on Windows" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "before, after",
    [
        (
            '{\r\n  "debug": true\r\n}\r\n',
            '{\r\n  "debug": true,\r\n  "insecure-registries": ["registry.example:5000"]\r\n}\r\n',
        ),
        (
            '{\r\n  "insecure-registries": [\r\n    "a.example:1"\r\n  ]\r\n}',
            '{\r\n  "insecure-registries": [\r\n    "a.example:1",\r\n    "registry.example:5000"\r\n  ]\r\n}',
        ),
    ],
)
def test_crlf_line_endings_kept(tmp_path, before, after):
    """A daemon.json saved with CRLF gets CRLF on the added lines too."""
    path = tmp_path / "daemon.json"
    path.write_bytes(before.encode())
    status = cli.main(
        ["snippet", "docker", "registry.example:5000", "--insecure", "--merge", str(path), "--write"]
    )
    assert status == 0
    assert path.read_bytes() == after.encode()


def test_ca_notes_follow_write(capsys, tmp_path, monkeypatch, ca_file):
    """Without --write the note names where to save the CA; with it, only the write is reported."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    written = tmp_path / ".config/docker/certs.d" / "registry.example:5000" / "ca.crt"
    platform_path = "~/.config/docker/certs.d/registry.example:5000/ca.crt"
    args = ["docker", "registry.example:5000", "--ca", ca_file, "--platform", "rootless"]
    status, out, err = run_snippet(capsys, *args)
    assert status == 0
    assert f"Note: Save the CA above as {platform_path}; dockerd reads it on the next pull" in err
    assert "Note: wrote" not in err
    assert not written.exists()

    status, out, err = run_snippet(capsys, *args, "--write")
    assert status == 0
    assert "Save the CA" not in err
    assert f"Note: dockerd reads {platform_path} on the next pull or push, with no restart." in err
    assert f"Note: wrote {written}." in err
