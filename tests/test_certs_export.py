"""`certs export`: each client's trust layout, by output and as a written tree.

No Windows host is available, so the Windows folder naming is checked in the
printed paths and in the mirrored tree.
"""

from __future__ import annotations

import tomllib

import pytest

from gateway import certs, export, lab
from tests.certs_support import issue, new_ca, run_cli, skopeo_push, tls_registry, write_pair


@pytest.fixture
def ca_dir(tmp_path):
    folder = tmp_path / "certs"
    new_ca(folder)
    return folder


def export_cli(capsys, ca_dir, *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, "certs", "export", "--dir", str(ca_dir), *args)


def test_docker_linux_folder(ca_dir, capsys):
    """Docker on Linux: certs.d/HOST:PORT/ca.crt, with the port and colon kept."""
    status, out, _ = export_cli(capsys, ca_dir, "--host", "registry.example:5000", "--for", "docker")
    assert status == 0
    assert "  /etc/docker/certs.d/registry.example:5000/ca.crt\n" in out
    assert "Warning:" not in out


def test_docker_windows_folder(ca_dir, capsys):
    """Docker on Windows: the colon is dropped, giving registry.example5000."""
    status, out, _ = export_cli(
        capsys, ca_dir, "--host", "registry.example:5000", "--for", "docker-windows"
    )
    assert status == 0
    assert "  C:\\ProgramData\\docker\\certs.d\\registry.example5000\\ca.crt\n" in out
    assert "registry.example:5000\\" not in out
    assert "Then run: Restart-Service docker" in out


def test_docker_desktop_note(ca_dir, capsys):
    """The Windows output points Docker Desktop users to the Windows certificate store."""
    _, out, _ = export_cli(capsys, ca_dir, "--host", "registry.example:5000", "--for", "docker-windows")
    assert "Docker Desktop with Linux containers reads no CA from this folder" in out
    assert "/etc/docker" not in out


def test_docker_windows_tree(ca_dir, tmp_path, capsys):
    """--out mirrors the Windows path as OUT/C/ProgramData/..., with the CA in it."""
    out_dir = tmp_path / "out"
    status, _, _ = export_cli(
        capsys, ca_dir, "--host", "registry.example:5000", "--for", "docker-windows",
        "--out", str(out_dir),
    )
    written = out_dir / "C" / "ProgramData" / "docker" / "certs.d" / "registry.example5000" / "ca.crt"
    assert status == 0
    assert written.read_bytes() == (ca_dir / "ca.crt").read_bytes()
    assert [p for p in out_dir.rglob("*") if ":" in p.name] == []


@pytest.mark.parametrize(
    "host, linux, windows",
    [
        ("registry.example", "registry.example", "registry.example"),
        # moby removes every colon, so an IPv6 address loses its own colons too.
        ("[::1]:5443", "[::1]:5443", "[1]5443"),
        ("192.0.2.10:5000", "192.0.2.10:5000", "192.0.2.105000"),
    ],
)
def test_folder_names(host, linux, windows):
    """Folder names for hosts without a port, IPv6 and IPv4 addresses."""
    _, _, authority = export.parse_authority(host)
    assert authority == linux
    assert export.windows_folder_name(authority) == windows


def test_port_missing_warning(ca_dir, capsys):
    """Without a port, the output warns that Docker matches the folder name exactly."""
    status, out, _ = export_cli(capsys, ca_dir, "--host", "registry.example", "--for", "docker")
    assert status == 0
    assert "Warning: No port given: Docker matches the certs.d folder name exactly" in out
    assert "  /etc/docker/certs.d/registry.example/ca.crt\n" in out


def test_containerd_hosts_toml(ca_dir, tmp_path, capsys):
    """containerd: hosts.toml with server and ca, and the CA next to it."""
    out_dir = tmp_path / "out"
    status, out, _ = export_cli(
        capsys, ca_dir, "--host", "registry.example:5000", "--for", "containerd", "--out", str(out_dir)
    )
    folder = out_dir / "etc" / "containerd" / "certs.d" / "registry.example:5000"
    hosts = tomllib.loads((folder / "hosts.toml").read_text())
    host_table = hosts["host"]["https://registry.example:5000"]
    assert status == 0
    assert hosts["server"] == "https://registry.example:5000"
    assert host_table["ca"] == "/etc/containerd/certs.d/registry.example:5000/ca.crt"
    assert host_table["capabilities"] == ["pull", "resolve", "push"]
    assert (folder / "ca.crt").read_bytes() == (ca_dir / "ca.crt").read_bytes()
    assert "config_path" in out


