"""`registry-gateway snippet containerd`: hosts.toml and the CRI config_path."""

from __future__ import annotations

import json
import tomllib

import pytest

from tests.snippet_helpers import ca_file, digest, run_snippet  # noqa: F401

HOST = "registry.example:5000"


def snippet(capsys, *extra):
    return run_snippet(capsys, "containerd", HOST, *extra)


def test_plain_http_hosts_toml(capsys):
    """The verified plain-HTTP form: server and host with pull, resolve and push."""
    status, out, err = snippet(capsys, "--insecure")
    assert status == 0
    assert out == (
        'server = "http://registry.example:5000"\n\n'
        '[host."http://registry.example:5000"]\n'
        '  capabilities = ["pull", "resolve", "push"]\n'
    )
    parsed = tomllib.loads(out)
    assert parsed["host"]["http://registry.example:5000"]["capabilities"] == [
        "pull", "resolve", "push"
    ]


def test_notes_config_path_for_both_versions(capsys):
    """The operator learns both CRI sections, the restart rule and ctr's --hosts-dir."""
    status, out, err = snippet(capsys, "--insecure")
    assert '[plugins."io.containerd.grpc.v1.cri".registry]' in err
    assert '[plugins."io.containerd.cri.v1.images".registry]' in err
    assert "sudo systemctl restart containerd" in err
    assert "--hosts-dir /etc/containerd/certs.d" in err
    assert "daemon.json plays no part" in err


def test_ca_hosts_toml(capsys, tmp_path, ca_file):
    """--ca points ca at the copy beside hosts.toml, and both are written."""
    merge_dir = tmp_path / "certs.d" / HOST
    hosts = merge_dir / "hosts.toml"
    status, out, err = snippet(capsys, "--ca", ca_file, "--merge", hosts)
    assert status == 0
    parsed = tomllib.loads(out)
    assert parsed["server"] == "https://registry.example:5000"
    entry = parsed["host"]["https://registry.example:5000"]
    assert entry["ca"] == str(merge_dir / "ca.crt")
    assert f"copy {ca_file} to {merge_dir / 'ca.crt'}" in err

    status, out, err = snippet(capsys, "--ca", ca_file, "--merge", hosts, "--write")
    assert status == 0
    assert hosts.read_text() == out
    assert (merge_dir / "ca.crt").read_bytes() == ca_file.read_bytes()


def test_ca_default_path(capsys, ca_file):
    status, out, err = snippet(capsys, "--ca", ca_file)
    assert status == 0
    entry = tomllib.loads(out)["host"]["https://registry.example:5000"]
    assert entry["ca"] == f"/etc/containerd/certs.d/{HOST}/ca.crt"


@pytest.mark.parametrize("relative", [True, False])
def test_ca_path_absolute_for_merge(capsys, tmp_path, monkeypatch, ca_file, relative):
    """ca is absolute, because containerd joins a relative ca with the hosts.toml folder."""
    monkeypatch.chdir(tmp_path)
    merge_dir = tmp_path / "certs.d" / HOST
    hosts = f"certs.d/{HOST}/hosts.toml" if relative else merge_dir / "hosts.toml"
    status, out, err = snippet(capsys, "--ca", ca_file, "--merge", hosts, "--write")
    assert status == 0
    written = tomllib.loads((merge_dir / "hosts.toml").read_text())
    ca_value = written["host"]["https://registry.example:5000"]["ca"]
    assert ca_value == str((merge_dir / "ca.crt").resolve())
    assert (merge_dir / "ca.crt").read_bytes() == ca_file.read_bytes()
    assert sorted(p.name for p in merge_dir.iterdir()) == ["ca.crt", "hosts.toml"]


