"""The snippet command across clients: output formats, --json, and every bad input."""

from __future__ import annotations

import json
import tomllib

import pytest
import ruamel.yaml

from tests.snippet_helpers import digest, run_snippet

HOST = "registry.example:5000"
CLIENTS = ["docker", "containerd", "podman", "k3s", "buildkit"]


def parse(client: str, text: str):
    """Parse `text` with the rules of the client's own format."""
    if client == "docker":
        return json.loads(text)
    if client == "k3s":
        loader = ruamel.yaml.YAML(typ="safe", pure=True)
        loader.version = (1, 1)
        return loader.load(text)
    return tomllib.loads(text)


@pytest.mark.parametrize("client", CLIENTS)
def test_output_parses(capsys, client):
    status, out, err = run_snippet(capsys, client, HOST, "--insecure")
    assert status == 0
    assert parse(client, out)
    assert HOST in out
    assert "://" not in out or client in ("containerd", "k3s")


@pytest.mark.parametrize("client", CLIENTS)
def test_json_lists_files_and_commands(capsys, client):
    status, out, err = run_snippet(capsys, client, HOST, "--insecure", "--json")
    assert status == 0
    assert err == ""
    data = json.loads(out)
    assert data["client"] == client
    assert data["registry"] == HOST
    assert data["mode"] == "insecure"
    assert parse(client, data["files"][0]["content"])
    assert all(isinstance(command, str) for command in data["commands"])
    assert {m["level"] for m in data["messages"]} <= {"note", "warning"}


# One broken file per client format, each with the position the error must name.
BROKEN = {
    "docker": (b'{"debug": true,,}', "line 1 column 16"),
    "containerd": (b'server = "http://x\n', "line 1 column"),
    "podman": (b"[[registry]\n", "line 1 column"),
    "k3s": (b"mirrors: {a\n", "line 2 column 1"),
    "buildkit": (b"debug = tru\n", "line 1 column"),
}
WRONG_SHAPE = {
    "docker": b"[]\n",
    "containerd": b'host = ["http://x"]\n',
    "podman": b'registry = {location = "x"}\n',
    "k3s": b"- mirrors\n",
    "buildkit": b"registry = [1]\n",
}


def bad_inputs():
    for client in CLIENTS:
        content, position = BROKEN[client]
        yield pytest.param(client, content, position, id=f"{client}-syntax")
        yield pytest.param(client, WRONG_SHAPE[client], "line 1 column 1", id=f"{client}-list")
        yield pytest.param(client, b"# \xe9t\xe9\n", "line 1 column 3", id=f"{client}-latin1")


@pytest.mark.parametrize("client, content, position", list(bad_inputs()))
def test_bad_input_left_untouched(capsys, tmp_path, client, content, position):
    """Broken syntax, a list for a map or non-UTF-8: exit 1, file byte-identical."""
    path = tmp_path / "config"
    path.write_bytes(content)
    before = digest(path)
    status, out, err = run_snippet(capsys, client, HOST, "--insecure", "--merge", path, "--write")
    assert status == 1
    assert out == ""
    assert err.startswith(f"Error: {path} {position}")
    assert err.count("\n") == 1
    assert digest(path) == before
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("client", CLIENTS)
def test_folder_rejected(capsys, tmp_path, client):
    status, out, err = run_snippet(capsys, client, HOST, "--insecure", "--merge", tmp_path, "--write")
    assert status == 1
    assert f"Error: '{tmp_path}' is a folder, not a file" in err
    assert list(tmp_path.iterdir()) == []


VALID = {
    "docker": "{}\n",
    "containerd": 'server = "http://old.example:1"\n',
    "podman": 'unqualified-search-registries = ["docker.io"]\n',
    "k3s": "mirrors: {}\n",
    "buildkit": "debug = true\n",
}


