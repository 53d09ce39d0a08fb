"""`registry-gateway snippet k3s`: registries.yaml merges with ruamel round-trip."""

from __future__ import annotations

import pytest
import ruamel.yaml

from tests.snippet_helpers import ca_file, digest, run_snippet  # noqa: F401


class yaml:
    """A YAML safe loader (no round-trip types) with YAML 1.1 rules, as Go's yaml.v2 reads."""

    @staticmethod
    def safe_load(text: str):
        loader = ruamel.yaml.YAML(typ="safe", pure=True)
        loader.version = (1, 1)
        return loader.load(text)

HOST = "registry.example:5000"


def snippet(capsys, *extra, host=HOST):
    return run_snippet(capsys, "k3s", host, *extra)


def test_new_file_insecure(capsys):
    """A plain-HTTP mirror keyed by host:port with an http:// endpoint."""
    status, out, err = snippet(capsys, "--insecure")
    assert status == 0
    assert yaml.safe_load(out) == {"mirrors": {HOST: {"endpoint": ["http://registry.example:5000"]}}}
    assert out == (
        "mirrors:\n"
        '  "registry.example:5000":\n'
        "    endpoint:\n"
        '      - "http://registry.example:5000"\n'
    )
    assert "Every node needs this" in err
    assert "sudo systemctl restart k3s" in err


def test_ca_sets_tls_ca_file(capsys, ca_file):
    """ca_file is the node path that certs export --for k3s uses, not the local --ca path."""
    node_ca = f"/etc/rancher/k3s/certs.d/{HOST}/ca.crt"
    status, out, err = snippet(capsys, "--ca", ca_file)
    assert status == 0
    parsed = yaml.safe_load(out)
    assert parsed["mirrors"][HOST]["endpoint"] == ["https://registry.example:5000"]
    assert parsed["configs"][HOST]["tls"]["ca_file"] == node_ca
    assert str(ca_file) not in out
    assert f"Copy {ca_file.resolve()} to {node_ca} on every node" in err


def test_ca_merge_writes_only_yaml(capsys, tmp_path, ca_file):
    """--write with --ca changes only the merged registries.yaml, never the node CA path."""
    folder = tmp_path / "k3s"
    folder.mkdir()
    path = folder / "registries.yaml"
    status, out, err = snippet(capsys, "--ca", ca_file, "--merge", path, "--write")
    assert status == 0
    parsed = yaml.safe_load(path.read_text())
    assert parsed["configs"][HOST]["tls"]["ca_file"] == f"/etc/rancher/k3s/certs.d/{HOST}/ca.crt"
    assert list(folder.iterdir()) == [path]


ORIGINAL = """\
# lab registries
mirrors:
    docker.io:
        endpoint:
        - "https://mirror.example"   # the cache
configs:
    "mirror.example":
        auth:
            username: puller
            password: secret
"""


def test_merge_keeps_other_mirrors(capsys, tmp_path):
    """Other mirrors, auth, comments and the file's indentation survive."""
    path = tmp_path / "registries.yaml"
    path.write_text(ORIGINAL)
    status, out, err = snippet(capsys, "--insecure", "--merge", path)
    assert status == 0
    before, after = yaml.safe_load(ORIGINAL), yaml.safe_load(out)
    assert after["mirrors"]["docker.io"] == before["mirrors"]["docker.io"]
    assert after["configs"] == before["configs"]
    assert after["mirrors"][HOST] == {"endpoint": ["http://registry.example:5000"]}
    assert out.startswith(ORIGINAL.split("configs:")[0].rstrip("\n").split("\n")[0])
    assert "# the cache" in out
    assert '    docker.io:\n        endpoint:\n        - "https://mirror.example"' in out


def test_existing_endpoints_kept_after_ours(capsys, tmp_path):
    path = tmp_path / "registries.yaml"
    path.write_text(f'mirrors:\n  "{HOST}":\n    endpoint:\n      - "https://other.example"\n')
    status, out, err = snippet(capsys, "--insecure", "--merge", path)
    assert yaml.safe_load(out)["mirrors"][HOST]["endpoint"] == [
        "http://registry.example:5000", "https://other.example"
    ]


def test_merge_idempotent(capsys, tmp_path):
    path = tmp_path / "registries.yaml"
    snippet(capsys, "--insecure", "--merge", path, "--write")
    first = path.read_text()
    status, out, err = snippet(capsys, "--insecure", "--merge", path, "--write")
    assert out == first
    assert "already lists the endpoint" in err
    assert list(tmp_path.glob("*.bak-*")) == []


def test_portless_mirror_warned(capsys, tmp_path):
    path = tmp_path / "registries.yaml"
    path.write_text('mirrors:\n  registry.example:\n    endpoint: ["http://registry.example:5000"]\n')
    status, out, err = snippet(capsys, "--insecure", "--merge", path)
    assert "'registry.example' has no port" in err


def test_yml_sibling_warned(capsys, tmp_path):
    """k3s reads only registries.yaml, so a lone registries.yml is flagged."""
    (tmp_path / "registries.yml").write_text("mirrors: {}\n")
    status, out, err = snippet(capsys, "--insecure", "--merge", tmp_path / "registries.yaml")
    assert status == 0
    assert "reads only registries.yaml" in err


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"mirrors: [1,\n", "line 2 column 1"),
        (b"- a\n- b\n", "line 1 column 1: the file must be a mapping"),
        (b"mirrors:\n  - a\n", "line 1 column 1: 'mirrors' must be a mapping"),
        (b'mirrors:\n  "registry.example:5000":\n    endpoint: "http://x"\n', "line 3 column 5: the endpoint"),
        (b"a: 1\na: 2\n", "line 2 column 1: found duplicate key"),
        (b"mirrors:\n  x: \xff\n", "line 2 column 6: the byte 0xff is not UTF-8"),
    ],
)
def test_bad_file_left_untouched(capsys, tmp_path, content, expected):
    path = tmp_path / "registries.yaml"
    path.write_bytes(content)
    status, out, err = snippet(capsys, "--insecure", "--merge", path, "--write")
    assert status == 1
    assert f"Error: {path} {expected}" in err
    assert path.read_bytes() == content
    assert list(tmp_path.iterdir()) == [path]


def test_write_backup_and_mode(capsys, tmp_path):
    path = tmp_path / "registries.yaml"
    path.write_text(ORIGINAL)
    path.chmod(0o600)
    status, out, err = snippet(capsys, "--insecure", "--merge", path, "--write")
    assert status == 0
    assert path.read_text() == out
    assert path.stat().st_mode & 0o777 == 0o600
    assert [b.read_text() for b in tmp_path.glob("registries.yaml.bak-*")] == [ORIGINAL]


def test_read_only_left_untouched(capsys, tmp_path):
    path = tmp_path / "registries.yaml"
    path.write_text(ORIGINAL)
    path.chmod(0o400)
    status, out, err = snippet(capsys, "--insecure", "--merge", path, "--write")
    assert status == 1
    assert "read-only" in err
    assert path.read_text() == ORIGINAL


def test_only_linux(capsys):
    status, out, err = snippet(capsys, "--insecure", "--platform", "windows")
    assert status == 1
    assert "use --platform with one of linux" in err
