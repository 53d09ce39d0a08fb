"""The snippet command across clients: output formats, --json, and every bad input."""

from __future__ import annotations

import json
import tomllib

import pytest
import ruamel.yaml

from gateway import client_paths
from tests.snippet_helpers import (  # noqa: F401
    ca_file,
    digest,
    platform_root,
    real_client_files,
    run_snippet,
)

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


# The file each client merges, and where docs/snippet.md puts the CA that
# --write installs beside it (None when the client gets no CA file).
MERGED_FILE = {
    "docker": "daemon.json",
    "containerd": "hosts.toml",
    "podman": "registries.conf",
    "k3s": "registries.yaml",
    "buildkit": "buildkitd.toml",
}
CA_BESIDE = {
    "docker": f"certs.d/{HOST}/ca.crt",
    "containerd": "ca.crt",
    "podman": f"certs.d/{HOST}/ca.crt",
    "k3s": None,
    "buildkit": None,
}
# For --ca, docker and podman print only the CA, and the others print the merged file.
PRINTS_MERGED = {"containerd", "k3s", "buildkit"}
# Docker Desktop gets no CA file, because it trusts the host's trust store.
PLATFORMS = sorted(key for key in client_paths.PATHS if key != ("docker", "desktop"))


def expected_beside(client: str, platform: str, copy_dir) -> list:
    """Return the files that --write puts under `copy_dir`, in output order."""
    files = [copy_dir / MERGED_FILE[client]] if client in PRINTS_MERGED else []
    beside = CA_BESIDE[client]
    if beside is not None and client == "docker":
        # Docker on Windows drops the colon from the folder name, but podman keeps it.
        beside = beside.replace(HOST, client_paths.registry_folder_name(HOST, platform))
    if beside is not None:
        files.append(copy_dir / beside)
    return files


def files_under(folder) -> list:
    return sorted(path for path in folder.rglob("*") if path.is_file())


@pytest.mark.parametrize("client, platform", PLATFORMS)
def test_ca_beside_merged_copy(capsys, tmp_path, platform_root, ca_file, client, platform):
    """--ca with --merge COPY puts the CA beside COPY and never in the platform's folders."""
    before = real_client_files(HOST)
    copy_dir = tmp_path / "copy"
    expected = expected_beside(client, platform, copy_dir)
    args = [client, HOST, "--ca", ca_file, "--platform", platform, "--merge"]
    args.append(copy_dir / MERGED_FILE[client])

    status, out, err = run_snippet(capsys, *args, "--json")
    assert status == 0
    assert [file["path"] for file in json.loads(out)["files"]] == list(map(str, expected))
    assert not copy_dir.exists()

    status, out, err = run_snippet(capsys, *args, "--write")
    assert status == 0
    assert files_under(copy_dir) == sorted(expected)
    for path in expected:
        assert f"Note: wrote {path}." in err
    if CA_BESIDE[client] is not None:
        assert expected[-1].read_bytes() == ca_file.read_bytes()
    assert not platform_root.exists()
    assert real_client_files(HOST) == before


def platform_files(client: str, platform: str) -> dict:
    """Return the --merge values that name the platform's own file, by case."""
    paths = client_paths.client_paths(client, platform)
    if client == "containerd":
        own = paths.certs_path() / HOST / "hosts.toml"
        return {"bare": None, "own": own}
    own = paths.config_path()
    cases = {"bare": None, "own": own, "sibling": own.with_name("copy-" + own.name)}
    if client == "podman":
        cases["drop-in"] = own.parent / "registries.conf.d" / "50-registry-gateway.conf"
    return cases


OWN_FILE_CASES = [
    (client, platform, case)
    for client in ("docker", "containerd", "podman")
    for platform in ("linux", "rootless")
    for case in ("bare", "own", "sibling", "drop-in")
    if case != "drop-in" or client == "podman"
    if case != "sibling" or client != "containerd"
]


@pytest.mark.parametrize("client, platform, case", OWN_FILE_CASES)
def test_ca_platform_folder_when_asked(capsys, platform_root, ca_file, client, platform, case):
    """A bare --merge, or a FILE in the platform's own folder, puts the CA in its certs.d."""
    before = real_client_files(HOST)
    merge = platform_files(client, platform)[case]
    args = [client, HOST, "--ca", ca_file, "--platform", platform, "--merge"]
    if merge is not None:
        args.append(merge)
    certs_dir = client_paths.client_paths(client, platform).certs_path()
    written = certs_dir / HOST / "ca.crt"

    status, out, err = run_snippet(capsys, *args, "--write")
    assert status == 0
    assert written.read_bytes() == ca_file.read_bytes()
    assert f"Note: wrote {written}." in err
    assert written.is_relative_to(platform_root)
    assert real_client_files(HOST) == before