def test_podman_folder(ca_dir, capsys):
    """podman: /etc/containers/certs.d/HOST:PORT/ca.crt."""
    _, out, _ = export_cli(capsys, ca_dir, "--host", "registry.example:5000", "--for", "podman")
    assert "  /etc/containers/certs.d/registry.example:5000/ca.crt\n" in out


def test_rootless_docker_folder(ca_dir, capsys, monkeypatch, tmp_path):
    """Rootless Docker reads $XDG_CONFIG_HOME/docker/certs.d."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    _, out, _ = export_cli(capsys, ca_dir, "--host", "registry.example:5000", "--for", "docker-rootless")
    assert f"  {tmp_path / 'config'}/docker/certs.d/registry.example:5000/ca.crt\n" in out


def test_k3s_registries_yaml(ca_dir, capsys):
    """k3s: registries.yaml names the registry under configs with tls.ca_file."""
    _, out, _ = export_cli(capsys, ca_dir, "--host", "registry.example:5000", "--for", "k3s")
    assert "  /etc/rancher/k3s/registries.yaml\n" in out
    assert '        "registry.example:5000":\n          tls:\n' in out
    assert "            ca_file: /etc/rancher/k3s/certs.d/registry.example:5000/ca.crt\n" in out
    assert "every node" in out


def test_buildkit_toml(ca_dir, tmp_path, capsys):
    """BuildKit: buildkitd.toml lists the CA under registry."HOST:PORT".ca."""
    out_dir = tmp_path / "out"
    export_cli(capsys, ca_dir, "--host", "registry.example:5000", "--for", "buildkit", "--out", str(out_dir))
    config = tomllib.loads((out_dir / "etc" / "buildkit" / "buildkitd.toml").read_text())
    assert config["registry"]["registry.example:5000"]["ca"] == [
        "/etc/buildkit/certs/registry.example:5000/ca.crt"
    ]


def test_system_store_commands(ca_dir, capsys):
    """The system store output has the command for each of the four platforms."""
    _, out, _ = export_cli(capsys, ca_dir, "--host", "registry.example:5000", "--for", "system")
    assert "/usr/local/share/ca-certificates/registry-gateway-registry.example_5000.crt" in out
    assert "Then run: update-ca-certificates" in out
    assert "Then run: update-ca-trust" in out
    ca_path = ca_dir / "ca.crt"
    assert f"Import-Certificate -FilePath {ca_path} -CertStoreLocation Cert:\\LocalMachine\\Root" in out
    assert f"security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {ca_path}" in out
    assert "CA_FILE" not in out


def test_rejects_leaf_as_ca(ca_dir, tmp_path, capsys):
    """Exporting a leaf as the CA fails and names the CA file to use instead."""
    ca_cert, ca_key = certs.load_certs(ca_dir / "ca.crt")[0], certs.load_key(ca_dir / "ca.key")
    leaf, key = issue(ca_cert, ca_key, ["registry.example"])
    cert_path, _ = write_pair(tmp_path, "leaf", [leaf], key)
    status, out, err = export_cli(
        capsys, ca_dir, "--host", "registry.example:5000", "--for", "docker",
        "--ca", str(cert_path), "--out", str(tmp_path / "out"),
    )
    assert status == 1
    assert "contains the leaf certificate 'CN=registry.example,O=registry-gateway', not a CA" in err
    assert not (tmp_path / "out").exists()


def test_rejects_key(ca_dir, tmp_path, capsys):
    """A file with a private key in it is never exported."""
    mixed = tmp_path / "mixed.pem"
    mixed.write_bytes((ca_dir / "ca.crt").read_bytes() + (ca_dir / "ca.key").read_bytes())
    status, _, err = export_cli(
        capsys, ca_dir, "--host", "registry.example:5000", "--for", "docker", "--ca", str(mixed)
    )
    assert status == 1
    assert "contains a private key" in err
    assert "BEGIN" not in err


def test_no_overwrite_then_force(ca_dir, tmp_path, capsys):
    """A changed exported file is replaced only with --force, which leaves a backup."""
    out_dir = tmp_path / "out"
    args = ("--host", "registry.example:5000", "--for", "containerd", "--out", str(out_dir))
    export_cli(capsys, ca_dir, *args)
    hosts = out_dir / "etc" / "containerd" / "certs.d" / "registry.example:5000" / "hosts.toml"
    hosts.write_text("# another registry's settings\n")
    status, _, err = export_cli(capsys, ca_dir, *args)
    assert status == 1
    assert f"The file '{hosts}' already exists and may configure other registries" in err
    assert hosts.read_text() == "# another registry's settings\n"

    status, out, _ = export_cli(capsys, ca_dir, *args, "--force")
    backups = list(hosts.parent.glob("hosts.toml.bak-*"))
    assert status == 0
    assert len(backups) == 1
    assert backups[0].read_text() == "# another registry's settings\n"
    assert "Moved the old file to" in out
    assert hosts.read_text().startswith('server = "https://registry.example:5000"')


def test_write_plan_root(ca_dir, tmp_path):
    """write_plan under a root folder writes the target paths, as --install does under /."""
    chain = export.load_ca_for_export(ca_dir / "ca.crt")
    plan = export.plan_export("docker", "registry.example:5000", chain)
    written = export.write_plan(plan, tmp_path / "root")
    assert written[0].path == tmp_path / "root" / "etc/docker/certs.d/registry.example:5000/ca.crt"
    assert written[0].path.read_bytes() == (ca_dir / "ca.crt").read_bytes()


def test_skopeo_reads_exported_folder(ca_dir, tmp_path, capsys):
    """skopeo trusts the registry through the podman folder the export wrote."""
    ca_cert, ca_key = certs.load_certs(ca_dir / "ca.crt")[0], certs.load_key(ca_dir / "ca.key")
    leaf, key = issue(ca_cert, ca_key, ["localhost"])
    cert_path, key_path = write_pair(tmp_path, "leaf", [leaf], key)
    layout = tmp_path / "oci"
    lab.build_oci_layout(layout, layer_sizes=(256,))
    with tls_registry(cert_path, key_path, tmp_path / "reg") as registry:
        authority = f"localhost:{registry.port}"
        export_cli(capsys, ca_dir, "--host", authority, "--for", "podman", "--out", str(tmp_path / "out"))
        folder = tmp_path / "out" / "etc" / "containers" / "certs.d" / authority
        result = skopeo_push(layout, registry.address, folder, host="localhost")
    assert result.returncode == 0, result.stderr


def test_loopback_note(ca_dir, capsys):
    """For 127.0.0.1 the output notes that Docker, treating it as insecure, skips certs.d."""
    _, out, _ = export_cli(capsys, ca_dir, "--host", "127.0.0.1:5443", "--for", "docker")
    assert "Note: Docker treats 127.0.0.1 as an insecure registry" in out
    assert "it skips certs.d and accepts any certificate" in out


@pytest.mark.parametrize("bad", ["https://registry.example:5000", "registry.example:http", "registry.example/v2"])
def test_invalid_host(ca_dir, capsys, bad):
    """A --host with a scheme, path or bad port is rejected with the value quoted."""
    status, _, err = export_cli(capsys, ca_dir, "--host", bad, "--for", "docker")
    assert status == 1
    assert repr(bad) in err


def test_missing_ca(tmp_path, capsys):
    """With no CA in --dir, the error names the file and the init command."""
    status, _, err = export_cli(capsys, tmp_path, "--host", "registry.example:5000", "--for", "docker")
    assert status == 1
    assert f"'{tmp_path / 'ca.crt'}' was not found" in err
    assert f"registry-gateway certs init --dir {tmp_path}" in err