@pytest.mark.parametrize("client", CLIENTS)
def test_read_only_rejected(capsys, tmp_path, client):
    path = tmp_path / "config"
    path.write_text(VALID[client])
    path.chmod(0o444)
    status, out, err = run_snippet(capsys, client, HOST, "--insecure", "--merge", path, "--write")
    assert status == 1
    assert f"Error: '{path}' is read-only (mode 0444)" in err
    assert path.read_text() == VALID[client]
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("client", CLIENTS)
def test_write_backs_up_and_keeps_other_keys(capsys, tmp_path, client):
    """--write leaves a backup equal to the original and a file that still parses."""
    path = tmp_path / "config"
    path.write_text(VALID[client])
    path.chmod(0o640)
    status, out, err = run_snippet(capsys, client, HOST, "--insecure", "--merge", path, "--write")
    assert status == 0
    assert path.read_text() == out
    assert path.stat().st_mode & 0o777 == 0o640
    backups = list(tmp_path.glob("config.bak-*"))
    assert [b.read_text() for b in backups] == [VALID[client]]
    before, after = parse(client, VALID[client]), parse(client, out)
    for key, value in before.items():
        if key not in ("server", "mirrors"):
            assert after[key] == value


@pytest.mark.parametrize("client", CLIENTS)
def test_missing_file_is_empty(capsys, tmp_path, client):
    """A missing file merges like an empty one, and is created only with --write."""
    path = tmp_path / "sub" / "config"
    status, out, err = run_snippet(capsys, client, HOST, "--insecure", "--merge", path)
    assert status == 0
    assert not path.exists()
    status, written, err = run_snippet(capsys, client, HOST, "--insecure", "--merge", path, "--write")
    assert written == out
    assert path.read_text() == out


def test_unknown_client_is_usage_error(capsys):
    with pytest.raises(SystemExit) as raised:
        run_snippet(capsys, "nerdctl", HOST, "--insecure")
    assert raised.value.code == 2


@pytest.mark.parametrize("client", CLIENTS)
def test_image_on_other_registry_warned(capsys, client):
    """The entry must equal the image's registry, port included, for every client."""
    status, out, err = run_snippet(
        capsys, client, "registry.example", "--insecure", "--image", "registry.example:5000/app:1"
    )
    assert status == 0
    assert "is on 'registry.example:5000', but the entry is 'registry.example'" in err


@pytest.mark.parametrize("client", ["containerd", "podman", "buildkit"])
def test_merged_toml_ends_with_newline(capsys, tmp_path, client):
    path = tmp_path / "config"
    path.write_text('a = 1')
    status, out, err = run_snippet(capsys, client, HOST, "--insecure", "--merge", path)
    assert status == 0
    assert out.endswith("\n")
    assert not out.endswith("\n\n\n")


def test_json_parse_error_docker(capsys, tmp_path):
    broken = tmp_path / "daemon.json"
    broken.write_text('{\n  "debug": true,,\n}\n')
    status, out, err = run_snippet(capsys, "docker", HOST, "--insecure", "--merge", broken, "--json")
    error = json.loads(out)["error"]
    assert status == 1
    assert error["file"] == str(broken)
    assert error["line"] == 2
    assert error["column"] == 17
    assert "left unchanged" in error["message"]
    assert err.startswith(f"Error: {broken} line 2 column 17: ")


def test_json_parse_error_toml(capsys, tmp_path):
    broken = tmp_path / "registries.conf"
    broken.write_text('unqualified-search-registries = [\n')
    status, out, _ = run_snippet(capsys, "podman", HOST, "--insecure", "--merge", broken, "--json")
    error = json.loads(out)["error"]
    assert status == 1
    assert error["file"] == str(broken)
    assert error["line"] == 2
    assert error["column"] == 1


def test_json_error_without_file(capsys):
    status, out, err = run_snippet(capsys, "docker", HOST, "--json")
    error = json.loads(out)["error"]
    assert status == 1
    assert error["file"] is None
    assert error["line"] is None
    assert error["message"].startswith("Choose how docker should reach")
    assert err.startswith("Error: Choose how docker")


def test_json_message_levels_lower_case(capsys):
    status, out, err = run_snippet(capsys, "docker", HOST, "--insecure", "--json")
    levels = {message["level"] for message in json.loads(out)["messages"]}
    assert status == 0
    assert levels
    assert levels <= {"note", "warning"}