def test_merge_keeps_other_hosts(capsys, tmp_path):
    """A user's mirror host, comments and keys survive the merge."""
    hosts = tmp_path / "hosts.toml"
    original = (
        "# our mirror first\n"
        'server = "https://registry.example:5000"\n\n'
        '[host."https://mirror.example"]\n'
        '  capabilities = ["pull"]  # read-only\n'
        '  dial_timeout = "5s"\n'
    )
    hosts.write_text(original)
    status, out, err = snippet(capsys, "--insecure", "--merge", hosts)
    assert status == 0
    before, after = tomllib.loads(original), tomllib.loads(out)
    assert after["host"]["https://mirror.example"] == before["host"]["https://mirror.example"]
    assert after["server"] == "http://registry.example:5000"
    assert "# our mirror first" in out
    assert "# read-only" in out
    assert "changed server" in err


def test_tls_settings_on_http_host_warned(capsys, tmp_path):
    hosts = tmp_path / "hosts.toml"
    hosts.write_text('[host."http://registry.example:5000"]\n  skip_verify = true\n')
    status, out, err = snippet(capsys, "--insecure", "--merge", hosts)
    assert status == 0
    assert "tries HTTPS first" in err


def test_config_path_merged(capsys, tmp_path):
    """A version 2 config without config_path gets it in the 1.x section, comments kept."""
    config = tmp_path / "config.toml"
    config.write_text('version = 2\n\n# pause image\n[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "pause:3.9"\n')
    status, out, err = snippet(capsys, "--insecure", "--containerd-config", config, "--json")
    assert status == 0
    data = json.loads(out)
    merged = data["files"][1]["content"]
    parsed = tomllib.loads(merged)
    cri = parsed["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["registry"]["config_path"] == "/etc/containerd/certs.d"
    assert cri["sandbox_image"] == "pause:3.9"
    assert "# pause image" in merged
    assert "sudo systemctl restart containerd" in data["commands"]


def test_config_path_version_3(capsys, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("version = 3\n")
    status, out, err = snippet(capsys, "--insecure", "--containerd-config", config, "--json")
    parsed = tomllib.loads(json.loads(out)["files"][1]["content"])
    assert parsed["plugins"]["io.containerd.cri.v1.images"]["registry"]["config_path"] == (
        "/etc/containerd/certs.d"
    )


def test_existing_config_path_used(capsys, tmp_path):
    """hosts.toml goes under the hosts directory that config.toml already names."""
    config = tmp_path / "config.toml"
    config.write_text('version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/srv/certs.d"\n')
    status, out, err = snippet(capsys, "--insecure", "--containerd-config", config, "--json")
    data = json.loads(out)
    assert data["files"][0]["path"] == f"/srv/certs.d/{HOST}/hosts.toml"
    assert len(data["files"]) == 1


def test_portless_mirror_key_flagged(capsys, tmp_path):
    """A CRI mirror keyed without the image's port never applied, and blocks config_path."""
    config = tmp_path / "config.toml"
    original = (
        "version = 2\n"
        '[plugins."io.containerd.grpc.v1.cri".registry.mirrors."registry.example"]\n'
        '  endpoint = ["http://registry.example:5000"]\n'
    )
    config.write_text(original)
    before = digest(config)
    status, out, err = snippet(capsys, "--insecure", "--containerd-config", config, "--write",
                               "--merge", tmp_path / "hosts.toml")
    assert status == 0
    assert "'registry.example' has no port" in err
    assert "`mirrors` cannot be set when `config_path` is provided" in err
    assert digest(config) == before
    assert tomllib.loads((tmp_path / "hosts.toml").read_text())["server"] == (
        "http://registry.example:5000"
    )


@pytest.mark.parametrize(
    "content, expected",
    [
        (b'server = "http://a:1\n', "line 1 column"),
        (b"[host\n", "line 1 column"),
        (b'server = 5\n', "line 1 column 1: 'server' must be a string"),
        (b'x = 1\nhost = "http://a"\n', "line 2 column 1: 'host' must be a table"),
        (b'server = "\xff"\n', "line 1 column 11: the byte 0xff is not UTF-8"),
    ],
)
def test_bad_hosts_toml_left_untouched(capsys, tmp_path, content, expected):
    hosts = tmp_path / "hosts.toml"
    hosts.write_bytes(content)
    status, out, err = snippet(capsys, "--insecure", "--merge", hosts, "--write")
    assert status == 1
    assert f"Error: {hosts} {expected}" in err
    assert hosts.read_bytes() == content
    assert list(tmp_path.iterdir()) == [hosts]


def test_read_only_hosts_toml(capsys, tmp_path):
    hosts = tmp_path / "hosts.toml"
    hosts.write_text('server = "http://old:1"\n')
    hosts.chmod(0o444)
    status, out, err = snippet(capsys, "--insecure", "--merge", hosts, "--write")
    assert status == 1
    assert "read-only" in err
    assert hosts.read_text() == 'server = "http://old:1"\n'


def test_write_with_backup(capsys, tmp_path):
    hosts = tmp_path / "hosts.toml"
    hosts.write_text('server = "http://old:1"\n')
    status, out, err = snippet(capsys, "--insecure", "--merge", hosts, "--write")
    assert status == 0
    assert hosts.read_text() == out
    backups = list(tmp_path.glob("hosts.toml.bak-*"))
    assert [b.read_text() for b in backups] == ['server = "http://old:1"\n']


def test_cidr_rejected(capsys):
    status, out, err = run_snippet(capsys, "containerd", "192.0.2.0/24", "--insecure")
    assert status == 1
    assert "only dockerd matches registries by range" in err


def test_windows_not_offered(capsys):
    status, out, err = snippet(capsys, "--insecure", "--platform", "windows")
    assert status == 1
    assert "--platform" in err


def file_lines(err: str, folder) -> list[str]:
    """Return the lines of `err` that name a file under `folder`."""
    return [line for line in err.splitlines() if str(folder) in line]


def test_ca_print_only_names_copy(capsys, tmp_path, ca_file):
    """Without --write, the notes name where to save hosts.toml and where to copy the CA."""
    hosts = tmp_path / "certs.d" / HOST / "hosts.toml"
    status, out, err = snippet(capsys, "--ca", ca_file, "--merge", hosts)
    assert status == 0
    assert file_lines(err, tmp_path) == [
        f"Note: Save the hosts.toml above as {hosts}.",
        f"Note: also copy {ca_file} to {hosts.parent / 'ca.crt'}.",
    ]
    assert not hosts.parent.exists()


def test_ca_write_reports_write_only(capsys, tmp_path, ca_file):
    """With --write, the notes report only what was written, then only what was left unchanged."""
    hosts = tmp_path / "certs.d" / HOST / "hosts.toml"
    ca_copy = hosts.parent / "ca.crt"
    status, out, err = snippet(capsys, "--ca", ca_file, "--merge", hosts, "--write")
    assert status == 0
    assert file_lines(err, tmp_path) == [f"Note: wrote {hosts}.", f"Note: wrote {ca_copy}."]
    assert "also copy" not in err
    assert "Save " not in err

    status, out, err = snippet(capsys, "--ca", ca_file, "--merge", hosts, "--write")
    assert status == 0
    assert file_lines(err, tmp_path) == [
        f"Note: {hosts} already has this content; left unchanged.",
        f"Note: {ca_copy} already has this content; left unchanged.",
    ]
    assert "also copy" not in err


def test_config_write_reports_write_only(capsys, tmp_path):
    """A merged config.toml is shown in full without --write, and only reported with it."""
    config = tmp_path / "config.toml"
    config.write_text("version = 2\n")
    hosts = tmp_path / "certs.d" / HOST / "hosts.toml"
    args = ["--insecure", "--containerd-config", config, "--merge", hosts]
    status, out, err = snippet(capsys, *args)
    assert status == 0
    assert f"Note: also write {config}:" in err
    assert config.read_text() == "version = 2\n"

    status, out, err = snippet(capsys, *args, "--write")
    assert status == 0
    assert "also write" not in err
    assert f"Note: wrote {config} (the previous file is " in err
    assert f"Note: wrote {hosts}." in err
    assert "config_path" in config.read_text()
